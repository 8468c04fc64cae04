"""The checks a config needs the registries for, run once before any work (``run``, ``status``,
``sweep``): every name a registry defines is known, each distillation method's options are valid,
the dataset's targets fit the task, a real dataset's files read cleanly (``run``), and the models
and methods can be built together.

The schema (:mod:`pipeline.config`) checks everything else when the config loads; it imports no
registry, so reading a config or gating a run stays free of torch.
"""

from __future__ import annotations

from pipeline.builders import check_distillation
from pipeline.config import ConfigError, PipelineConfig
from pipeline.data import DATASETS, dataset_fingerprint, dataset_task
from pipeline.data.check import check_dataset_files
from pipeline.distill.registry import validate_method_spec
from pipeline.models.backbones import BACKBONES
from pipeline.tasks import TASKS


def preflight(config: PipelineConfig, source: str = "config", scan_data: bool = False) -> None:
    """Raise :class:`ConfigError` listing every problem (``source`` names the file in the message),
    or the dataset's :class:`DatasetLayoutError`; building the models takes about a second.
    ``scan_data`` (``run``): also read every sample of a real dataset once, listing all bad files."""
    problems = registry_problems(config)
    if problems:
        raise ConfigError("\n".join([f"{source}: invalid configuration", *(f"  - {p}" for p in problems)]))
    if scan_data:
        check_dataset(config)
    check_distillation(config)


def check_dataset(config: PipelineConfig) -> None:
    """Fail before any work when a real dataset's folder is missing, mis-structured or holds bad samples."""
    read = check_dataset_files(config.data)  # every problem at once, before any training
    if read:
        print(f"data check: {read} samples of {config.data.root} read cleanly")
    dataset_fingerprint(config.data)  # lists both splits and reads the class list


def registry_problems(config: PipelineConfig) -> list[str]:
    """What the registries reject, one line per problem, each naming its key."""
    named = [("task", TASKS, config.task), ("data.dataset", DATASETS, config.data.dataset),
             ("teacher.model.backbone", BACKBONES, config.teacher.model.backbone),
             ("student.model.backbone", BACKBONES, config.student.model.backbone)]
    problems = [f"{key}: {registry.unknown(name)}" for key, registry, name in named if name not in registry]
    for index, spec in enumerate(config.distill.methods):
        try:
            validate_method_spec(spec, where=f"distill.methods[{index}]")
        except ValueError as exc:
            problems.append(str(exc))
    if config.task in TASKS and config.data.dataset in DATASETS:
        data_task = dataset_task(config.data.dataset)
        if data_task != config.task:
            problems.append(f"data.dataset '{config.data.dataset}' is a {data_task} dataset but task is "
                            f"'{config.task}'; set task: {data_task} or choose a {config.task} dataset")
    return problems
