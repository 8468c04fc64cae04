"""Shared fixtures. The smoke pipeline runs once per test session; tests that change a run work
on a copy (``smoke_copy``), so every test sees the pristine reference run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke config run once, end to end. Read it; never modify it (use ``smoke_copy``)."""
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("smoke-reference") / "run"
    assert main(["run", str(SMOKE_CONFIG), "--out", str(out)]) == 0
    return out


@pytest.fixture
def smoke_copy(smoke_reference: Path, tmp_path: Path) -> Path:
    """A private copy of the smoke run; its stages stay up to date (fingerprints hold no paths)."""
    return Path(shutil.copytree(smoke_reference, tmp_path / "run"))
