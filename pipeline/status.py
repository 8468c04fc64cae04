"""The one vocabulary of statuses: model files, backend rows and stages, as metrics.json spells them.

A ``StrEnum``: each member is its own string, so JSON, f-strings and comparisons with statuses read
back from a metrics.json see exactly the text they always did. ``repr`` and YAML do not: where a
status goes into one of those (a gate baseline), write ``.value``.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    # A model file (pipeline/model_files.py), and a backend row that could not run.
    OK = "ok"  # the file was made
    SKIPPED = "skipped"  # switched off, or this machine lacks the library, GPU or provider (see the reason)
    EXPORT_FAILED = "export failed"  # making the file raised; the reason holds the error
    # A backend row that ran (validate's verdict against the PyTorch reference).
    PASSED = "passed"
    VALIDATION_FAILED = "validation failed"
    # A stage in metrics.json's "stages": what this invocation did with it (SKIPPED: it was up to date).
    RAN = "ran"
    DISABLED = "disabled"
