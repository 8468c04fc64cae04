"""The gate compares metrics with one-sided tolerances, fails on regressions, missing metrics and
fingerprint mismatches (naming what failed), gates only backends that ran, and writes baselines
that pass on the run they came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.orchestration.cli import main
from pipeline.orchestration.gate import (
    Baseline,
    Check,
    GateError,
    baseline_from_run,
    evaluate_gate,
    format_table,
    load_baseline,
    resolve,
    save_baseline,
)


def run_metrics(**changes) -> dict:
    metrics = {
        "run": {"name": "x", "config_fingerprint": "c" * 64, "dataset_fingerprint": "d" * 64,
                "framework_fingerprint": "torch-2.14.1", "hardware_fingerprint": "cpu-AVX512-AuthenticAMD-25-17"},
        "teacher": {"miou": 60.0, "val_loss": 0.5},
        "student": {"miou": 50.0, "val_loss": 0.8},
        "strip": {"params_equal": True, "outputs_identical": True},
        "backends": {
            "pytorch": {"status": "passed", "miou": 50.0, "latency_ms": {"p50": 10.0}},
            "onnxruntime": {"status": "passed", "miou": 50.0, "miou_delta": 0.0, "max_abs_diff": 2e-6,
                            "latency_ms": {"p50": 4.0}},
            "onnxruntime-int8": {"status": "passed", "miou": 49.5, "miou_delta": -0.5, "max_abs_diff": 0.3,
                                 "latency_ms": {"p50": 2.0}},
            "tensorrt-fp16": {"status": "skipped", "reason": "TensorRT is not installed"},
        },
    }
    for dotted, value in changes.items():
        node = metrics
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return metrics


def verdicts(result) -> dict[str, str]:
    return {row.metric: row.verdict for row in result.rows}


def test_a_run_passes_the_baseline_written_from_it():
    metrics = run_metrics()
    result = evaluate_gate(metrics, baseline_from_run(metrics))
    assert result.passed, format_table(result)
    assert "backends.onnxruntime-int8.miou" in verdicts(result)


def test_a_small_drop_within_tolerance_passes_and_a_larger_one_fails_naming_the_metric():
    baseline = baseline_from_run(run_metrics())  # mIoU may drop 0.5 points
    assert evaluate_gate(run_metrics(student__miou=49.6), baseline).passed
    result = evaluate_gate(run_metrics(student__miou=48.0), baseline)
    assert not result.passed
    assert verdicts(result)["student.miou"] == "FAIL"
    assert "student.miou regressed: 48 vs baseline 50" in format_table(result)


def test_tolerances_are_one_sided_improvements_always_pass():
    baseline = baseline_from_run(run_metrics())
    better = run_metrics(student__miou=70.0, student__val_loss=0.1)
    better["backends"]["onnxruntime"]["max_abs_diff"] = 0.0
    assert evaluate_gate(better, baseline).passed


def test_relative_and_absolute_tolerance_allow_the_larger_slack():
    check = Check("a.b", 100.0, "higher_is_better", abs_tol=1.0, rel_tol=0.05)
    assert check.limit() == 95.0
    check = Check("a.b", 2.0, "lower_is_better", abs_tol=1.0, rel_tol=0.05)
    assert check.limit() == 3.0


def test_a_missing_metric_fails():
    baseline = baseline_from_run(run_metrics())
    result = evaluate_gate(run_metrics(teacher__miou=None), baseline)
    assert verdicts(result)["teacher.miou"] == "FAIL"
    assert "teacher.miou is not in metrics.json" in format_table(result)


def test_a_backend_missing_altogether_fails():
    baseline = baseline_from_run(run_metrics())
    metrics = run_metrics()
    del metrics["backends"]["onnxruntime-int8"]
    assert verdicts(evaluate_gate(metrics, baseline))["backends.onnxruntime-int8.miou"] == "FAIL"


def test_a_status_change_fails():
    baseline = baseline_from_run(run_metrics())
    metrics = run_metrics()
    metrics["backends"]["onnxruntime"]["status"] = "validation failed"
    result = evaluate_gate(metrics, baseline)
    assert verdicts(result)["backends.onnxruntime.status"] == "FAIL"


def test_a_baseline_never_expects_a_failure():
    metrics = run_metrics()
    metrics["backends"]["onnxruntime-int8"].update(status="validation failed", reason="mIoU -1.04 points")
    with pytest.raises(GateError, match=r"refusing .* onnxruntime-int8 \(validation failed: mIoU -1.04 points\)"):
        baseline_from_run(metrics)
    baseline = baseline_from_run(metrics, expect_pass=True)
    int8 = [check for check in baseline.checks if "onnxruntime-int8" in check.metric]
    assert [(check.metric, check.equals) for check in int8] == [("backends.onnxruntime-int8.status", "passed")]
    assert not evaluate_gate(metrics, baseline).passed
    assert evaluate_gate(run_metrics(), baseline).passed


def test_cli_refuses_to_write_a_baseline_from_a_failed_run(tmp_path, capsys):
    metrics = run_metrics()
    metrics["backends"]["onnxruntime"]["status"] = "export failed"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    baseline = tmp_path / "baseline.json"
    assert main(["gate", str(tmp_path / "run"), "--baseline", str(baseline), "--write-baseline"]) == 2
    assert "--expect-pass" in capsys.readouterr().err and not baseline.exists()
    assert main(["gate", str(tmp_path / "run"), "--baseline", str(baseline), "--write-baseline", "--expect-pass"]) == 0
    assert main(["gate", str(tmp_path / "run"), "--baseline", str(baseline)]) == 1


def test_a_skipped_backend_is_not_gated_unless_required():
    metrics = run_metrics()
    assert not any("tensorrt" in check.metric for check in baseline_from_run(metrics).checks)
    optional = Baseline({}, (Check("backends.tensorrt-fp16.miou", 50.0, "higher_is_better", abs_tol=0.5),))
    result = evaluate_gate(metrics, optional)
    assert result.passed and verdicts(result)["backends.tensorrt-fp16.miou"] == "skip"
    required = Baseline({}, (Check("backends.tensorrt-fp16.miou", 50.0, "higher_is_better", abs_tol=0.5,
                                   required=True),))
    result = evaluate_gate(metrics, required)
    assert not result.passed
    assert "backend tensorrt-fp16 is required but this run skipped it: TensorRT is not installed" in format_table(result)


def test_fingerprint_mismatch_fails_and_can_be_downgraded_to_a_warning():
    baseline = baseline_from_run(run_metrics(), run_config={"student": {"train": {"epochs": 2}}})
    metrics = run_metrics()
    metrics["run"]["config_fingerprint"] = "e" * 64
    result = evaluate_gate(metrics, baseline, run_config={"student": {"train": {"epochs": 1}}})
    assert not result.passed
    assert verdicts(result)["run.config_fingerprint"] == "FAIL"
    assert "changed: student.train.epochs" in format_table(result)
    ignored = evaluate_gate(metrics, baseline, ignore_fingerprints=("config",))
    assert ignored.passed and verdicts(ignored)["run.config_fingerprint"] == "warn"
    metrics["run"]["dataset_fingerprint"] = "f" * 64
    assert not evaluate_gate(metrics, baseline, ignore_fingerprints=("config",)).passed


def test_another_torch_release_fails_the_gate_saying_so_rather_than_as_a_regression():
    baseline = baseline_from_run(run_metrics())
    metrics = run_metrics()
    metrics["run"]["framework_fingerprint"] = "torch-2.15.0"
    result = evaluate_gate(metrics, baseline)
    assert not result.passed and verdicts(result)["run.framework_fingerprint"] == "FAIL"
    table = format_table(result)
    assert "torch-2.15.0 vs torch-2.14.1: trained numbers are exact to the framework release" in table
    assert "--ignore-fingerprint framework" in table
    assert evaluate_gate(metrics, baseline, ignore_fingerprints=("framework",)).passed
    # Baselines written before this fingerprint existed are still read and gated.
    older = baseline_from_run(run_metrics())
    older.fingerprints.pop("framework")
    assert evaluate_gate(metrics, older).passed


def test_another_machine_type_is_a_warning_naming_both_and_the_numbers_are_still_gated():
    baseline = baseline_from_run(run_metrics())
    moved = run_metrics()
    moved["run"]["hardware_fingerprint"] = "cpu-AVX2-AuthenticAMD-25-1"
    result = evaluate_gate(moved, baseline)
    assert result.passed and verdicts(result)["run.hardware_fingerprint"] == "warn"
    assert "cpu-AVX2-AuthenticAMD-25-1 vs cpu-AVX512-AuthenticAMD-25-17" in format_table(result)
    moved["student"]["miou"] = 40.0
    result = evaluate_gate(moved, baseline)
    assert not result.passed and verdicts(result)["student.miou"] == "FAIL"


def test_spread_runs_widen_exactly_the_trained_numbers_tolerances_to_the_measured_spread():
    reference = run_metrics()
    other_kernels = run_metrics(student__miou=48.4, teacher__miou=60.2)
    other_kernels["backends"]["onnxruntime-int8"]["max_abs_diff"] = 0.5
    baseline = baseline_from_run(reference, spread_runs=[run_metrics(), other_kernels])
    checks = {check.metric: check for check in baseline.checks}
    assert checks["student.miou"].abs_tol == pytest.approx(1.5 * 1.6)  # 1.5 x the largest deviation
    assert checks["teacher.miou"].abs_tol == 0.5  # never below the default
    assert checks["backends.onnxruntime-int8.max_abs_diff"].abs_tol == pytest.approx(0.3)
    assert "largest deviation over 2 runs" in checks["student.miou"].note
    assert checks["backends.onnxruntime.max_abs_diff"] == baseline_from_run(reference).checks[
        [c.metric for c in baseline_from_run(reference).checks].index("backends.onnxruntime.max_abs_diff")]
    assert len(baseline.source["spread_runs"]) == 2
    assert evaluate_gate(other_kernels, baseline).passed
    assert not evaluate_gate(run_metrics(student__miou=47.0), baseline).passed


def test_spread_runs_of_another_config_are_refused(tmp_path):
    from pipeline.orchestration.gate import write_baseline

    for name, epochs, threads in (("a", 2, 1), ("b", 2, 2), ("c", 3, 1)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(run_metrics()))
        (run / "config.yaml").write_text(yaml.safe_dump({"run": {"threads": threads},
                                                         "student": {"train": {"epochs": epochs}}}))
    written = write_baseline(tmp_path / "a", tmp_path / "ok.json", (tmp_path / "b",))
    assert written.source["spread_runs"][0]["threads"] == 2
    with pytest.raises(GateError, match="student.train.epochs"):
        write_baseline(tmp_path / "a", tmp_path / "bad.json", (tmp_path / "c",))


def test_derived_metrics_are_arithmetic_over_dotted_keys():
    metrics = run_metrics()
    assert resolve(metrics, "backends.onnxruntime-int8.latency_ms.p50 / backends.pytorch.latency_ms.p50") == 0.2
    assert resolve(metrics, "teacher.miou - student.miou") == 10.0
    assert resolve(metrics, "(teacher.miou + student.miou) / 2") == 55.0
    ratio = Baseline({}, (Check("backends.onnxruntime.latency_ms.p50 / backends.pytorch.latency_ms.p50", max=0.3),))
    result = evaluate_gate(metrics, ratio)
    assert not result.passed and "is above the maximum 0.3" in format_table(result)
    with pytest.raises(GateError, match="may only use"):
        resolve(metrics, "__import__('os').system('true') + teacher.miou")


def test_a_malformed_check_is_rejected_with_the_fix():
    with pytest.raises(GateError, match="needs direction"):
        Check("student.miou", 50.0)
    with pytest.raises(GateError, match="needs abs_tol and/or rel_tol"):
        Check("student.miou", 50.0, "higher_is_better")
    with pytest.raises(GateError, match="one-sided"):
        Check("student.miou", 50.0, "higher_is_better", abs_tol=-1)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_baseline_files_round_trip(tmp_path, suffix):
    baseline = baseline_from_run(run_metrics(), run_config={"run": {"seed": 0}})
    path = tmp_path / f"baseline{suffix}"
    save_baseline(baseline, path)
    loaded = load_baseline(path)
    assert loaded.checks == baseline.checks
    assert loaded.fingerprints == baseline.fingerprints and loaded.config == baseline.config


def test_unknown_keys_in_a_baseline_are_errors(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"checks": [{"metric": "student.miou", "max": 1, "tolerance": 2}]}))
    with pytest.raises(GateError, match="unknown keys \\['tolerance'\\]"):
        load_baseline(path)


def write_run(folder: Path, metrics: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_cli_write_baseline_then_gate_passes_and_a_regression_exits_1(tmp_path, capsys):
    good = write_run(tmp_path / "good", run_metrics())
    baseline = tmp_path / "baseline.json"
    assert main(["gate", str(good), "--baseline", str(baseline), "--write-baseline"]) == 0
    assert main(["gate", str(good), "--baseline", str(baseline)]) == 0
    assert "gate passed" in capsys.readouterr().out
    bad = write_run(tmp_path / "bad", run_metrics(**{"student__miou": 40.0}))
    assert main(["gate", str(bad), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "gate FAILED: 1 of" in out and "student.miou" in out


def test_cli_reports_a_missing_baseline_or_run_as_a_usage_error(tmp_path, capsys):
    run = write_run(tmp_path / "run", run_metrics())
    assert main(["gate", str(run), "--baseline", str(tmp_path / "nope.json")]) == 2
    assert "--write-baseline" in capsys.readouterr().err
    assert main(["gate", str(tmp_path / "empty"), "--baseline", str(tmp_path / "nope.json")]) == 2
    assert "run the pipeline first" in capsys.readouterr().err
