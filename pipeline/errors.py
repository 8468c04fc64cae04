"""The errors a user can fix, shared by the command line's one error boundary (:mod:`pipeline.cli`)
and the modules that raise them; a leaf, so the command line imports them without torch.
:class:`~pipeline.config.ConfigError` and :class:`~pipeline.gate.GateError` live beside what they
check."""

from __future__ import annotations


class PipelineError(RuntimeError):
    """A problem the user can fix (bad stage name, locked run folder, ...)."""


class StageFailed(PipelineError):
    """A stage raised: names the stage; the original exception is the ``__cause__``."""

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {type(error).__name__}: {error}")


class DatasetLayoutError(FileNotFoundError):
    """The dataset folder does not have the layout its reader expects."""
