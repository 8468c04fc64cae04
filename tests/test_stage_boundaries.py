"""Stages hand each other data, never code: no stage module imports another stage (nor does a helper
they share), and every status in metrics.json is one of the Status enum's strings."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from pipeline.model_files import ModelFile
from pipeline.orchestration.stage import Stage, StageContext, StageRecord
from pipeline.status import Status

ROOT = Path(__file__).resolve().parents[1]
STAGES_DIR = ROOT / "stages"


def defines_stage(tree: ast.Module) -> bool:
    return any(isinstance(target, ast.Name) and target.id == "STAGE"
               for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for target in (node.targets if isinstance(node, ast.Assign) else [node.target]))


def imported_modules(tree: ast.Module, package: str = "stages") -> set[str]:
    """Every module an import statement anywhere in ``tree`` names (inside functions too); for
    ``from pkg import name``, ``pkg.name`` as well, since name may be a module."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the stages package
                base = ".".join(filter(None, [package, base]))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def stage_modules() -> dict[str, ast.Module]:
    return {f"stages.{path.stem}": ast.parse(path.read_text(), str(path))
            for path in sorted(STAGES_DIR.glob("*.py")) if path.name != "__init__.py"}


def test_the_check_sees_every_stage_and_every_form_of_import():
    modules = stage_modules()
    assert {"stages.quantize", "stages.validate", "stages.report"} <= {m for m, t in modules.items() if defines_stage(t)}
    assert not defines_stage(modules["stages.deployables"]) and not defines_stage(modules["stages.common"])
    tree = ast.parse("import stages.a\nfrom stages import b\nfrom .c import x\ndef f():\n    from stages.d import y\n")
    assert {"stages.a", "stages.b", "stages.c", "stages.d"} <= imported_modules(tree)


def test_no_stage_module_or_helper_imports_a_stage():
    modules = stage_modules()
    stages = {name for name, tree in modules.items() if defines_stage(tree)}
    crossings = {name: sorted(imported_modules(tree) & stages) for name, tree in modules.items()}
    assert not {name: found for name, found in crossings.items() if found}, (
        "a stage reads another stage's results through its StageContext (input_path, input_metrics, model_file), "
        "and shared code lives in a helper (stages/common.py, stages/deployables.py) or in pipeline/")


def test_status_values_are_the_strings_metrics_json_has_always_used():
    assert {status.value for status in Status} == {"ok", "skipped", "export failed", "passed", "validation failed",
                                                    "ran", "disabled"}
    for status in Status:
        assert status == status.value and f"{status}" == status.value and str(status) == status.value
    assert json.dumps({"status": Status.EXPORT_FAILED}) == '{"status": "export failed"}'


def test_a_model_file_record_round_trips_through_the_completion_record(tmp_path):
    files = (ModelFile("int8", "quantize/student_int8.onnx", "onnx", "int8", metadata={"size_bytes": 3}),
             ModelFile.skipped("fp16", "quantize.fp16 is off in the config"))
    record = StageRecord("quantize", "f" * 64, {}, {}, {}, 1.0, "now", files)
    (tmp_path / "_complete.json").write_text(json.dumps(record.to_dict()))
    loaded = StageRecord.load(tmp_path)
    assert loaded == record and loaded.model_files[1].status is Status.SKIPPED


def test_a_record_written_before_model_files_still_loads_and_a_bad_one_counts_as_not_done(tmp_path):
    older = {"stage": "strip", "fingerprint": "f", "parts": {}, "outputs": {}, "metrics": {}, "seconds": 1.0,
             "finished_at": "now"}
    (tmp_path / "_complete.json").write_text(json.dumps(older))
    assert StageRecord.load(tmp_path).model_files == ()
    (tmp_path / "_complete.json").write_text(json.dumps({**older, "model_files": [{"key": "int8", "path": None,
                                                                                    "status": "exploded"}]}))
    assert StageRecord.load(tmp_path) is None


def context(records: dict[str, StageRecord], inputs: tuple[str, ...]) -> StageContext:
    return StageContext(None, Path("/run"), Stage("validate", lambda ctx: None, inputs=inputs), "f", records)


def record(stage: str, *files: ModelFile) -> StageRecord:
    return StageRecord(stage, "f", {}, {}, {}, 1.0, "now", files)


def test_the_context_finds_a_model_file_among_its_inputs_or_says_why_it_is_missing():
    int8 = ModelFile("int8", "quantize/student_int8.onnx", "onnx", "int8")
    failed = ModelFile("fp16", None, "onnx", "fp16", Status.EXPORT_FAILED, "RuntimeError: boom")
    ctx = context({"quantize": record("quantize", int8, failed)}, ("quantize", "build_engine"))
    assert ctx.model_file("int8") is int8 and ctx.model_file("fp16") is failed
    assert ctx.model_file("engine-fp16") == ModelFile.skipped(
        "engine-fp16", "no TensorRT fp16 engine requested (engine.enabled / engine.precisions)")
    off = context({}, ("quantize",))
    assert off.model_file("int8") == ModelFile.skipped("int8", "quantize stage disabled in the config")
    with pytest.raises(RuntimeError, match="needs the fp32 model file"):
        off.model_file("fp32")
    # Only inputs count: a stage that does not declare quantize cannot depend on its files unseen.
    assert context({"quantize": record("quantize", int8)}, ()).model_file("int8").status == Status.SKIPPED
