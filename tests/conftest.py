"""Shared fixtures. The smoke pipeline runs once per test session, shared by the pytest-xdist
workers (the first to ask runs it under a file lock, the others wait and read it); tests that change
a run work on a copy (``smoke_copy``), so every test sees the pristine reference run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # one worker per core: no oversubscription


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke config run once, end to end. Read it; never modify it (use ``smoke_copy``)."""
    from pipeline.cli import main

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder every worker's base temp lies in
    out, done = shared / "smoke-reference" / "run", shared / "smoke-reference" / "done"
    with FileLock(str(shared / "smoke-reference.lock")):
        if not done.is_file():
            assert main(["run", str(SMOKE_CONFIG), "--out", str(out)]) == 0
            done.touch()
    return out


@pytest.fixture
def smoke_copy(smoke_reference: Path, tmp_path: Path) -> Path:
    """A private copy of the smoke run; its stages stay up to date (fingerprints hold no paths)."""
    return Path(shutil.copytree(smoke_reference, tmp_path / "run"))
