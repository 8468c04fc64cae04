"""`python -m pipeline sweep`: one teacher, students over variants x seeds, a table whose numbers
are the runs' own metrics; bad sweep files fail before anything trains."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.orchestration.cli import main
from pipeline.orchestration.sweep import load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # smoke-sized and smaller: seconds per training
    "run.threads": 1,
    "data.image_size": 32,
    "data.train_size": 32,
    "data.val_size": 8,
    "teacher.train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2},
    "student.train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2},
}


def write_sweep(folder: Path, **fields) -> Path:
    spec = {"base": str(ROOT / "configs" / "smoke.yaml"), "overrides": TINY, "seeds": 2,
            "variants": {"baseline": {"distill.methods": [{"name": "none"}]},
                         "tat": {"distill.methods": [{"name": "tat_patch", "patches": 2, "groups": 4},
                                                     {"name": "tat_anchor", "weight": 0.5, "anchors": 4}]}}}
    spec.update(fields)
    path = folder / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "out"
    assert main(["sweep", str(write_sweep(folder)), "--out", str(out)]) == 0
    return out, json.loads((out / "sweep.json").read_text())


def run_metrics(out: Path, variant: str, seed: int) -> dict:
    return json.loads((out / variant / f"seed{seed}" / "metrics.json").read_text())


def test_the_teacher_is_trained_once_and_reused_by_every_run(sweep_run):
    out, table = sweep_run
    teacher = json.loads((out / "teacher" / "train_teacher" / "_complete.json").read_text())
    assert table["teacher"]["fingerprint"] == teacher["fingerprint"]
    for variant in ("baseline", "tat"):
        for seed in (0, 1):
            metrics = run_metrics(out, variant, seed)
            assert metrics["stages"]["train_teacher"]["status"] == "skipped"
            assert metrics["stages"]["train_teacher"]["fingerprint"] == teacher["fingerprint"]
            assert metrics["stages"]["distill_student"]["status"] == "ran"
            assert "train_student_baseline" not in metrics["stages"] or \
                metrics["stages"]["train_student_baseline"]["status"] == "disabled"
            assert metrics["teacher"]["miou"] == table["teacher"]["miou"]


def test_seeds_vary_the_student_only(sweep_run):
    out, _ = sweep_run
    configs = [yaml.safe_load((out / "tat" / f"seed{s}" / "config.yaml").read_text()) for s in (0, 1)]
    assert [c["student"]["train"]["seed"] for c in configs] == [0, 1]
    assert configs[0]["teacher"] == configs[1]["teacher"] and configs[0]["run"]["seed"] == configs[1]["run"]["seed"]
    histories = [(out / "tat" / f"seed{s}" / "distill_student" / "history.jsonl").read_text() for s in (0, 1)]
    assert histories[0] != histories[1], "different student seeds must train differently"


def test_table_numbers_come_from_the_runs(sweep_run):
    out, table = sweep_run
    assert table["seeds"] == [0, 1] and table["baseline"] == "baseline"
    means = {}
    for variant, entry in table["variants"].items():
        mious = [run_metrics(out, variant, seed)["student"]["miou"] for seed in (0, 1)]
        assert [run["miou"] for run in entry["runs"]] == mious
        assert entry["miou_mean"] == pytest.approx(statistics.fmean(mious), abs=1e-4)
        assert entry["miou_std"] == pytest.approx(statistics.stdev(mious), abs=1e-4)
        steps = [run_metrics(out, variant, seed)["student"]["seconds_per_step"] for seed in (0, 1)]
        assert entry["seconds_per_step"] == pytest.approx(statistics.fmean(steps), abs=1e-4)
        means[variant] = entry["miou_mean"]
    gap = table["teacher"]["miou"] - means["baseline"]
    expected = None if abs(gap) < 1e-9 else round(100 * (means["tat"] - means["baseline"]) / gap, 2)
    assert table["variants"]["tat"]["gap_closure_percent"] == expected
    assert table["variants"]["tat"]["delta_vs_baseline"] == pytest.approx(means["tat"] - means["baseline"], abs=1e-4)
    markdown = (out / "sweep.md").read_text()
    assert "baseline (baseline)" in markdown and "0.5*tat_anchor(anchors=4x4)" in markdown
    assert "±" in markdown


def test_a_second_sweep_resumes_without_training(sweep_run, capsys):
    out, table = sweep_run
    path = Path(table["sweep"])
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    for variant in ("baseline", "tat"):
        for seed in (0, 1):
            assert run_metrics(out, variant, seed)["stages"]["distill_student"]["status"] == "skipped"
    assert json.loads((out / "sweep.json").read_text())["variants"] == table["variants"]


def test_parallel_jobs_give_the_same_table_as_one_run_at_a_time(sweep_run, tmp_path):
    out, table = sweep_run
    parallel_out = tmp_path / "parallel"
    assert main(["sweep", table["sweep"], "--out", str(parallel_out), "--jobs", "2"]) == 0
    parallel = json.loads((parallel_out / "sweep.json").read_text())
    # Every run is deterministic at its 1 thread, so the figures match the sequential sweep's exactly.
    assert [[run["miou"] for run in entry["runs"]] for entry in parallel["variants"].values()] == \
        [[run["miou"] for run in entry["runs"]] for entry in table["variants"].values()]
    for variant in ("baseline", "tat"):
        for seed in (0, 1):
            assert run_metrics(parallel_out, variant, seed)["stages"]["train_teacher"]["status"] == "skipped"
            assert "distill_student" in (parallel_out / variant / f"seed{seed}" / "sweep.log").read_text()


def test_a_failed_parallel_run_stops_the_sweep_naming_the_run_and_keeping_finished_work(sweep_run, tmp_path, capsys):
    out, table = sweep_run
    blocked = tmp_path / "parallel" / "tat" / "seed1"
    blocked.mkdir(parents=True)
    (blocked / ".lock").write_text(str(os.getpid()))  # a live process holds this run folder
    assert main(["sweep", table["sweep"], "--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 2
    captured = capsys.readouterr()
    assert "run 'tat' seed 1 failed" in captured.out and "no further run starts" in captured.out
    assert "sweep stopped: run 'tat' seed 1 failed" in captured.err and "in use by another pipeline process" in captured.err
    assert not (tmp_path / "parallel" / "sweep.json").exists()
    finished = [run_metrics(tmp_path / "parallel", v, s)["stages"]["distill_student"]["status"]
                for v, s in (("baseline", 0), ("baseline", 1))]
    assert finished == ["ran", "ran"]


def test_a_parallel_worker_ends_when_the_sweep_process_dies(tmp_path):
    # The worker initializer, run in a child of a process that is then killed, must end the child.
    script = tmp_path / "orphan.py"
    pid_file = tmp_path / "worker.pid"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, os, time
        from pipeline.orchestration.sweep import _exit_with_parent

        def work():
            _exit_with_parent()
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(600)

        if __name__ == "__main__":
            multiprocessing.get_context("spawn").Process(target=work).start()
            time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=ROOT)
    try:
        # Parent and worker each import torch: over a minute together on a loaded 2-core machine.
        deadline = time.monotonic() + 300
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
    finally:
        parent.kill()
        parent.wait()
    try:
        deadline = time.monotonic() + 20
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived the sweep process"
            time.sleep(0.1)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A dead child not yet reaped by anyone is a zombie: it no longer runs.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_parallel_jobs_share_the_cpu_threads():
    from pipeline.orchestration.sweep import threads_per_job

    assert [threads_per_job(jobs, cpus=8) for jobs in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


@pytest.mark.parametrize("fields, message", [
    ({"variant": {}}, "unknown key 'variant'; did you mean 'variants'?"),
    ({"baseline": "base"}, "baseline 'base' is not one of the variants; did you mean 'baseline'?"),
    ({"variants": {"big_teacher": {"teacher.train.epochs": 3}, "baseline": {}}},
     "variant 'big_teacher' changes teacher, which the teacher depends on"),
    ({"variants": {"baseline": {"distill.methods": [{"name": "tat_patch", "patches": 3, "groups": 2}]}}},
     "groups=2 must divide the number of patches n*m = 9"),
    ({"variants": {"baseline": {"distill.ce_wieght": 1}}}, "did you mean 'distill.ce_weight'"),
    ({"seeds": 0}, "seeds: Input should be greater than or equal to 1"),
])
def test_bad_sweep_files_fail_before_any_work(tmp_path, fields, message):
    path = write_sweep(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?").replace("*", r"\*")):
        run_sweep(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_feature_size_errors_stop_the_sweep_before_the_teacher_trains(tmp_path, capsys):
    path = write_sweep(tmp_path, variants={"baseline": {"distill.methods": [{"name": "tat_anchor", "anchors": 16}]}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "set anchors to at most [8, 8]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shipped_ablation_files_are_valid():
    table7 = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml")
    assert list(table7.spec.variants) == ["baseline", "kd", "anchor", "patch", "patch_anchor", "patch_anchor_kd"]
    assert table7.seeds == (0, 1, 2, 3, 4)
    grid = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat_grid.yaml", seeds=1)
    assert len(grid.runs) == len(grid.spec.variants)
    warmup = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat_warmup.yaml")
    ramps = {run.variant: run.config.distill.warmup_steps for run in warmup.runs}
    student = warmup.runs[0].config.student.train
    images = student.max_images or warmup.runs[0].config.data.train_size
    all_steps = student.epochs * (images // student.batch_size)
    assert ramps == {"baseline": 0, "kd": 0, "patch_anchor": 0, "patch_anchor_warmup": 160, "patch_anchor_w1_warmup": 160,
                     "patch_anchor_w03_warmup": 160, "patch_anchor_w1_ramp_all": all_steps}
    official = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat_official.yaml")
    quirks = {run.variant: (run.config.distill.methods[0].options.get("per_image", False), run.config.distill.teacher_mode)
              for run in official.runs}
    assert quirks == {"baseline": (False, "eval"), "patch_anchor": (False, "eval"), "patch_anchor_per_image": (True, "eval"),
                      "patch_anchor_teacher_train": (False, "train"), "patch_anchor_official": (True, "train")}


def test_the_plateau_config_is_the_default_with_longer_schedules_only():
    """The sweeps' tables were measured in configs/default_plateau.yaml: they describe the default's
    models and data only while nothing but the schedules differs."""
    default = load_config(ROOT / "configs" / "default.yaml")
    plateau = load_config(ROOT / "configs" / "default_plateau.yaml")
    # The schedules may differ, and how evaluations are taken (precise_bn_batches); nothing else.
    schedules = {"epochs", "batch_size", "lr", "warmup_steps", "eval_every", "precise_bn_batches"}
    assert plateau.data == default.data and plateau.qat == default.qat
    for role in ("teacher", "student"):
        ours, theirs = getattr(plateau, role), getattr(default, role)
        assert ours.model == theirs.model, role
        assert ours.train.model_dump(exclude=schedules) == theirs.train.model_dump(exclude=schedules), role
    assert plateau.student.train.epochs > default.student.train.epochs
    assert plateau.teacher.train.epochs * (plateau.data.train_size // plateau.teacher.train.batch_size) > \
        default.teacher.train.epochs * (default.data.train_size // default.teacher.train.batch_size)
    # ... and TaT's patches: the plateau regime keeps the 4x4-position patches its tables were measured with.
    assert plateau.distill.model_dump(exclude={"warmup_steps", "methods"}) == \
        default.distill.model_dump(exclude={"warmup_steps", "methods"})
    (plateau_tat,), (default_tat,) = plateau.distill.methods, default.distill.methods
    assert plateau_tat.model_dump(exclude={"patches", "groups"}) == default_tat.model_dump(exclude={"patches", "groups"})
    # The distillation ramp is the same share of the students' steps in both.
    def steps(config):
        train = config.student.train
        return train.epochs * (train.max_images // train.batch_size)

    assert plateau.distill.warmup_steps / steps(plateau) == default.distill.warmup_steps / steps(default)


def test_every_shipped_sweep_trains_the_teacher_and_student_of_its_base_regime():
    """Nothing is pinned: each file measures the methods in the regime its base config defines, the
    default's or the plateau schedules' (configs/default_plateau.yaml)."""
    for path in sorted((ROOT / "configs").glob("**/*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        if "variants" not in spec:
            continue
        assert spec["base"] in ("../default.yaml", "../default_plateau.yaml"), path.name
        base = load_config((path.parent / spec["base"]).resolve())
        for run in load_sweep(path, seeds=1).runs:
            assert run.config.teacher == base.teacher, path.name
            assert run.config.student.model == base.student.model and run.config.data == base.data, path.name


def test_the_grid_shares_its_default_cells_with_the_table7_ablation():
    """The grid's header says its anchor_k2 and patch_4px_g9 runs can be hard-linked from the Table 7
    sweep: that holds only while everything those runs read is equal."""
    grid = {run.variant: run.config for run in load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat_grid.yaml", seeds=1).runs}
    table7 = {run.variant: run.config for run in load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", seeds=1).runs}
    for grid_cell, table7_cell in [("anchor_k2", "anchor"), ("patch_4px_g9", "patch"), ("baseline", "baseline")]:
        for section in ("data", "teacher", "student", "distill"):
            assert grid[grid_cell].section(section) == table7[table7_cell].section(section), (grid_cell, section)


def test_the_grids_combined_cells_are_table7s_tat_with_one_setting_changed():
    """patch_anchor_k1 and patch_anchor_2px_g36 answer whether a cell that led its half-only grid
    still helps beside the other half: each must be Table 7's patch + anchor with only that cell's
    setting changed. patch_anchor_2px_g36 became the default, so its runs are the default's."""
    default = load_config(ROOT / "configs" / "default.yaml")
    grid = {run.variant: run.config for run in load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat_grid.yaml", seeds=1,
                                                          base=ROOT / "configs" / "default.yaml").runs}
    table7 = {run.variant: run.config for run in load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", seeds=1,
                                                            base=ROOT / "configs" / "default.yaml").runs}
    (tat,) = table7["patch_anchor"].distill.methods
    for variant, changed in (("patch_anchor_k1", {"anchors": [12, 12]}),
                             ("patch_anchor_2px_g36", {"patches": [6, 6], "groups": 36})):
        (method,) = grid[variant].distill.methods
        assert method.model_dump() == tat.model_copy(update=changed).model_dump(), variant
    for section in ("data", "teacher", "student.model", "distill"):  # the student's seed is the sweep's
        assert grid["patch_anchor_2px_g36"].section(section) == default.section(section), section


def test_the_weight_sweep_varies_only_tats_weight_and_shares_its_default_cell():
    """tat_weight.yaml's header says tat_w3 is the default as it was before its patches changed and can be
    hard-linked from the Table 7 sweep run on the default: that holds only while both read the same data,
    models and distillation."""
    default = load_config(ROOT / "configs" / "default.yaml")
    weights = {run.variant: run.config for run in load_sweep(ROOT / "configs" / "sweeps" / "tat_weight.yaml", seeds=1).runs}
    table7 = {run.variant: run.config for run in load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", seeds=1,
                                                            base=ROOT / "configs" / "default.yaml").runs}
    # Measured with the patches the default had then (3x3 of 4x4 positions), at the default's weight.
    assert weights["tat_w3"].distill.model_dump(exclude={"methods"}) == default.distill.model_dump(exclude={"methods"})
    for section in ("data", "teacher", "student", "distill"):
        assert weights["tat_w3"].section(section) == table7["patch_anchor"].section(section), section
    (tat,) = weights["tat_w3"].distill.methods
    assert tat.weight == default.distill.methods[0].weight
    for variant, weight in (("tat_w1p5", 1.5), ("tat_w6", 6.0)):
        (method,) = weights[variant].distill.methods
        assert method.weight == weight
        assert method.model_dump(exclude={"weight"}) == tat.model_dump(exclude={"weight"}), variant


@pytest.mark.parametrize("regime", ["default.yaml", "default_plateau.yaml"])
def test_the_seeds_sweep_is_its_regime_with_only_the_method_slot_changed(regime: str):
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "tat_default_seeds.yaml", base=ROOT / "configs" / regime)
    base = load_config(ROOT / "configs" / regime)
    assert sweep.seeds == tuple(range(5)) and sweep.spec.baseline == "baseline"
    assert sweep.spec.matched_time == ["tat"]
    for run in sweep.runs:
        assert run.config.teacher == base.teacher and run.config.student == base.student.model_copy(
            update={"train": base.student.train.model_copy(update={"seed": run.seed})})
        assert run.config.distill.warmup_steps == base.distill.warmup_steps
    methods = {run.variant: [spec.name for spec in run.config.distill.methods] for run in sweep.runs}
    assert methods == {"baseline": ["none"], "tat": [spec.name for spec in base.distill.methods], "kd": ["kd"],
                       "kd_w3": ["kd"]}
    assert next(run.config.distill for run in sweep.runs if run.variant == "tat") == base.distill


def test_another_base_config_runs_the_same_variants_in_that_regime_in_a_folder_of_its_own():
    from pipeline.orchestration.sweep import DEFAULT_SWEEP_ROOT

    path = ROOT / "configs" / "sweeps" / "compare_methods.yaml"  # its own base: the plateau regime
    own, other = load_sweep(path, seeds=1), load_sweep(path, seeds=1, base=ROOT / "configs" / "default.yaml")
    default = load_config(ROOT / "configs" / "default.yaml")
    assert [run.variant for run in other.runs] == [run.variant for run in own.runs]
    assert other.base_path == ROOT / "configs" / "default.yaml"
    assert other.out == DEFAULT_SWEEP_ROOT / "compare_methods-default" != own.out
    for run, own_run in zip(other.runs, own.runs):
        assert run.config.teacher == default.teacher and run.config.data == default.data
        assert run.config.student.train.epochs == default.student.train.epochs != own_run.config.student.train.epochs
        assert run.config.distill.methods == own_run.config.distill.methods
    with pytest.raises(ConfigError, match="--base .*missing.yaml does not exist"):
        load_sweep(path, base=ROOT / "configs" / "missing.yaml")


def test_the_tables_state_the_overrides_every_variant_ran_with(tmp_path):
    """The same sweep file gives other figures under other overrides, so sweep.json and sweep.md say them."""
    from pipeline.orchestration.stage import StageRecord
    from pipeline.orchestration.sweep import summarise, sweep_markdown

    sweep = load_sweep(write_sweep(tmp_path), out=tmp_path / "out", overrides=["teacher.train.epochs=3"])
    assert sweep.overrides[-1] == "teacher.train.epochs=3"
    assert "data.train_size=32" in sweep.overrides  # the file's own overrides come first
    results = [(run, {"student": {"miou": 40.0, "seconds_per_step": 0.1, "steps": 2}}) for run in sweep.runs]
    record = StageRecord("train_teacher", "f" * 64, {}, {}, {}, 1.0, "now")
    table = summarise(sweep, {"teacher": {"miou": 60.0}}, record, results)
    assert table["overrides"] == list(sweep.overrides)
    assert "`teacher.train.epochs=3`" in sweep_markdown(table)
    assert table["base"] == str(sweep.base_path) and f"Base config: `{sweep.base_path}`" in sweep_markdown(table)


def summary_of(tmp_path: Path, mious: dict[tuple[str, int], float], teacher_miou: float = 60.0) -> dict:
    """The sweep table of the two-variant, two-seed test sweep, had its students scored ``mious``."""
    from pipeline.orchestration.stage import StageRecord
    from pipeline.orchestration.sweep import summarise

    sweep = load_sweep(write_sweep(tmp_path), out=tmp_path / "out")
    results = [(run, {"student": {"miou": mious[run.variant, run.seed], "seconds_per_step": 0.1, "steps": 2}})
               for run in sweep.runs]
    record = StageRecord("train_teacher", "f" * 64, {}, {}, {}, 1.0, "now")
    return summarise(sweep, {"teacher": {"miou": teacher_miou}}, record, results)


def test_gap_closure_uses_the_baseline_variants_mean(tmp_path):
    table = summary_of(tmp_path, {("baseline", 0): 40.0, ("baseline", 1): 42.0, ("tat", 0): 50.0, ("tat", 1): 52.0})
    assert table["variants"]["tat"]["gap_closure_percent"] == pytest.approx(100 * (51 - 41) / (60 - 41), abs=0.01)
    assert table["variants"]["baseline"]["gap_closure_percent"] == 0.0
    assert table["variants"]["tat"]["miou_std"] == pytest.approx(statistics.stdev([50.0, 52.0]), abs=1e-4)


def test_each_variant_is_compared_with_the_baseline_seed_by_seed(tmp_path):
    """Two seeds where the means differ by 4.5 but the variant is above on one seed only: the paired
    figures say so where the means cannot."""
    from pipeline.orchestration.sweep import sweep_markdown

    table = summary_of(tmp_path, {("baseline", 0): 40.0, ("baseline", 1): 42.0, ("tat", 0): 50.0, ("tat", 1): 41.0})
    paired = table["variants"]["tat"]["paired_vs_baseline"]
    assert paired == {"mean": 4.5, "std": pytest.approx(statistics.stdev([10.0, -1.0]), abs=1e-4), "above": 1, "seeds": 2}
    assert "paired_vs_baseline" not in table["variants"]["baseline"]
    assert "+4.50 (7.78), above on 1 of 2" in sweep_markdown(table)


def test_the_paired_difference_uses_only_the_seeds_both_ran():
    from pipeline.orchestration.sweep import paired_difference

    baseline = [{"seed": 0, "miou": 40.0}, {"seed": 1, "miou": 42.0}]
    assert paired_difference([{"seed": 1, "miou": 45.0}, {"seed": 7, "miou": 99.0}], baseline) == \
        {"mean": 3.0, "std": None, "above": 1, "seeds": 1}
    assert paired_difference([{"seed": 7, "miou": 99.0}], baseline) is None


def test_a_subset_of_variants_runs_only_those_plus_the_baseline():
    subset = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", variants=["baseline", "patch_anchor"])
    assert list(subset.spec.variants) == ["baseline", "patch_anchor"] and len(subset.runs) == 10
    implied = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", variants=["kd"])
    assert list(implied.spec.variants) == ["baseline", "kd"], "gap closure needs the baseline, so it is always run"
    with pytest.raises(ConfigError, match="did you mean 'patch_anchor'"):
        load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", variants=["baseline", "patch_anchr"])


def test_held_out_seeds_train_new_students_against_the_same_teacher():
    from pipeline.orchestration.sweep import teacher_slice

    first = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", variants=["patch_anchor"])
    held_out = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", variants=["patch_anchor"], first_seed=3)
    assert first.seeds == (0, 1, 2, 3, 4) and held_out.seeds == (3, 4, 5, 6, 7)
    assert [run.run_dir.name for run in held_out.runs[:3]] == ["seed3", "seed4", "seed5"]
    assert {run.config.student.train.seed for run in held_out.runs} == {3, 4, 5, 6, 7}
    assert teacher_slice(held_out.runs[0].config) == teacher_slice(first.runs[0].config)
    with pytest.raises(ConfigError, match="--first-seed must be >= 0"):
        load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat.yaml", first_seed=-1)


def test_the_loss_label_names_a_distillation_warmup_and_a_train_mode_teacher():
    from pipeline.orchestration.sweep import method_label

    ramped = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat_warmup.yaml", variants=["patch_anchor_warmup"])
    labels = {run.variant: method_label(run.config) for run in ramped.runs}
    assert labels["patch_anchor_warmup"].endswith(", distillation ramped over 160 steps")
    assert "ramped" not in labels["baseline"]

    quirks = load_sweep(ROOT / "configs" / "sweeps" / "ablation_tat_official.yaml",
                        variants=["patch_anchor", "patch_anchor_teacher_train", "patch_anchor_official"])
    labels = {run.variant: method_label(run.config) for run in quirks.runs}
    assert labels["patch_anchor_teacher_train"] == labels["patch_anchor"] + ", teacher in train mode"
    assert "per_image=True" in labels["patch_anchor_official"] and "train mode" in labels["patch_anchor_official"]
    # Neither setting means anything without a distillation term, so the CE-only label names neither.
    assert labels["baseline"] == "1*ce"
    ce_only = load_config(ROOT / "configs" / "default.yaml",
                          ["distill.methods=[{name: none}]", "distill.teacher_mode=train"])
    assert ce_only.distill.warmup_steps > 0 and method_label(ce_only) == "1*ce"


def test_a_wall_clock_matched_baseline_trains_for_the_distilled_students_time(tmp_path):
    """Distillation steps cost more than plain ones: the baseline given the same wall-clock time is the
    honest comparison, so the sweep trains it and measures gap closure against it too."""
    out = tmp_path / "out"
    assert main(["sweep", str(write_sweep(tmp_path, matched_time=["tat"], seeds=1)), "--out", str(out)]) == 0
    table = json.loads((out / "sweep.json").read_text())
    base, tat = table["variants"]["baseline"], table["variants"]["tat"]
    matched = table["variants"]["baseline.time_of_tat"]
    assert matched["matched_time_of"] == "tat" and matched["overrides"] == base["overrides"]
    ratio = 1 * tat["seconds"] / base["seconds"]  # the table's seconds are rounded: either side of a .5
    assert matched["epochs"] in {max(1, math.floor(ratio)), max(1, math.ceil(ratio))}
    config = yaml.safe_load((out / "baseline.time_of_tat" / "seed0" / "config.yaml").read_text())
    assert config["student"]["train"]["epochs"] == matched["epochs"] and config["distill"]["methods"][0]["name"] == "none"
    gap = table["teacher"]["miou"] - matched["miou_mean"]
    expected = None if abs(gap) < 1e-9 else round(100 * (tat["miou_mean"] - matched["miou_mean"]) / gap, 2)
    assert tat["gap_closure_vs_matched_time_percent"] == expected
    assert tat["paired_vs_matched_time_baseline"]["mean"] == pytest.approx(tat["miou_mean"] - matched["miou_mean"], abs=1e-4)
    assert tat["paired_vs_matched_time_baseline"]["seeds"] == 1
    assert "baseline.time_of_tat" in (out / "sweep.md").read_text()


@pytest.mark.parametrize("fields, message", [
    ({"matched_time": ["tta"]}, "matched_time names 'tta'"),
    ({"matched_time": ["baseline"]}, "matched_time names 'baseline'"),
    ({"matched_time": ["tat"], "baseline": None}, "matched_time trains the baseline variant"),
])
def test_a_matched_time_entry_must_name_a_distilled_variant(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write_sweep(tmp_path, **fields))
