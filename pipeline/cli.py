"""Command line: parse, call, print. ``python -m pipeline run|status|methods ...``"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.data.files import DatasetLayoutError
from pipeline.runner import PipelineError, Runner
from pipeline.summary import backends_table, gap_closure, models_table

DEFAULT_OUT_ROOT = Path("exported")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline, skipping stages that are up to date")
    _add_config_args(run)
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="re-run STAGE even if up to date (repeatable; 'all' for every stage)")
    run.add_argument("--until", metavar="STAGE", help="stop after STAGE")

    status = commands.add_parser("status", help="show which stages are up to date and why not")
    _add_config_args(status)

    commands.add_parser("methods", help="list the distillation methods and their options")
    return parser


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config, e.g. configs/default.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. distill.ce_weight=0.5")
    parser.add_argument("--out", type=Path, help="run folder (default: exported/<run.name>)")


def run_dir_for(config: PipelineConfig, out: Path | None) -> Path:
    return out if out is not None else DEFAULT_OUT_ROOT / config.run.name


def make_runner(config: PipelineConfig, out: Path | None) -> Runner:
    from stages import STAGES

    return Runner(config, run_dir_for(config, out), STAGES)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import distributed

    config = load_config(args.config, args.overrides)
    check_dataset(config)
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


def check_dataset(config: PipelineConfig) -> None:
    """Fail before any work when a real dataset's folder is missing or mis-structured."""
    from pipeline.data import dataset_fingerprint

    dataset_fingerprint(config.data)  # lists both splits and reads the class list


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    runner = make_runner(config, args.out)
    print(f"run folder: {runner.run_dir}")
    width = max(len(stage.name) for stage in runner.stages)
    for plan in runner.plan():
        print(f"  {plan.stage:<{width}}  {plan.action:<11}  {plan.reason}")
    return 0


def cmd_methods(_: argparse.Namespace) -> int:
    from pipeline.distill import available_methods

    for name, cls in available_methods().items():
        options = ", ".join(f"{key}={field.default!r}" for key, field in cls.Options.model_fields.items())
        print(f"{name:<14} {cls.summary}" + (f"\n{'':<14} options: {options}" if options else ""))
    return 0


def print_summary(metrics: dict, run_dir: Path, config_path: Path) -> None:
    print()
    print(models_table(metrics))
    closure = gap_closure(metrics)
    if closure is not None:
        print(f"\ndistillation closed {closure:.1f}% of the teacher-baseline gap")
    if metrics.get("backends"):
        print()
        print(backends_table(metrics))
    print(f"\nrun folder: {run_dir}  (metrics.json, report/report.md, export_onnx/student.onnx)")
    print("next:")
    print(f"  python -m pipeline status {config_path} --out {run_dir}   # what is up to date")
    print(f"  less {run_dir}/report/report.md                                # the report")


COMMANDS = {"run": cmd_run, "status": cmd_status, "methods": cmd_methods}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options too (`run cfg --out x a.b=1`): argparse leaves those unparsed.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, PipelineError, DatasetLayoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
