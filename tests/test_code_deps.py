"""A stage's code fingerprint covers every project module it imports, however deep, and nothing a
change to which could not change the stage's outputs: derived from the source, not a hand-kept list."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.orchestration import code_deps
from pipeline.orchestration.code_deps import PROJECT_ROOT, code_digest, dependency_files, imported_names
from pipeline.orchestration.runner import Runner
from pipeline.orchestration.stage import Stage, StageContext, StageResult


def project_files(module: str) -> set[str]:
    return {str(path.relative_to(PROJECT_ROOT)) for path in dependency_files([module])}


@pytest.mark.parametrize("stage, imports", [
    ("stages.quantize", {"pipeline/deployment/export.py", "pipeline/deployment/quantize.py"}),
    ("stages.build_engine", {"pipeline/model_files.py", "pipeline/deployment/tensorrt_engine.py"}),
    ("stages.report", {"pipeline/builders.py", "pipeline/data/synthetic.py", "pipeline/runtime/base.py",
                       "pipeline/reporting/html.py"}),
    ("stages.train_teacher", {"pipeline/training.py", "pipeline/models/backbones.py", "pipeline/data/synthetic.py",
                              "pipeline/distill/methods/tat_seg.py"}),
])
def test_a_stage_depends_on_what_it_imports_transitively(stage, imports):
    assert imports <= project_files(stage)


def test_readers_named_in_a_lazy_registry_count_as_imports():
    assert {"pipeline/data/voc.py", "pipeline/data/folder.py"} <= project_files("pipeline.data")


def test_a_stage_does_not_depend_on_its_sibling_stages_through_the_package_that_lists_them():
    files = project_files("stages.train_teacher")
    assert "stages/__init__.py" not in files
    assert not {"stages/report.py", "stages/export_onnx.py", "stages/validate.py"} & files


def fake_project(root: Path, helper_body: str) -> None:
    package = root / "pipeline"
    (package / "inner").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("")
    (package / "stage_module.py").write_text(textwrap.dedent("""
        def run():
            from .inner import helper   # a relative import inside a function
            return helper.VALUE
    """))
    (package / "inner" / "helper.py").write_text("from pipeline.inner.deepest import X\n" + helper_body)
    (package / "inner" / "deepest.py").write_text("X = 1\n")


def test_changing_any_module_in_the_chain_changes_the_digest_and_an_unrelated_one_does_not(tmp_path):
    fake_project(tmp_path, "VALUE = 1\n")
    (tmp_path / "pipeline" / "unrelated.py").write_text("Y = 0\n")
    before = code_digest(["pipeline.stage_module"], root=tmp_path)
    (tmp_path / "pipeline" / "unrelated.py").write_text("Y = 1\n")
    assert code_digest(["pipeline.stage_module"], root=tmp_path) == before
    (tmp_path / "pipeline" / "inner" / "deepest.py").write_text("X = 2\n")
    assert code_digest(["pipeline.stage_module"], root=tmp_path) != before


STAGE_MODULE = textwrap.dedent("""
    from pipeline.orchestration.stage import StageResult
    from pipeline_probe_helper import VALUE

    def run(ctx):
        (ctx.dir / "out.txt").write_text(str(VALUE))
        return StageResult(outputs={"out": "out.txt"})
""")


def test_status_says_a_stage_is_stale_after_a_change_to_a_module_it_imports(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "pipeline_probe_stage.py").write_text(STAGE_MODULE)
    (code / "pipeline_probe_helper.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(code_deps, "PROJECT_PACKAGES", (*code_deps.PROJECT_PACKAGES, "pipeline_probe_helper"))
    monkeypatch.setattr(code_deps, "PROJECT_ROOT", code)
    import pipeline_probe_stage  # noqa: PLC0415 - written by this test

    stages = [Stage("probe", pipeline_probe_stage.run)]
    run_dir = tmp_path / "run"
    Runner(load_config(None), run_dir, stages).run()
    assert [p.action for p in Runner(load_config(None), run_dir, stages).plan()] == ["skip"]

    (code / "pipeline_probe_helper.py").write_text("VALUE = 2  # changed\n")
    plan = Runner(load_config(None), run_dir, stages).plan()
    assert (plan[0].action, plan[0].reason) == ("run", "code changed")
    sys.modules.pop("pipeline_probe_stage", None)


def test_a_test_stage_outside_the_project_packages_is_still_fingerprinted():
    def run(ctx: StageContext) -> StageResult:
        return StageResult()

    assert len(code_digest([Stage("x", run).run.__module__])) == 64


def test_a_string_counts_as_an_import_only_when_it_is_a_dotted_module_path(tmp_path):
    path = tmp_path / "contract.py"
    path.write_text('SECTION = "stages"  # a metrics.json key, not an import\nREADER = "pipeline.data.voc"\n')
    names = imported_names("pipeline.contract", path)
    assert "stages" not in names and "pipeline.data.voc" in names
