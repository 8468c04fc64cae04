"""Files shipped to edge devices as they are (no imports from the pipeline)."""
