"""Ablation sweeps: the teacher trained once, the student over a grid of variants x seeds.

A sweep file names a base pipeline config and the variants to compare::

    base: default.yaml                 # relative to the sweep file
    overrides: {run.threads: 2}        # applied to every variant (mapping or ["key=value", ...])
    seeds: 3                           # student seeds run.seed, run.seed + 1, ...
    baseline: baseline                 # the variant gap closure is measured against
    variants:
      baseline: {distill.methods: [{name: none}]}
      kd: ["distill.methods=[{name: kd, temperature: 4}]"]

Every variant x seed is an ordinary run folder ``<out>/<variant>/seed<k>/`` run by the pipeline's
Runner up to ``distill_student`` with ``baseline.enabled=false`` and ``student.train.seed=k``.
The teacher is trained once in ``<out>/teacher/`` and its completed stage folder is hard-linked
into each run folder: its fingerprint matches, so the Runner skips it there. Variants may not
change anything the teacher's fingerprint reads (run.seed, data, teacher, ...). Finished runs
are skipped on a re-run, so an interrupted sweep resumes. Results: ``sweep.json`` and ``sweep.md``.
``--jobs N`` trains N runs at a time, each in its own process with an even share of the CPU threads
and its progress in ``<run>/sweep.log`` (small models scale poorly over threads, so on many cores
several narrow runs beat one wide run; on this project's 2-core machine the two are about even).
"""

from __future__ import annotations

import difflib
import json
import multiprocessing
import os
import shutil
import statistics
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.artifacts import atomic_write_json, atomic_write_text
from pipeline.config import (
    ConfigError,
    PipelineConfig,
    apply_override,
    parse_override,
    validate_config,
)
from pipeline.distill.registry import method_weight
from pipeline.errors import PipelineError
from pipeline.orchestration.stage import StageRecord
from pipeline.reporting.tables import markdown_table
from pipeline.status import Status

TEACHER_STAGE = "train_teacher"
STUDENT_STAGE = "distill_student"
DEFAULT_SWEEP_ROOT = Path("exported") / "sweeps"
SWEEP_LOG = "sweep.log"  # a parallel run's progress (``--jobs`` > 1), inside its run folder

Overrides = list[str] | dict[str, Any]


class SweepFile(BaseModel):
    """The sweep file's schema (strict: unknown keys are errors with a suggestion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: Path = Field(description="pipeline config the variants start from, relative to the sweep file")
    description: str = ""
    overrides: Overrides = Field(default_factory=list, description="applied to every variant")
    seeds: int = Field(3, ge=1, description="student seeds per variant: run.seed, run.seed + 1, ...")
    baseline: str | None = Field("baseline", description="variant that gap closure is measured against")
    matched_time: list[str] = Field(default_factory=list, description=(
        "variants that also get a wall-clock-matched baseline: the baseline variant trained for as many "
        "epochs as fit in the variant's measured training time"))
    variants: dict[str, Overrides] = Field(min_length=1)

    @field_validator("variants")
    @classmethod
    def _folder_names(cls, variants: dict[str, Overrides]) -> dict[str, Overrides]:
        for name in variants:
            if not name or not all(c.isalnum() or c in "_.-" for c in name) or name in ("teacher", "."):
                raise ValueError(f"variant name {name!r} must be a folder name of letters, digits, '_', '.', '-' "
                                 "(and not 'teacher')")
        return variants

    @model_validator(mode="after")
    def _baseline_is_a_variant(self) -> "SweepFile":
        if self.baseline is not None and self.baseline not in self.variants:
            close = difflib.get_close_matches(self.baseline, list(self.variants), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"baseline '{self.baseline}' is not one of the variants; {hint}"
                             f"variants: {', '.join(self.variants)} (or set baseline: null)")
        if self.matched_time and self.baseline is None:
            raise ValueError("matched_time trains the baseline variant for longer; name a baseline")
        for name in self.matched_time:
            if name not in self.variants or name == self.baseline:
                raise ValueError(f"matched_time names '{name}', which is not a variant other than the baseline; "
                                 f"variants: {', '.join(self.variants)}")
        return self


@dataclass(frozen=True)
class SweepRun:
    variant: str
    seed: int
    config: PipelineConfig
    run_dir: Path


@dataclass(frozen=True)
class Sweep:
    path: Path
    spec: SweepFile
    out: Path
    seeds: tuple[int, ...]
    runs: tuple[SweepRun, ...]
    # Applied to every variant (the file's, then the command line's), as "key=value": the tables
    # must say them, since the same sweep file gives other figures under other overrides.
    overrides: tuple[str, ...] = ()
    base: dict[str, Any] = field(default_factory=dict)  # the base config file's contents
    common: tuple[tuple[list[str], Any], ...] = ()  # ``overrides`` as (key path, value)
    base_path: Path | None = None  # the base config's file: the sweep file's base, or --base

    @property
    def teacher_dir(self) -> Path:
        return self.out / "teacher"


# ------------------------------------------------------------------------------ loading
def override_pairs(overrides: Overrides, where: str) -> list[tuple[list[str], Any]]:
    """``["a.b=1"]`` or ``{"a.b": 1}`` -> [(["a", "b"], 1)]."""
    if isinstance(overrides, dict):
        pairs = []
        for key, value in overrides.items():
            if not key or any(not part for part in str(key).split(".")):
                raise ConfigError(f"{where}: key {key!r} has an empty part; write it as section.key")
            pairs.append((str(key).split("."), value))
        return pairs
    return [parse_override(item) for item in overrides]


def read_sweep_file(path: Path) -> SweepFile:
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; pass one such as configs/sweeps/ablation_tat.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping with base:, variants: (and optionally overrides:, seeds:, baseline:)")
    try:
        return SweepFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_sweep_error(exc, path)) from None


def describe_sweep_error(exc: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid sweep file"]
    valid = list(SweepFile.model_fields)
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "<root>"
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            lines.append(f"  - unknown key '{key}'{hint}")
        else:
            lines.append(f"  - {key}: {error['msg']}")
    return "\n".join(lines)


def load_sweep(
    path: str | Path, out: Path | None = None, seeds: int | None = None, overrides: list[str] | tuple[str, ...] = (),
    variants: list[str] | tuple[str, ...] | None = None, first_seed: int | None = None, base: Path | None = None,
) -> Sweep:
    """Read and validate a sweep file and every variant x seed config, before anything trains.
    ``variants`` keeps only those variants and the baseline, if the file names one. Student seeds are
    ``first_seed``, ``first_seed + 1``, ... (default run.seed); the teacher stays keyed by run.seed, so
    held-out seeds re-test a variant chosen on the first ones against the same teacher. ``base``
    replaces the file's base config: the same variants measured in another regime."""
    path = Path(path)
    spec = select_variants(read_sweep_file(path), variants, path)
    if base is not None:
        base_path = Path(base)
        if not base_path.is_file():
            raise ConfigError(f"--base {base_path} does not exist; pass a pipeline config such as configs/default.yaml")
    else:
        base_path = spec.base if spec.base.is_absolute() else path.parent / spec.base
        if not base_path.is_file():
            raise ConfigError(f"{path}: base config {base_path} does not exist; 'base' is relative to the sweep file")
    base_config = yaml.safe_load(base_path.read_text()) or {}
    common = override_pairs(spec.overrides, f"{path} overrides") + [parse_override(o) for o in overrides]
    if out is None:  # another base is another sweep: its own folder
        out = DEFAULT_SWEEP_ROOT / (path.stem if base is None else f"{path.stem}-{base_path.stem}")
    count = seeds if seeds is not None else spec.seeds
    if count < 1:
        raise ConfigError(f"--seeds must be >= 1, got {count}")
    if first_seed is not None and first_seed < 0:
        raise ConfigError(f"--first-seed must be >= 0 (seeds feed numpy's seeding), got {first_seed}")

    shared_data = _deep_copy(base_config)
    for keys, value in common:
        apply_override(shared_data, keys, value)
    start = first_seed if first_seed is not None else int(_get(shared_data, ["run", "seed"], 0))
    runs = []
    for variant, variant_overrides in spec.variants.items():
        pairs = common + override_pairs(variant_overrides, f"{path} variant '{variant}'")
        runs += [make_run(base_config, pairs, variant, start + index, path, out) for index in range(count)]
    _check_one_teacher(runs, path)
    shared = tuple(f"{'.'.join(keys)}={json.dumps(value)}" for keys, value in common)
    return Sweep(path, spec, out, tuple(sorted({run.seed for run in runs})), tuple(runs), shared, base_config,
                 tuple(common), base_path)


def make_run(base: dict[str, Any], pairs: list[tuple[list[str], Any]], variant: str, seed: int, path: Path,
             out: Path) -> SweepRun:
    """One variant x seed: the base config with ``pairs`` applied, the sweep's own settings on top."""
    data = _deep_copy(base)
    for keys, value in pairs:
        apply_override(data, keys, value)
    for keys, value in ((["baseline", "enabled"], False), (["student", "train", "seed"], seed),
                        (["run", "name"], f"{path.stem}-{variant}-seed{seed}")):
        apply_override(data, keys, value)
    config = validate_config(data, f"{path} variant '{variant}' seed {seed}")
    return SweepRun(variant, seed, config, out / variant / f"seed{seed}")


def matched_time_runs(sweep: Sweep, results: list[tuple[SweepRun, dict[str, Any]]]) -> list[SweepRun]:
    """For each ``matched_time`` variant V: the baseline variant for every seed, with its epochs scaled
    by V's mean training seconds over the baseline's (measured in this sweep), so that the CE-only
    student gets the wall-clock time the distilled one used: ``<baseline>.time_of_<V>``."""
    baseline = sweep.spec.baseline
    seconds = {variant: _mean([m["student"]["seconds_per_step"] * m["student"]["steps"]
                               for run, m in results if run.variant == variant])
               for variant in {baseline, *sweep.spec.matched_time}}
    runs = []
    for variant in sweep.spec.matched_time:
        pairs = list(sweep.common) + override_pairs(sweep.spec.variants[baseline], f"{sweep.path} variant '{baseline}'")
        epochs = next(run.config.student.train.epochs for run in sweep.runs if run.variant == baseline)
        matched = max(1, round(epochs * seconds[variant] / seconds[baseline]))
        pairs.append((["student", "train", "epochs"], matched))
        name = matched_time_name(baseline, variant)
        runs += [make_run(sweep.base, pairs, name, seed, sweep.path, sweep.out) for seed in sweep.seeds]
    return runs


def matched_time_name(baseline: str, variant: str) -> str:
    return f"{baseline}.time_of_{variant}"


def select_variants(spec: SweepFile, names: list[str] | tuple[str, ...] | None, path: Path) -> SweepFile:
    if not names:
        return spec
    for name in names:
        if name not in spec.variants:
            close = difflib.get_close_matches(name, list(spec.variants), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{path}: --variants names '{name}', which is not a variant; {hint}"
                              f"variants: {', '.join(spec.variants)}")
    # Gap closure is measured against the baseline, so it always runs (finished runs are skipped anyway).
    keep = set(names) | ({spec.baseline} if spec.baseline is not None else set())
    return spec.model_copy(update={"variants": {k: v for k, v in spec.variants.items() if k in keep}})


def _deep_copy(data: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(data))


def _get(data: dict[str, Any], keys: list[str], default: Any) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def teacher_slice(config: PipelineConfig) -> dict[str, Any]:
    """The config the teacher stage's fingerprint reads."""
    from stages import train_teacher

    return {key: config.section(key) for key in train_teacher.STAGE.config_keys}


def _check_one_teacher(runs: list[SweepRun], path: Path) -> None:
    reference = teacher_slice(runs[0].config)
    for run in runs[1:]:
        current = teacher_slice(run.config)
        if current != reference:
            changed = [key for key in reference if reference[key] != current[key]]
            raise ConfigError(
                f"{path}: variant '{run.variant}' changes {', '.join(changed)}, which the teacher depends on; the "
                f"sweep trains one teacher, so move that setting to the top-level overrides (or use another sweep)"
            )


# ------------------------------------------------------------------------------ running
def run_sweep(
    path: str | Path, out: Path | None = None, seeds: int | None = None, overrides: list[str] | tuple[str, ...] = (),
    variants: list[str] | tuple[str, ...] | None = None, jobs: int = 1, first_seed: int | None = None,
    base: Path | None = None,
) -> dict[str, Any]:
    """Train the teacher once, then every variant x seed (``jobs`` at a time, each in its own process);
    write sweep.json and sweep.md; return the table."""
    from pipeline.orchestration.preflight import preflight
    from pipeline.orchestration.runner import Runner
    from stages import STAGES

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    sweep = load_sweep(path, out, seeds, overrides, variants, first_seed, base)
    checked: set[str] = set()
    for run in sweep.runs:  # unknown names and impossible method settings fail here, before the teacher trains
        if run.variant not in checked:
            preflight(run.config, f"{sweep.path} variant '{run.variant}'")
            checked.add(run.variant)

    print(f"[sweep] {len(sweep.runs)} student runs ({len(sweep.spec.variants)} variants x {len(sweep.seeds)} seeds) "
          f"in {sweep.out}")
    teacher_config = sweep.runs[0].config.model_copy(update={"run": sweep.runs[0].config.run.model_copy(
        update={"name": f"{sweep.path.stem}-teacher"})})
    teacher_metrics = Runner(teacher_config, sweep.teacher_dir, STAGES).run(until=TEACHER_STAGE)
    teacher_record = StageRecord.load(sweep.teacher_dir / TEACHER_STAGE)
    assert teacher_record is not None  # the Runner just completed it

    results = train_students(sweep, sweep.runs, teacher_record, jobs)
    if sweep.spec.matched_time:
        extra = matched_time_runs(sweep, results)
        print("[sweep] wall-clock-matched baselines: "
              + ", ".join(f"'{run.variant}' {run.config.student.train.epochs} epochs" for run in extra[::len(sweep.seeds)]))
        results += train_students(sweep, tuple(extra), teacher_record, jobs)

    table = summarise(sweep, teacher_metrics, teacher_record, results)
    atomic_write_json(sweep.out / "sweep.json", table)
    atomic_write_text(sweep.out / "sweep.md", sweep_markdown(table))
    return table


def train_students(sweep: Sweep, runs: tuple[SweepRun, ...], teacher_record: StageRecord,
                   jobs: int) -> list[tuple[SweepRun, dict[str, Any]]]:
    if jobs > 1:
        return train_students_in_parallel(sweep, runs, teacher_record, jobs)
    results = []
    for number, run in enumerate(runs, 1):
        print(f"[sweep] run {number}/{len(runs)}: variant '{run.variant}' seed {run.seed}")
        results.append((run, train_student(run, sweep.teacher_dir, teacher_record)))
    return results


def train_student(run: SweepRun, teacher_dir: Path, teacher_record: StageRecord) -> dict[str, Any]:
    """One variant x seed up to distill_student, on the sweep's teacher; its metrics."""
    from pipeline.orchestration.runner import Runner
    from stages import STAGES

    reuse_teacher(teacher_dir / TEACHER_STAGE, run.run_dir / TEACHER_STAGE, teacher_record)
    metrics = Runner(run.config, run.run_dir, STAGES).run(until=STUDENT_STAGE)
    if metrics["stages"][TEACHER_STAGE]["status"] != Status.SKIPPED:
        raise RuntimeError(f"{run.run_dir}: the teacher was retrained; its fingerprint should have matched")
    return metrics


def threads_per_job(jobs: int, cpus: int | None = None) -> int:
    """Intra-op threads for each of ``jobs`` concurrent runs, so that together they use the CPUs once."""
    return max(1, (cpus or os.cpu_count() or 1) // jobs)


def _train_student_logged(run: SweepRun, teacher_dir: Path, teacher_record: StageRecord) -> dict[str, Any]:
    """Worker process: :func:`train_student` with its progress written to ``<run>/sweep.log``."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir / SWEEP_LOG, "w", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
        return train_student(run, teacher_dir, teacher_record)


def _exit_with_parent() -> None:
    """Worker initializer: end this worker when the sweep process dies (killed, or its terminal closed),
    instead of training on as an orphan. Its run resumes from the last epoch checkpoint next time."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()


def train_students_in_parallel(sweep: Sweep, sweep_runs: tuple[SweepRun, ...], teacher_record: StageRecord,
                               jobs: int) -> list[tuple[SweepRun, dict[str, Any]]]:
    """Every run of ``sweep``, ``jobs`` at a time in spawned processes; results in the sweep's order.

    A run without ``run.threads`` gets ``threads_per_job`` threads, so the jobs share the CPUs instead
    of each taking all of them. Threads are outside every fingerprint, like the device: they change
    a CPU run's floating-point reduction order (so its figures, within the seed spread), not what it computes.
    A failed run is reported at once; no further run starts, the runs under way finish (their work
    is kept), then the sweep stops with the failure and the run's log."""
    threads = threads_per_job(jobs)
    runs = [run if run.config.run.threads else replace(run, config=run.config.model_copy(update={
        "run": run.config.run.model_copy(update={"threads": threads})})) for run in sweep_runs]
    print(f"[sweep] {jobs} jobs at a time, {threads} thread(s) each unless run.threads is set; "
          f"progress in <run>/{SWEEP_LOG}", flush=True)
    metrics: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_exit_with_parent) as pool:
        futures = {pool.submit(_train_student_logged, run, sweep.teacher_dir, teacher_record): index
                   for index, run in enumerate(runs)}
        for future in as_completed(futures):
            if future.cancelled():
                continue
            run = runs[futures[future]]
            try:
                metrics[futures[future]] = future.result()
            except Exception as exc:  # noqa: BLE001 - reported with the run's name and log, then re-raised below
                failures.append(f"run '{run.variant}' seed {run.seed} failed: {exc} (log: {run.run_dir / SWEEP_LOG})")
                print(f"[sweep] {failures[-1]}; no further run starts, the runs under way finish", flush=True)
                for pending in futures:
                    pending.cancel()
                continue
            print(f"[sweep] done {len(metrics)}/{len(runs)}: variant '{run.variant}' seed {run.seed}: "
                  f"student mIoU {metrics[futures[future]]['student']['miou']:.2f}", flush=True)
    if failures:
        raise PipelineError("sweep stopped: " + "; ".join(failures) + ". Finished runs are kept: fix the cause and "
                            "run the same command again to resume")
    return [(run, metrics[index]) for index, run in enumerate(sweep_runs)]


def reuse_teacher(source: Path, target: Path, record: StageRecord) -> None:
    """Put the completed teacher stage into a run folder (hard links; a copy across file systems)."""
    existing = StageRecord.load(target)
    if existing is not None and existing.fingerprint == record.fingerprint:
        return
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ------------------------------------------------------------------------------ results
def method_label(config: PipelineConfig) -> str:
    """``1*ce + 0.5*tat_anchor(anchors=8x8)``: the loss, with the options the config sets (resolved)."""
    from pipeline.distill.registry import parse_options

    parts = [f"{config.distill.ce_weight:g}*ce"]
    for spec in config.distill.methods:
        if spec.name == "none":
            continue
        resolved = parse_options(spec)
        options = ", ".join(f"{key}={_short(getattr(resolved, key))}" for key in spec.options)
        parts.append(f"{method_weight(spec):g}*{spec.name}" + (f"({options})" if options else ""))
    # Settings that change what the distillation terms compute or weigh; meaningless without one.
    settings = []
    if len(parts) > 1:
        if config.distill.warmup_steps:
            settings.append(f"distillation ramped over {config.distill.warmup_steps} steps")
        if config.distill.teacher_mode == "train":
            settings.append("teacher in train mode")
    return ", ".join([" + ".join(parts), *settings])


def _short(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _std(values: list[float]) -> float | None:
    return round(statistics.stdev(values), 4) if len(values) > 1 else None


def summarise(
    sweep: Sweep, teacher_metrics: dict[str, Any], teacher_record: StageRecord, results: list[tuple[SweepRun, dict[str, Any]]]
) -> dict[str, Any]:
    teacher_miou = teacher_metrics["teacher"]["miou"]
    variants: dict[str, dict[str, Any]] = {}
    for run, metrics in results:
        matched_to = next((v for v in sweep.spec.matched_time
                           if run.variant == matched_time_name(str(sweep.spec.baseline), v)), None)
        entry = variants.setdefault(run.variant, {
            "overrides": sweep.spec.variants[sweep.spec.baseline if matched_to else run.variant],
            "methods": method_label(run.config),
            "runs": [],
        })
        if matched_to:
            entry["matched_time_of"] = matched_to
            entry["epochs"] = run.config.student.train.epochs
        student = metrics["student"]
        entry["runs"].append({
            "seed": run.seed,
            "run_dir": str(run.run_dir.relative_to(sweep.out)),
            "miou": student["miou"],
            "seconds_per_step": student["seconds_per_step"],
            "steps": student["steps"],
            "seconds": round(student["seconds_per_step"] * student["steps"], 2),
        })
    baseline_mean = None
    if sweep.spec.baseline is not None:
        baseline_mean = _mean([r["miou"] for r in variants[sweep.spec.baseline]["runs"]])
    for entry in variants.values():
        mious = [r["miou"] for r in entry["runs"]]
        entry["miou_mean"] = _mean(mious)
        entry["miou_std"] = _std(mious)
        entry["seconds_per_step"] = _mean([r["seconds_per_step"] for r in entry["runs"]])
        entry["seconds"] = _mean([r["seconds"] for r in entry["runs"]])
        entry["delta_vs_baseline"] = None if baseline_mean is None else round(entry["miou_mean"] - baseline_mean, 4)
        entry["gap_closure_percent"] = gap_closure(teacher_miou, baseline_mean, entry["miou_mean"])
    if sweep.spec.baseline is not None:
        for name, entry in variants.items():
            if name != sweep.spec.baseline:
                entry["paired_vs_baseline"] = paired_difference(entry["runs"], variants[sweep.spec.baseline]["runs"])
    for variant in sweep.spec.matched_time:
        matched = variants.get(matched_time_name(str(sweep.spec.baseline), variant))
        if matched is not None and variant in variants:
            entry = variants[variant]
            entry["delta_vs_matched_time_baseline"] = round(entry["miou_mean"] - matched["miou_mean"], 4)
            entry["paired_vs_matched_time_baseline"] = paired_difference(entry["runs"], matched["runs"])
            entry["gap_closure_vs_matched_time_percent"] = gap_closure(teacher_miou, matched["miou_mean"],
                                                                       entry["miou_mean"])
    return {
        "sweep": str(sweep.path),
        "description": sweep.spec.description,
        "out": str(sweep.out),
        "seeds": list(sweep.seeds),
        "baseline": sweep.spec.baseline,
        "base": str(sweep.base_path),
        "overrides": list(sweep.overrides),
        "teacher": {
            "miou": teacher_miou,
            "fingerprint": teacher_record.fingerprint,
            "run_dir": "teacher",
            "seconds_per_step": teacher_metrics["teacher"].get("seconds_per_step"),
        },
        "run": teacher_metrics.get("run", {}),
        "variants": variants,
    }


def paired_difference(runs: list[dict[str, Any]], reference_runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``runs`` minus ``reference_runs`` seed by seed: a student seed fixes the initialisation and batch
    order in both, so the per-seed difference separates a method from the seed's luck, which the two
    means' spreads do not. Mean and sample std of the differences, and on how many seeds ``runs`` is
    above; None when no seed is shared."""
    reference = {run["seed"]: run["miou"] for run in reference_runs}
    differences = [run["miou"] - reference[run["seed"]] for run in runs if run["seed"] in reference]
    if not differences:
        return None
    return {"mean": _mean(differences), "std": _std(differences), "above": sum(d > 0 for d in differences),
            "seeds": len(differences)}


def _paired(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    spread = f" ({entry['std']:.2f})" if entry["std"] is not None else ""
    return f"{entry['mean']:+.2f}{spread}, above on {entry['above']} of {entry['seeds']}"


def gap_closure(teacher: float, baseline: float | None, student: float) -> float | None:
    """Percent of the teacher-baseline gap the student closes; None without a baseline or a gap."""
    if baseline is None or abs(teacher - baseline) < 1e-9:
        return None
    return round(100.0 * (student - baseline) / (teacher - baseline), 2)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def sweep_markdown(table: dict[str, Any]) -> str:
    rows = []
    for name, entry in table["variants"].items():
        label = f"{name} (baseline)" if name == table["baseline"] else name
        if "matched_time_of" in entry:
            label += f" ({entry['epochs']} epochs)"
        rows.append([label, entry["methods"], len(entry["runs"]), _pm(entry["miou_mean"], entry["miou_std"]),
                     _paired(entry.get("paired_vs_baseline")), entry["gap_closure_percent"],
                     entry.get("gap_closure_vs_matched_time_percent", "-"),
                     _paired(entry.get("paired_vs_matched_time_baseline")), entry["seconds_per_step"],
                     entry.get("seconds", "-")])
    header = ["variant", "loss", "seeds", "student mIoU % (mean ± std)", "Δ vs baseline per seed (std), above on",
              "gap closure %", "gap closure % at matched time", "Δ vs matched-time baseline per seed (std), above on",
              "s/step", "s/run"]
    versions = table["run"].get("versions", {})
    lines = [
        f"# Sweep {Path(table['sweep']).name}",
        "",
        table["description"].strip(),
        "",
        f"Teacher (trained once, `{table['teacher']['run_dir']}/`): val mIoU {table['teacher']['miou']:.2f} %.",
        f"Student seeds: {table['seeds']}. Gap closure = (student - baseline) / (teacher - baseline), "
        f"from the variants' mean mIoU; std is the sample standard deviation over seeds. Δ per seed = the variant "
        f"minus the baseline on each student seed (the same initialisation and batch order): its mean, the std of "
        f"the differences, and on how many seeds the variant is above. "
        f"s/step = mean seconds per training step (the teacher's forward pass included where a method reads "
        f"the teacher's outputs); s/run = mean training seconds per run. A `<baseline>.time_of_<variant>` row is "
        f"the baseline trained for as many epochs as fit in that variant's measured training time (distillation "
        f"steps cost more); gap closure at matched time is measured against it.",
        f"Base config: `{table.get('base', '-')}`. Overrides applied to every variant: "
        f"{', '.join(f'`{o}`' for o in table.get('overrides', [])) or 'none'}.",
        "",
        markdown_table(header, rows),
        "",
        f"Per-seed figures and run folders: `sweep.json`. Dataset fingerprint "
        f"`{str(table['run'].get('dataset_fingerprint', '-'))[:12]}`, git `{str(table['run'].get('git_sha', '-'))[:10]}`, "
        f"torch {versions.get('torch', '-')}.",
        "",
    ]
    return "\n".join(lines).replace("\n\n\n\n", "\n\n")  # no gap where there is no description
