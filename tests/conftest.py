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


# make test hands whole files to two workers in collection order (--dist loadfile --no-loadscope-reorder).
# test_ci_gate starts first and builds the shared smoke run while the other worker takes the slow
# files that need no smoke run, longest first; the files that build on the shared run are handed out
# once it is about done, and a file that only reads it comes last: no worker waits on its lock, and
# the last minutes are not one long file. The order follows `pytest --durations=60` on a 2-core
# machine (docs/BENCHMARKS.md, "make test").
RUN_FIRST = ("test_ci_gate.py", "test_gpu_check.py", "test_training.py", "test_compare_methods.py",
             "test_classification_end_to_end.py", "test_models.py", "test_end_to_end.py",
             "test_methods_end_to_end.py", "test_deploy_stages.py", "test_distributed.py", "test_sweep.py")
RUN_LAST = ("test_report_html.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in RUN_FIRST:
            return 0, RUN_FIRST.index(name)
        return (2, 0) if name in RUN_LAST else (1, 0)

    items.sort(key=rank)  # stable: tests keep their order inside a file


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke config run once, end to end. Read it; never modify it (use ``smoke_copy``)."""
    from pipeline.orchestration.cli import main

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
