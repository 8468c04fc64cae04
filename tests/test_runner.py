"""The runner skips what is up to date, re-runs what changed and everything downstream of it,
and never mistakes an interrupted stage for a finished one."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.environment import cpu_model
from pipeline.model_files import ModelFile
from pipeline.orchestration.runner import PipelineError, RunLock, Runner
from pipeline.orchestration.stage import RECORD_NAME, Stage, StageContext, StageRecord, StageResult

CALLS: list[str] = []
FAIL: set[str] = set()


def _writer(name: str):
    def run(ctx: StageContext) -> StageResult:
        CALLS.append(name)
        if name in FAIL:
            (ctx.dir / "partial.txt").write_text("half")
            raise RuntimeError("killed")
        upstream = "".join(ctx.input_path(i, "out").read_text() for i in ctx.stage.inputs if ctx.has_input(i))
        value = f"{name}({upstream}|{ctx.config.section(ctx.stage.config_keys[0])})"
        (ctx.dir / "out.txt").write_text(value)
        return StageResult(outputs={"out": "out.txt"}, metrics={name: {"value": value}})
    return run


def toy_stages() -> list[Stage]:
    return [
        Stage("a", _writer("a"), config_keys=("teacher.train.epochs",)),
        Stage("b", _writer("b"), inputs=("a",), config_keys=("distill.ce_weight",)),
        Stage("c", _writer("c"), inputs=("b",), config_keys=("export.opset",)),
        Stage("d", _writer("d"), inputs=("a",), config_keys=("benchmark.warmup",),
              enabled=lambda cfg: cfg.baseline.enabled),
    ]


@pytest.fixture(autouse=True)
def reset():
    CALLS.clear()
    FAIL.clear()


def runner(tmp_path: Path, *overrides: str) -> Runner:
    return Runner(load_config(None, list(overrides)), tmp_path, toy_stages())


def test_first_run_runs_everything_and_second_skips_everything(tmp_path):
    runner(tmp_path).run()
    assert CALLS == ["a", "b", "c", "d"]
    CALLS.clear()
    metrics = runner(tmp_path).run()
    assert CALLS == []
    assert {s["status"] for s in metrics["stages"].values()} == {"skipped"}


def test_changing_a_setting_reruns_that_stage_and_downstream_only(tmp_path):
    runner(tmp_path).run()
    CALLS.clear()
    runner(tmp_path, "distill.ce_weight=0.5").run()
    assert CALLS == ["b", "c"]


def test_force_reruns_the_stage_and_downstream_only_if_its_outputs_changed(tmp_path):
    runner(tmp_path).run()
    CALLS.clear()
    runner(tmp_path).run(force=["b"])
    assert CALLS == ["b"]  # identical output bytes: c stays up to date
    CALLS.clear()
    runner(tmp_path).run(force=["all"])
    assert CALLS == ["a", "b", "c", "d"]


def test_an_interrupted_stage_never_looks_done(tmp_path):
    runner(tmp_path).run()
    CALLS.clear()
    FAIL.add("b")
    with pytest.raises(RuntimeError, match="killed"):
        runner(tmp_path, "distill.ce_weight=0.5").run()
    assert not (tmp_path / "b" / RECORD_NAME).exists()
    FAIL.clear()
    CALLS.clear()
    plan = {p.stage: p for p in runner(tmp_path, "distill.ce_weight=0.5").plan()}
    assert plan["a"].action == "skip" and plan["b"].action == "run" and plan["b"].reason == "never run"
    runner(tmp_path, "distill.ce_weight=0.5").run()
    assert CALLS == ["b", "c"]


def test_a_modified_or_missing_output_reruns_the_stage(tmp_path):
    runner(tmp_path).run()
    (tmp_path / "c" / "out.txt").write_text("tampered")
    (tmp_path / "d" / "out.txt").unlink()
    plan = {p.stage: p.reason for p in runner(tmp_path).plan()}
    assert plan["c"] == "output out.txt was modified"
    assert plan["d"] == "output out.txt is missing"
    CALLS.clear()
    runner(tmp_path).run()
    assert CALLS == ["c", "d"]


def test_until_stops_after_the_named_stage(tmp_path):
    metrics = runner(tmp_path).run(until="b")
    assert CALLS == ["a", "b"]
    assert set(metrics["stages"]) == {"a", "b"}


def test_status_explains_why(tmp_path):
    plan = {p.stage: (p.action, p.reason) for p in runner(tmp_path).plan()}
    assert plan["a"] == ("run", "never run")
    assert plan["b"] == ("run", "input a re-runs")
    runner(tmp_path).run()
    plan = {p.stage: (p.action, p.reason) for p in runner(tmp_path, "export.opset=19").plan()}
    assert plan["a"] == ("skip", "up to date")
    assert plan["c"] == ("run", "config changed (export.opset)")
    plan = {p.stage: p.action for p in runner(tmp_path, "baseline.enabled=false").plan(until="b")}
    assert plan == {"a": "skip", "b": "skip", "c": "not reached", "d": "not reached"}


def test_a_disabled_stage_is_not_run(tmp_path):
    metrics = runner(tmp_path, "baseline.enabled=false").run()
    assert CALLS == ["a", "b", "c"]
    assert metrics["stages"]["d"]["status"] == "disabled"


def test_metrics_json_merges_stage_metrics_and_timings(tmp_path):
    runner(tmp_path).run()
    import json

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["c"]["value"].startswith("c(b(a(")
    assert metrics["stages"]["a"]["seconds"] >= 0
    assert len(metrics["run"]["dataset_fingerprint"]) == 64
    assert (tmp_path / "config.yaml").is_file()


def _making(path: str):
    def run(ctx: StageContext) -> StageResult:
        (ctx.dir / "model.onnx").write_text("graph")
        return StageResult(outputs={"onnx": "model.onnx"}, model_files=(ModelFile("fp32", path, "onnx", "fp32"),))
    return run


def _reading(ctx: StageContext) -> StageResult:
    file = ctx.model_file("fp32")
    (ctx.dir / "out.txt").write_text(file.located(ctx.run_dir).read_text())
    return StageResult(outputs={"out": "out.txt"})


def test_model_files_travel_in_the_completion_record_to_the_stages_that_read_them(tmp_path):
    stages = [Stage("make", _making("make/model.onnx"), config_keys=("export.opset",)),
              Stage("use", _reading, inputs=("make",), config_keys=("export.opset",))]
    Runner(load_config(None), tmp_path, stages).run()
    assert (tmp_path / "use" / "out.txt").read_text() == "graph"
    record = StageRecord.load(tmp_path / "make")
    assert record.model_files == (ModelFile("fp32", "make/model.onnx", "onnx", "fp32"),)
    assert Runner(load_config(None), tmp_path, stages).plan()[1].action == "skip"


def test_a_model_file_that_is_not_a_declared_output_is_refused(tmp_path):
    stages = [Stage("make", _making("make/elsewhere.onnx"), config_keys=("export.opset",))]
    with pytest.raises(PipelineError, match="recorded model file 'make/elsewhere.onnx', which is not one of its"):
        Runner(load_config(None), tmp_path, stages).run()
    assert not (tmp_path / "make" / RECORD_NAME).exists()


def test_metrics_json_names_the_kernels_its_numbers_are_exact_to(tmp_path):
    import json

    import torch

    runner(tmp_path, "run.device=cpu").run()
    run = json.loads((tmp_path / "metrics.json").read_text())["run"]
    assert run["framework_fingerprint"] == "torch-" + torch.__version__.split("+")[0]
    assert run["hardware_fingerprint"] == f"cpu-{torch.backends.cpu.get_cpu_capability()}-{cpu_model()}"


def test_the_cpu_model_is_vendor_family_and_model_of_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                       "model name\t: AMD EPYC\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n")
    assert cpu_model(cpuinfo) == "AuthenticAMD-25-17"
    arm = tmp_path / "arm"  # aarch64 names its cores differently: fall back to what platform knows
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    assert cpu_model(arm) == (platform.processor() or platform.machine() or "unknown")
    assert cpu_model(tmp_path / "missing") == cpu_model(arm)


def test_unknown_stage_names_suggest_the_closest(tmp_path):
    with pytest.raises(PipelineError, match="did you mean 'b'"):
        runner(tmp_path).run(force=["bb"])


def test_a_live_lock_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(PipelineError, match="in use by another pipeline process"):
        runner(tmp_path).run()
    lock.write_text("999999999")  # no such process
    runner(tmp_path).run()
    assert not lock.exists()
    with RunLock(tmp_path):
        assert lock.exists()
