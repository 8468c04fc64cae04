"""Measurement: latency, the bench command, validation's comparator and benchmark tables."""
