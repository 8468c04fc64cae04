"""CI accuracy gate: compare a run's metrics.json with a baseline file; any regression fails.

A baseline (JSON, or YAML by extension) holds the fingerprints of the run it was written from
and a list of checks. A check names a metric (a dotted key of metrics.json, or arithmetic over
such keys: ``backends.onnxruntime.latency_ms.p50 / backends.pytorch.latency_ms.p50``) and one or
more conditions:

* ``baseline`` + ``direction`` + ``abs_tol`` / ``rel_tol``: one-sided; the metric may get worse
  than the baseline value by at most ``max(abs_tol, rel_tol * |baseline|)``;
* ``min`` / ``max``: fixed bounds (parity: ``max_abs_diff <= 1e-4``);
* ``equals``: an exact value (``status == "passed"``).

A missing metric fails. A check on a backend that this run reports as ``skipped`` (TensorRT on a
machine without a GPU) is not gated unless the check says ``required: true``. A run whose config,
dataset or framework (torch release) fingerprint differs from the baseline's fails (apples to
apples) unless that fingerprint is explicitly ignored; the metric checks run either way, so the
table still says which numbers moved. A different hardware fingerprint (another CPU type or kernel
set) is a warning that names both: seeded runs repeat bit for bit only on one kernel set, so a
baseline meant to travel gates its trained numbers with tolerances measured across kernel sets
(:func:`spread_tolerances`, ``--spread-run``).
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import math
import operator
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.metrics_contract import MODEL_ROLES
from pipeline.status import Status

Direction = Literal["higher_is_better", "lower_is_better"]
FINGERPRINTS = ("config", "dataset", "framework", "hardware")
BASELINE_SCHEMA = 1

# Defaults written by --write-baseline; the file is meant to be edited.
MIOU_ABS_TOL = 0.5  # mIoU points a model or backend may lose
LOSS_REL_TOL = 0.05  # val cross-entropy may grow 5%
PARITY_ABS_TOL = 1e-4  # max |logit difference| may grow by this much ...
PARITY_REL_TOL = 1.0  # ... or double, whichever is larger
LATENCY_RATIO_REL_TOL = 1.0  # a backend's p50 relative to PyTorch eager may double (timings are noisy)


class GateError(ValueError):
    """A malformed baseline or run folder (not a regression): fix the file."""


@dataclass(frozen=True)
class Check:
    metric: str
    baseline: Any = None
    direction: Direction | None = None
    abs_tol: float | None = None
    rel_tol: float | None = None
    min: float | None = None
    max: float | None = None
    equals: Any = None
    required: bool = False  # gate it even when the run reports its backend as skipped
    note: str | None = None

    def __post_init__(self) -> None:
        where = f"check '{self.metric}'"
        if self.baseline is not None and self.direction not in ("higher_is_better", "lower_is_better"):
            raise GateError(f"{where}: a baseline value needs direction higher_is_better or lower_is_better")
        if self.baseline is not None and self.abs_tol is None and self.rel_tol is None:
            raise GateError(f"{where}: a baseline value needs abs_tol and/or rel_tol (use 0 for exact)")
        if self.baseline is None and self.min is None and self.max is None and self.equals is None:
            raise GateError(f"{where}: give a baseline value, min, max or equals")
        for name in ("abs_tol", "rel_tol"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise GateError(f"{where}: {name} must be >= 0 (tolerances are one-sided), got {value}")

    def allowed_slack(self) -> float:
        return max(self.abs_tol or 0.0, (self.rel_tol or 0.0) * abs(float(self.baseline)))

    def limit(self) -> float | None:
        """The worst value the baseline condition accepts."""
        if self.baseline is None:
            return None
        sign = -1.0 if self.direction == "higher_is_better" else 1.0
        return float(self.baseline) + sign * self.allowed_slack()

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items()
                if value is not None and not (key == "required" and value is False)}


@dataclass(frozen=True)
class Baseline:
    fingerprints: dict[str, str]
    checks: tuple[Check, ...]
    source: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # the comparable config, to name what differs on a mismatch

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema": BASELINE_SCHEMA, "source": self.source, "fingerprints": self.fingerprints,
                                "checks": [check.to_dict() for check in self.checks]}
        if self.config is not None:
            data["config"] = self.config
        return data


@dataclass(frozen=True)
class Row:
    metric: str
    baseline: str
    now: str
    tolerance: str
    verdict: Literal["pass", "FAIL", "skip", "warn"]
    reason: str = ""


@dataclass(frozen=True)
class GateResult:
    rows: tuple[Row, ...]

    @property
    def failures(self) -> list[Row]:
        return [row for row in self.rows if row.verdict == "FAIL"]

    @property
    def passed(self) -> bool:
        return not self.failures


# ------------------------------------------------------------------------------- files
def load_baseline(path: Path) -> Baseline:
    path = Path(path)
    if not path.is_file():
        raise GateError(f"baseline {path} does not exist; write one from a good run with "
                        f"`python -m pipeline gate RUN_DIR --baseline {path} --write-baseline`")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise GateError(f"baseline {path} cannot be parsed: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list):
        raise GateError(f"baseline {path} must be a mapping with a 'checks' list")
    checks = []
    for index, item in enumerate(data["checks"]):
        if not isinstance(item, dict) or "metric" not in item:
            raise GateError(f"baseline {path}: checks[{index}] must be a mapping with a 'metric' key")
        unknown = set(item) - set(Check.__dataclass_fields__)
        if unknown:
            raise GateError(f"baseline {path}: checks[{index}] has unknown keys {sorted(unknown)}; "
                            f"valid keys are {sorted(Check.__dataclass_fields__)}")
        checks.append(Check(**item))
    return Baseline(fingerprints=dict(data.get("fingerprints") or {}), checks=tuple(checks),
                    source=dict(data.get("source") or {}), config=data.get("config"))


def save_baseline(baseline: Baseline, path: Path) -> None:
    from pipeline.artifacts import atomic_write_text

    path = Path(path)
    data = baseline.to_dict()
    if path.suffix in (".yaml", ".yml"):
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    else:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(metrics.json, the run's comparable config or None when config.yaml is absent)."""
    from pipeline.config import ConfigError, comparable_config, validate_config

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise GateError(f"{metrics_path} does not exist; run the pipeline first "
                        f"(python -m pipeline run CONFIG --out {run_dir})")
    metrics = json.loads(metrics_path.read_text())
    config = None
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            config = comparable_config(validate_config(yaml.safe_load(config_path.read_text()) or {}, str(config_path)))
        except ConfigError:
            config = None  # written by another version of the schema: the fingerprint still decides
    return metrics, config


# ------------------------------------------------------------------------------ metrics
_KEY = re.compile(r"[A-Za-z_][\w\-]*(?:\.[\w\-]+)+")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class MissingMetric(KeyError):
    pass


def lookup(metrics: dict[str, Any], key: str) -> Any:
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise MissingMetric(key)
        node = node[part]
    return node


def metric_keys(expression: str) -> list[str]:
    """The metrics.json keys an expression reads (a plain key reads itself)."""
    return _KEY.findall(expression)


def resolve(metrics: dict[str, Any], expression: str) -> Any:
    """A dotted key's value, or the value of + - * / arithmetic over dotted keys and numbers.

    Write spaces around operators: ``a.b - c.d`` (``-`` may appear inside a backend's name).
    """
    keys = metric_keys(expression)
    if keys == [expression.strip()]:
        return lookup(metrics, expression.strip())
    names: dict[str, float] = {}

    def substitute(match: re.Match[str]) -> str:
        name = f"_v{len(names)}"
        value = lookup(metrics, match.group(0))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise GateError(f"'{match.group(0)}' is {value!r}, not a number, in expression '{expression}'")
        names[name] = float(value)
        return name

    try:
        tree = ast.parse(_KEY.sub(substitute, expression), mode="eval")
    except SyntaxError:
        raise GateError(f"cannot parse metric expression '{expression}'; use dotted keys, numbers, + - * / "
                        f"and parentheses, with spaces around operators") from None
    return _evaluate(tree.body, names, expression)


def _evaluate(node: ast.AST, names: dict[str, float], expression: str) -> float:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, names, expression), _evaluate(node.right, names, expression)
        if isinstance(node.op, ast.Div) and right == 0:
            return math.nan
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, names, expression)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    raise GateError(f"metric expression '{expression}' may only use dotted keys, numbers, + - * / and parentheses")


def skipped_backend(metrics: dict[str, Any], expression: str) -> tuple[str, str] | None:
    """(backend, reason) when the expression reads a backend this run reports as skipped."""
    for key in metric_keys(expression):
        parts = key.split(".")
        if parts[0] == "backends" and len(parts) > 1:
            backend = metrics.get("backends", {}).get(parts[1])
            if isinstance(backend, dict) and backend.get("status") == Status.SKIPPED:
                return parts[1], str(backend.get("reason", "no reason given"))
    return None


# ---------------------------------------------------------------------------- evaluation
def evaluate_gate(
    metrics: dict[str, Any],
    baseline: Baseline,
    *,
    run_config: dict[str, Any] | None = None,
    ignore_fingerprints: tuple[str, ...] = (),
) -> GateResult:
    rows = [_fingerprint_row(name, metrics, baseline, run_config, name in ignore_fingerprints)
            for name in FINGERPRINTS if name in baseline.fingerprints]
    rows += [_check_row(check, metrics) for check in baseline.checks]
    return GateResult(tuple(rows))


def _fingerprint_row(name: str, metrics: dict[str, Any], baseline: Baseline, run_config: dict[str, Any] | None,
                     ignored: bool) -> Row:
    expected = baseline.fingerprints[name]
    now = metrics.get("run", {}).get(f"{name}_fingerprint")
    label = f"run.{name}_fingerprint"
    if now == expected:
        return Row(label, _short_hash(expected), _short_hash(now), "equal", "pass")
    reason = f"{name} fingerprint differs from the baseline's"
    if name == "framework":
        reason += f" ({now} vs {expected}: trained numbers are exact to the framework release)"
    if name == "hardware":
        reason += (f" ({now} vs {expected}: trained numbers move with the kernels; they are gated with the "
                   f"baseline's tolerances, measured across kernel sets when it was written with --spread-run)")
        return Row(label, expected, str(now), "equal", "warn", reason)
    if name == "config" and run_config is not None and baseline.config is not None:
        changed = config_differences(baseline.config, run_config)
        if changed:
            reason += f" (changed: {', '.join(changed[:6])}{', ...' if len(changed) > 6 else ''})"
    if ignored:
        return Row(label, _short_hash(expected), _short_hash(str(now)), "equal", "warn", reason + "; ignored on request")
    hint = (f"; compare like with like, or pass --ignore-fingerprint {name} if the change is intended, "
            f"or write a new baseline with --write-baseline")
    return Row(label, _short_hash(expected), _short_hash(str(now)), "equal", "FAIL", reason + hint)


def _short_hash(value: str) -> str:
    """A sha256 hex digest cut to 12 characters for the table; readable fingerprints stay whole."""
    return value[:12] if re.fullmatch(r"[0-9a-f]{64}", value) else value


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def _check_row(check: Check, metrics: dict[str, Any]) -> Row:
    tolerance = describe_tolerance(check)
    baseline_text = _fmt(check.baseline if check.baseline is not None else check.equals)
    skipped = skipped_backend(metrics, check.metric)
    if skipped and not check.required:
        return Row(check.metric, baseline_text, Status.SKIPPED, tolerance, "skip",
                   f"backend {skipped[0]} skipped on this run ({skipped[1]}); not required")
    if skipped:
        return Row(check.metric, baseline_text, Status.SKIPPED, tolerance, "FAIL",
                   f"backend {skipped[0]} is required but this run skipped it: {skipped[1]}")
    try:
        value = resolve(metrics, check.metric)
    except MissingMetric as exc:
        return Row(check.metric, baseline_text, "missing", tolerance, "FAIL",
                   f"{exc.args[0]} is not in metrics.json (did the stage that writes it run?)")
    problems = violations(check, value)
    return Row(check.metric, baseline_text, _fmt(value), tolerance, "FAIL" if problems else "pass",
               "; ".join(problems))


def violations(check: Check, value: Any) -> list[str]:
    """Why ``value`` fails ``check`` (empty when it passes)."""
    if check.equals is not None:
        return [] if value == check.equals else [f"{check.metric} is {value!r}, expected {check.equals!r}"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(float(value)):
        return [f"{check.metric} is {value!r}, not a number"]
    value = float(value)
    problems = []
    limit = check.limit()
    if limit is not None:
        worse = value < limit if check.direction == "higher_is_better" else value > limit
        if worse:
            change = value - float(check.baseline)
            problems.append(f"{check.metric} regressed: {_fmt(value)} vs baseline {_fmt(check.baseline)} "
                            f"({change:+.4g}; allowed {'>=' if check.direction == 'higher_is_better' else '<='} "
                            f"{_fmt(limit)})")
    if check.min is not None and value < check.min:
        problems.append(f"{check.metric} = {_fmt(value)} is below the minimum {_fmt(check.min)}")
    if check.max is not None and value > check.max:
        problems.append(f"{check.metric} = {_fmt(value)} is above the maximum {_fmt(check.max)}")
    return problems


def describe_tolerance(check: Check) -> str:
    parts = []
    if check.baseline is not None:
        arrow = ">=" if check.direction == "higher_is_better" else "<="
        slack = []
        if check.abs_tol is not None:
            slack.append(f"{_fmt(check.abs_tol)} abs")
        if check.rel_tol is not None:
            slack.append(f"{check.rel_tol * 100:g}% rel")
        parts.append(f"{arrow} {_fmt(check.limit())} ({' | '.join(slack)})")
    if check.min is not None:
        parts.append(f">= {_fmt(check.min)}")
    if check.max is not None:
        parts.append(f"<= {_fmt(check.max)}")
    if check.equals is not None:
        parts.append(f"== {check.equals!r}")
    return ", ".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    value = float(value)
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.4f}".rstrip("0").rstrip(".")


def format_table(result: GateResult) -> str:
    header = ("metric", "baseline", "now", "tolerance", "verdict")
    body = [(row.metric, row.baseline, row.now, row.tolerance, row.verdict) for row in result.rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [header, tuple("-" * w for w in widths), *body]]
    notes = [f"  {row.verdict}: {row.reason}" for row in result.rows if row.reason and row.verdict != "pass"]
    if notes:
        lines += ["", *notes]
    failures = result.failures
    if failures:
        lines += ["", f"gate FAILED: {len(failures)} of {len(result.rows)} checks: "
                      + ", ".join(row.metric for row in failures)]
    else:
        lines += ["", f"gate passed: {sum(r.verdict == 'pass' for r in result.rows)} checks passed, "
                      f"{sum(r.verdict == 'skip' for r in result.rows)} skipped"]
    return "\n".join(lines)


# ------------------------------------------------------------------------ writing baselines
SPREAD_MARGIN = 1.5  # tolerance = this x the largest deviation seen across kernel sets and thread counts
SPREAD_MAY_DIFFER = ("run.threads",)  # a thread count, like a kernel set, changes the float sums' order


def depends_on_trained_weights(metric: str) -> bool:
    """Task metrics, losses and the parity of a quantized backend move with the trained weights,
    and so with the kernels that trained them; float parity and statuses do not."""
    return metric.endswith((".miou", ".val_loss")) or (metric.endswith(".max_abs_diff") and "int8" in metric)


def spread_tolerances(reference: dict[str, Any], others: list[dict[str, Any]], keys: list[str],
                      margin: float = SPREAD_MARGIN) -> dict[str, dict[str, float]]:
    """key -> {"deviation": largest |other - reference| over ``others``, "tolerance": margin x it}.

    ``others`` are metrics.json of the same config trained under other kernel sets and thread
    counts; a key missing from one of them is an error (the runs must be alike)."""
    spread = {}
    for key in keys:
        base = float(resolve(reference, key))
        deviations = []
        for index, other in enumerate(others):
            try:
                deviations.append(abs(float(resolve(other, key)) - base))
            except MissingMetric:
                raise GateError(f"spread run {index + 1} has no {key}; spread runs must be the same config") from None
        deviation = max(deviations, default=0.0)
        spread[key] = {"deviation": round(deviation, 6), "tolerance": round(margin * deviation, 6)}
    return spread


FAILED_STATUSES = (Status.VALIDATION_FAILED, Status.EXPORT_FAILED)


def failed_backends(metrics: dict[str, Any]) -> dict[str, str]:
    """Backend -> "status: reason" for every backend that ran and failed (skipped ones are not failures)."""
    return {name: f"{entry['status']}: {entry.get('reason') or 'no reason recorded'}"
            for name, entry in metrics.get("backends", {}).items()
            if isinstance(entry, dict) and entry.get("status") in FAILED_STATUSES}


def baseline_from_run(metrics: dict[str, Any], run_config: dict[str, Any] | None = None, *,
                      miou_abs_tol: float = MIOU_ABS_TOL, latency_ratios: bool = True,
                      latency_ratio_max: float | None = None,
                      spread_runs: list[dict[str, Any]] | None = None, expect_pass: bool = False) -> Baseline:
    """A baseline that holds this run's numbers, with the default tolerances above.

    Every model mIoU and val loss; for every backend the run did not skip: its status, mIoU and,
    against the PyTorch reference, its mIoU delta, parity and (optionally) its p50 latency ratio.
    Latency never appears as an absolute number: it depends on the machine. ``latency_ratio_max``
    replaces each ratio's baseline value by that fixed bound (1.0: "no slower than PyTorch"), for
    CI machines too noisy for anything tighter.

    ``spread_runs``: metrics of the same config trained under other kernel sets (and thread
    counts). Every check of a number that depends on the trained weights then gets, in place of the
    default, an absolute tolerance of :data:`SPREAD_MARGIN` times the largest deviation measured
    (never below the default), with the measurement in its note: a baseline that holds on any machine.

    A baseline never expects a failure: a backend whose validation or export failed is refused
    (:class:`GateError`), unless ``expect_pass``, which writes ``status == "passed"`` for it and
    leaves out its other numbers, so the gate fails until the backend passes.
    """
    failed = failed_backends(metrics)
    if failed and not expect_pass:
        listing = "; ".join(f"{name} ({reason})" for name, reason in failed.items())
        raise GateError(f"refusing to write a baseline that expects failures: {listing}. Fix the run first, or pass "
                        f"--expect-pass to write checks that fail until these backends pass")
    checks = _checks_from_run(metrics, miou_abs_tol, latency_ratios, latency_ratio_max, set(failed))
    run = metrics.get("run", {})
    fingerprints = {name: run[f"{name}_fingerprint"] for name in FINGERPRINTS if run.get(f"{name}_fingerprint")}
    source: dict[str, Any] = {"run": run.get("name"), "git_sha": run.get("git_sha"),
                              "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if spread_runs:
        keys = [check.metric for check in checks if check.baseline is not None and depends_on_trained_weights(check.metric)]
        spread = spread_tolerances(metrics, spread_runs, keys)
        checks = [_widened(check, spread[check.metric], len(spread_runs)) if check.metric in spread else check
                  for check in checks]
        source["spread_runs"] = [{"hardware_fingerprint": other.get("run", {}).get("hardware_fingerprint"),
                                  "threads": other.get("run", {}).get("threads")} for other in spread_runs]
    return Baseline(fingerprints=fingerprints, checks=tuple(checks), source=source, config=run_config)


def _widened(check: Check, spread: dict[str, float], runs: int) -> Check:
    default = check.allowed_slack()
    tolerance = max(spread["tolerance"], default)
    note = (f"abs_tol = max({SPREAD_MARGIN} x {_fmt(spread['deviation'])}, the largest deviation over {runs} runs "
            f"under other kernel sets and thread counts; default {_fmt(default)})")
    return Check(check.metric, check.baseline, check.direction, abs_tol=round(tolerance, 6), note=note)


def _checks_from_run(metrics: dict[str, Any], miou_abs_tol: float, latency_ratios: bool,
                     latency_ratio_max: float | None, failed: set[str] = frozenset()) -> list[Check]:
    checks: list[Check] = []
    for model in MODEL_ROLES:
        entry = metrics.get(model, {})
        if "miou" in entry:
            checks.append(Check(f"{model}.miou", entry["miou"], "higher_is_better", abs_tol=miou_abs_tol))
        if "val_loss" in entry:
            checks.append(Check(f"{model}.val_loss", entry["val_loss"], "lower_is_better", rel_tol=LOSS_REL_TOL))
    for flag in ("params_equal", "outputs_identical"):
        if flag in metrics.get("strip", {}):
            checks.append(Check(f"strip.{flag}", equals=metrics["strip"][flag]))
    backends = metrics.get("backends", {})
    for name, backend in backends.items():
        if not isinstance(backend, dict) or backend.get("status") == Status.SKIPPED:
            continue  # not gated; a GPU machine's baseline can add these with required: true
        prefix = f"backends.{name}"
        if name in failed:
            # .value: a plain string, as the baseline file holds it (YAML cannot write an enum).
            checks.append(Check(f"{prefix}.status", equals=Status.PASSED.value,
                                note=f"written while it was {backend['status']}: fails until it passes"))
            continue
        if "status" in backend:
            checks.append(Check(f"{prefix}.status", equals=backend["status"]))
        if "miou" in backend:
            checks.append(Check(f"{prefix}.miou", backend["miou"], "higher_is_better", abs_tol=miou_abs_tol))
        if "max_abs_diff" in backend:
            checks.append(Check(f"{prefix}.max_abs_diff", backend["max_abs_diff"], "lower_is_better",
                                abs_tol=PARITY_ABS_TOL, rel_tol=PARITY_REL_TOL))
        reference = backends.get("pytorch", {}).get("latency_ms", {}).get("p50")
        if latency_ratios and name != "pytorch" and reference and backend.get("latency_ms", {}).get("p50"):
            ratio_metric = f"{prefix}.latency_ms.p50 / backends.pytorch.latency_ms.p50"
            if latency_ratio_max is not None:
                checks.append(Check(ratio_metric, max=latency_ratio_max,
                                    note="latency depends on the machine: only a loose bound relative to PyTorch"))
            else:
                ratio = backend["latency_ms"]["p50"] / reference
                checks.append(Check(ratio_metric, round(ratio, 4), "lower_is_better", rel_tol=LATENCY_RATIO_REL_TOL,
                                    note="latency relative to PyTorch eager on the same machine; loose on purpose"))
    return checks


def gate(run_dir: Path, baseline_path: Path, *, ignore_fingerprints: tuple[str, ...] = ()) -> GateResult:
    metrics, run_config = read_run(run_dir)
    return evaluate_gate(metrics, load_baseline(baseline_path), run_config=run_config,
                         ignore_fingerprints=ignore_fingerprints)


def write_baseline(run_dir: Path, baseline_path: Path, spread_dirs: tuple[Path, ...] = (), **options: Any) -> Baseline:
    metrics, run_config = read_run(run_dir)
    spread_runs = []
    for spread_dir in spread_dirs:
        other, other_config = read_run(spread_dir)
        changed = [key for key in config_differences(run_config or {}, other_config or {})
                   if key not in SPREAD_MAY_DIFFER]
        if changed:
            raise GateError(f"spread run {spread_dir} differs from {run_dir} in {', '.join(changed[:6])}; spread runs "
                            f"train the same config (only {', '.join(SPREAD_MAY_DIFFER)} may differ)")
        other.setdefault("run", {})["threads"] = (other_config or {}).get("run", {}).get("threads")
        spread_runs.append(other)
    baseline = baseline_from_run(metrics, run_config, spread_runs=spread_runs or None, **options)
    save_baseline(baseline, baseline_path)
    return baseline
