"""The errors a user can fix, shared by the command line's one error boundary (:mod:`pipeline.orchestration.cli`)
and the modules that raise them, and :class:`BackendUnavailable` (a backend that cannot run on this
machine: recorded as a skipped row, not raised to the user). A leaf, so the command line and the
TensorRT builder import them without importing a runtime. :class:`~pipeline.config.ConfigError`
and :class:`~pipeline.orchestration.gate.GateError` live beside what they check."""

from __future__ import annotations

from pipeline.status import Status


class PipelineError(RuntimeError):
    """A problem the user can fix (bad stage name, locked run folder, ...)."""


class StageFailed(PipelineError):
    """A stage raised: names the stage; the original exception is the ``__cause__``."""

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {type(error).__name__}: {error}")


class DatasetLayoutError(FileNotFoundError):
    """The dataset folder does not have the layout its reader expects."""


class BackendUnavailable(RuntimeError):
    """This backend cannot run here; ``reason`` says why and ``install_hint`` what would fix it."""

    def __init__(self, reason: str, install_hint: str = "") -> None:
        self.reason = reason
        self.install_hint = install_hint
        super().__init__(f"{reason} (to enable: {install_hint})" if install_hint else reason)

    def to_dict(self) -> dict[str, str]:
        return {"status": Status.SKIPPED, "reason": self.reason, "install_hint": self.install_hint}
