"""configs/sweeps/compare_methods.yaml covers every method with valid settings, and the comparison command
turns finished sweep runs into a table with the exported student's size and ONNX Runtime latency."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.benchmarks.compare_methods import main as compare_main
from pipeline.config import load_config
from pipeline.distill import available_methods
from pipeline.orchestration.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "configs" / "sweeps" / "compare_methods.yaml"
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_the_comparison_sweep_covers_every_method_with_valid_settings_and_five_seeds():
    sweep = yaml.safe_load(COMPARE.read_text())
    assert sweep["base"] == "../default_plateau.yaml" and sweep["seeds"] == 5
    named = {spec["name"] for variant in sweep["variants"].values() for spec in variant["distill.methods"]}
    ablation = yaml.safe_load((ROOT / "configs" / "sweeps" / "ablation_tat.yaml").read_text())
    halves = {spec["name"] for variant in ablation["variants"].values() for spec in variant["distill.methods"]}
    assert {"tat_patch", "tat_anchor"} <= halves, "TaT's halves are compared in the ablation sweep"
    assert set(available_methods()) - {"none"} <= named | halves, "every method needs a variant"
    assert {"tat_seg", "kd"} <= named
    for name, variant in sweep["variants"].items():
        methods = variant["distill.methods"]
        load_config(COMPARE.parent / sweep["base"], [f"distill.methods={json.dumps(methods)}"])
        for spec in methods:
            if spec["name"] != "none":
                assert spec["weight"] is not None, f"{name}: write the weight so the table states it"


def test_each_compared_weight_is_the_methods_default_or_one_the_weight_check_tried():
    from pipeline.distill.registry import method_class
    from pipeline.orchestration.sweep import load_sweep

    check = load_sweep(ROOT / "configs" / "sweeps" / "compare_methods_weights.yaml")  # every variant valid
    tried = {(spec.name, spec.weight) for run in check.runs for spec in run.config.distill.methods}
    compared = yaml.safe_load(COMPARE.read_text())["variants"]
    for name, variant in compared.items():
        if name in {"tat", "tat_kd"}:  # TaT's weight was chosen on its own (configs/default_plateau.yaml)
            continue
        for spec in variant["distill.methods"]:
            if spec["name"] != "none":
                default = float(method_class(spec["name"]).default_weight)
                assert spec["weight"] == default or (spec["name"], spec["weight"]) in tried, name


@pytest.mark.slow
def test_compare_command_adds_exported_params_latency_int8_and_the_pareto_frontier(tmp_path):
    fast = ["run.threads=1", "baseline.enabled=false", "teacher.train.epochs=1", "student.train.epochs=1",
            "student.train.max_steps_per_epoch=1", "data.train_size=32", "data.val_size=4", "validate.parity_images=2",
            "benchmark.min_iters=2", "benchmark.warmup=0", "benchmark.min_seconds=0",
            "export.dynamic=false", "validate.batch_size=2", "benchmark.batch_size=2"]  # static export: 4x cheaper
    sweep = tmp_path / "sweep"
    teacher = tmp_path / "teacher"
    assert main(["run", SMOKE, "--out", str(teacher), *fast, "--until", "train_teacher"]) == 0
    for variant, methods in (("baseline", "[{name: none}]"), ("letkd", "[{name: letkd, num_templates: 8}]")):
        run = sweep / variant / "seed0"
        shutil.copytree(teacher / "train_teacher", run / "train_teacher", copy_function=os.link)
        assert main(["run", SMOKE, "--out", str(run), *fast, f"distill.methods={methods}",
                     "--until", "distill_student"]) == 0
    assert compare_main([str(sweep)]) == 0
    table = json.loads((sweep / "compare_methods.json").read_text())
    baseline, letkd = table["variants"]["baseline"], table["variants"]["letkd"]
    assert table["baseline"] == "baseline" and baseline["gap_closure_percent"] in (0.0, None)
    assert letkd["student_params"] > baseline["student_params"], "LetKD's KD layer ships with the student"
    for row in (baseline, letkd):
        assert row["onnxruntime_status"] == "passed" and row["onnxruntime_p50_ms"] > 0 and row["seeds"] == 1
    markdown = (sweep / "compare_methods.md").read_text()
    assert "exported params" in markdown
    # Does the gain survive INT8: every variant's post-training INT8 model measured beside its FP32 figure.
    for row in (baseline, letkd):
        int8 = row["int8"]["onnxruntime-int8"]
        assert int8["miou"] is not None and int8["p50_ms"] > 0
        assert int8["miou_delta"] == pytest.approx(int8["miou"] - row["deployments"]["pytorch-fp32"]["miou"], abs=1e-3)
    assert "Does the gain survive INT8?" in markdown and "gain vs baseline (onnxruntime-int8)" in markdown
    # The Pareto frontier spans every method x backend x precision that ran.
    labels = {row["label"] for row in table["pareto"]}
    assert {"baseline / onnxruntime-int8", "letkd / onnxruntime-fp32", "letkd / pytorch-fp32"} <= labels
    assert any(row["on_front"] for row in table["pareto"])
    front = json.loads((sweep / "pareto.json").read_text())["front"]
    assert front == [row["label"] for row in table["pareto"] if row["on_front"]]
    assert (sweep / "compare_methods_pareto.png").stat().st_size > 1000
