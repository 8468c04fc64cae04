"""Command line: parse, call, print. ``python -m pipeline run|status|methods|sweep|bench|gate|sensitivity ...``"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.errors import DatasetLayoutError, PipelineError, StageFailed
from pipeline.orchestration.gate import FINGERPRINTS, GateError
from pipeline.orchestration.summary import backends_table, gap_closure, models_table, status_notes

if TYPE_CHECKING:
    from pipeline.orchestration.runner import Runner

# Only what every command needs is imported here: `gate` and `--help` must not pay for torch.

DEFAULT_OUT_ROOT = Path("exported")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    debug_help = "show the traceback of an error (or set PIPELINE_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # Accepted after the command too; SUPPRESS keeps a sub-command from resetting the top-level flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common],
                                help="run the pipeline, skipping stages that are up to date")
    _add_config_args(run)
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="re-run STAGE even if up to date (repeatable; 'all' for every stage)")
    run.add_argument("--until", metavar="STAGE", help="stop after STAGE")

    status = commands.add_parser("status", parents=[common],
                                help="show which stages are up to date and why not")
    _add_config_args(status)

    commands.add_parser("methods", parents=[common],
                                help="list the distillation methods and their options")

    sweep = commands.add_parser("sweep", parents=[common],
                                help="train the teacher once, then the student over a grid of variants x seeds")
    sweep.add_argument("config", type=Path, help="sweep file, e.g. configs/sweeps/ablation_tat.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides applied to every variant")
    sweep.add_argument("--out", type=Path, help="sweep folder (default: exported/sweeps/<sweep file name>, "
                       "with -<base config name> under --base)")
    sweep.add_argument("--base", type=Path, metavar="CONFIG",
                       help="pipeline config in place of the sweep file's base: the same variants in another regime")
    sweep.add_argument("--seeds", type=int, help="student seeds per variant (default: the sweep file's seeds)")
    sweep.add_argument("--variants", nargs="+", metavar="NAME", help="run only these variants (the baseline always runs too)")
    sweep.add_argument("--first-seed", type=int, metavar="S",
                       help="student seeds S, S+1, ... (default run.seed); the teacher stays the same, so a variant "
                            "chosen on seeds 0-2 can be re-tested on held-out seeds")
    sweep.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="train N runs at a time in separate processes, CPU threads shared evenly (default 1)")
    bench = commands.add_parser("bench", parents=[common],
                                help="latency of any ONNX file in ONNX Runtime (trtexec style)")
    bench.add_argument("model", type=Path, help="an .onnx file")
    bench.add_argument("--shape", action="append", default=[], help="input shape NxCxHxW (repeatable)")
    bench.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"], help="ONNX Runtime providers")
    bench.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--min-iters", type=int, default=50)
    bench.add_argument("--min-seconds", type=float, default=2.0)
    bench.add_argument("--out", type=Path, help="folder for bench.{json,csv,md}")
    sensitivity = commands.add_parser(
        "sensitivity", parents=[common],
        help="per-node INT8 sensitivity of a finished run, and which nodes to keep in float")
    sensitivity.add_argument("run_dir", type=Path, help="run folder with export_onnx/student.onnx, e.g. exported/smoke")
    sensitivity.add_argument("--mode", choices=("keep-one-float", "quantize-one"), default="keep-one-float",
                             help="keep-one-float: full INT8 but one node in float, gain vs INT8 (default); "
                                  "quantize-one: only one node in INT8, loss vs FP32")
    sensitivity.add_argument("--nodes", type=_positive, metavar="N", help="measure only the first N quantized nodes")
    sensitivity.add_argument("--val-images", type=_positive, metavar="N",
                             help="score on the first N val images (default: validate.max_images, as validate does)")
    sensitivity.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                             help="time each model's p50 in ONNX Runtime (default on)")
    sensitivity.add_argument("--threads", type=_positive, help="intra-op threads (default: the run's benchmark.threads)")
    sensitivity.add_argument("--iters", type=_positive, default=20, help="timed calls per model (default 20)")
    sensitivity.add_argument("--out", type=Path, help="folder for sensitivity.{json,csv,md} (default: RUN_DIR/sensitivity)")
    gate = commands.add_parser("gate", parents=[common],
                                help="compare a run's metrics with a baseline; exit 1 on any regression")
    gate.add_argument("run_dir", type=Path, help="run folder holding metrics.json, e.g. exported/smoke")
    gate.add_argument("--baseline", type=Path, required=True, help="baseline file (.json, .yaml)")
    gate.add_argument("--write-baseline", action="store_true",
                      help="write the baseline from this run instead of gating (review and commit it)")
    gate.add_argument("--ignore-fingerprint", action="append", default=[], choices=FINGERPRINTS,
                      help="report a differing config/dataset/framework/hardware fingerprint as a warning, not a failure")
    gate.add_argument("--miou-tolerance", type=float, default=None, metavar="POINTS",
                      help="with --write-baseline: mIoU points a model or backend may lose (default 0.5)")
    gate.add_argument("--no-latency-ratios", action="store_true",
                      help="with --write-baseline: leave out the backend/PyTorch p50 latency ratios")
    gate.add_argument("--spread-run", action="append", default=[], type=Path, metavar="RUN_DIR",
                      help="with --write-baseline: the same config run under another kernel set or thread count "
                           "(repeatable); trained numbers get a tolerance measured from these runs' spread")
    gate.add_argument("--expect-pass", action="store_true",
                      help="with --write-baseline: where a backend failed validation or export, write a check that "
                           "it passes (the gate fails until it does) instead of refusing")
    gate.add_argument("--latency-ratio-max", type=float, default=None, metavar="X",
                      help="with --write-baseline: bound each backend/PyTorch p50 ratio by X instead of "
                           "the measured ratio (noisy CI machines)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/default.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. distill.ce_weight=0.5")
    parser.add_argument("--out", type=Path, help="run folder (default: exported/<run.name>)")


def run_dir_for(config: PipelineConfig, out: Path | None) -> Path:
    return out if out is not None else DEFAULT_OUT_ROOT / config.run.name


def make_runner(config: PipelineConfig, out: Path | None) -> "Runner":
    from pipeline.orchestration.runner import Runner
    from stages import STAGES

    return Runner(config, run_dir_for(config, out), STAGES)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import distributed
    from pipeline.orchestration.preflight import preflight

    config = load_config(args.config, args.overrides)
    preflight(config, str(args.config), scan_data=True)
    # Under torchrun: join the process group (nccl on CUDA, gloo on CPU); a no-op for one process.
    distributed.init_from_env("cpu" if config.run.device == "cpu" else None)
    try:
        runner = make_runner(config, args.out)
        metrics = runner.run(force=args.force, until=args.until)
        main = distributed.is_main()
        distributed.barrier()  # every rank leaves together once rank 0 has finished the last stage
    finally:
        distributed.shutdown()
    if main:
        print_summary(metrics, runner.run_dir, args.config)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.orchestration.preflight import preflight

    config = load_config(args.config, args.overrides)
    preflight(config, str(args.config))
    runner = make_runner(config, args.out)
    print(f"run folder: {runner.run_dir}")
    width = max(len(stage.name) for stage in runner.stages)
    for plan in runner.plan():
        print(f"  {plan.stage:<{width}}  {plan.action:<11}  {plan.reason}")
    return 0


def cmd_methods(_: argparse.Namespace) -> int:
    from pipeline.distill import available_methods

    for name, cls in available_methods().items():
        print(f"{name:<14} {cls.summary}")
        print(f"{'':<14}   weight = {cls.default_weight:g} (default)")
        for key, field in cls.Options.model_fields.items():
            default = list(field.default) if isinstance(field.default, tuple) else field.default
            print(f"{'':<14}   {key} = {default!r}" + (f"  # {field.description}" if field.description else ""))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.orchestration.sweep import run_sweep, sweep_markdown

    table = run_sweep(args.config, out=args.out, seeds=args.seeds, overrides=args.overrides, variants=args.variants,
                      jobs=args.jobs, first_seed=args.first_seed, base=args.base)
    print()
    print(sweep_markdown(table))
    print(f"sweep folder: {table['out']}  (sweep.md, sweep.json, one run folder per variant x seed)")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from pipeline.orchestration.gate import MIOU_ABS_TOL, format_table, gate, write_baseline

    if args.write_baseline:
        tolerance = MIOU_ABS_TOL if args.miou_tolerance is None else args.miou_tolerance
        baseline = write_baseline(args.run_dir, args.baseline, tuple(args.spread_run), miou_abs_tol=tolerance,
                                  latency_ratios=not args.no_latency_ratios,
                                  latency_ratio_max=args.latency_ratio_max, expect_pass=args.expect_pass)
        print(f"wrote {args.baseline}: {len(baseline.checks)} checks from {args.run_dir}; review the tolerances "
              f"and commit it")
        return 0
    result = gate(args.run_dir, args.baseline, ignore_fingerprints=tuple(args.ignore_fingerprint))
    print(format_table(result))
    return 0 if result.passed else 1


def print_summary(metrics: dict, run_dir: Path, config_path: Path) -> None:
    print()
    print(models_table(metrics))
    closure = gap_closure(metrics)
    if closure is not None:
        print(f"\ndistillation closed {closure:.1f}% of the teacher-baseline gap")
    if metrics.get("backends"):
        print()
        print(backends_table(metrics))
        for note in status_notes(metrics):
            print(f"  {note}")
    print(f"\nrun folder: {run_dir}  (metrics.json, report/report.md, export_onnx/student.onnx)")
    print("next:")
    print(f"  python -m pipeline status {config_path} --out {run_dir}   # what is up to date")
    print(f"  less {run_dir}/report/report.md                                # the report")


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.measurement.bench import BenchError, run_bench

    try:
        _, table = run_bench(args.model, args.shape, args.providers, args.threads, args.warmup, args.min_iters,
                             args.min_seconds, args.out)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        print(f"written: {args.out}/bench.json, bench.csv, bench.md")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from pipeline.measurement.sensitivity import SensitivityOptions, run_sensitivity, suggestion_text

    options = SensitivityOptions(mode=args.mode, max_nodes=args.nodes, val_images=args.val_images,
                                 latency=args.latency, threads=args.threads, iters=args.iters)
    report = run_sensitivity(args.run_dir, options, out=args.out)
    label = report.context["metric_label"]
    print()
    print(f"most sensitive nodes ({report.context['sorted_by']}):")
    for row in [r for r in report.rows if r["kind"] == "node"][:5]:
        print(f"  {row['name']:<32} {row['op_type'] or '':<10} {label} {row['metric']:.4f}  "
              f"{row['delta_vs_int8']:+.4f} vs INT8  {row['delta_vs_fp32']:+.4f} vs FP32  {row['module'] or ''}")
    if report.suggestion is not None:
        print()
        print(suggestion_text(report.context["suggestion"], label))
    print(f"\nwritten: {', '.join(str(p) for p in report.paths)}  ({report.context['seconds']} s)")
    return 0


COMMANDS = {"run": cmd_run, "status": cmd_status, "methods": cmd_methods, "sweep": cmd_sweep, "bench": cmd_bench,
            "gate": cmd_gate, "sensitivity": cmd_sensitivity}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options too (`run cfg --out x a.b=1`): argparse leaves those unparsed.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    debug = args.debug or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 1
    except Exception as exc:  # the one error boundary: one message, exit 2; the traceback only when asked
        if debug:
            raise
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2


USER_ERRORS = (ConfigError, PipelineError, DatasetLayoutError, GateError)


def error_message(exc: Exception) -> str:
    """What went wrong and what to do, for any exception that reaches the command line."""
    if isinstance(exc, StageFailed):
        return (f"{exc}\n  finished stages are kept and this stage's partial output is not taken for done; "
                "fix the cause and run the same command again (--debug for the traceback)")
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename} (--debug for the traceback)"
    return f"{type(exc).__name__}: {exc} (unexpected; --debug shows the traceback to report)"


if __name__ == "__main__":
    sys.exit(main())
