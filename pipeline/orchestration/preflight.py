"""The checks a config needs the registries for, run once before any work (``run``, ``status``,
``sweep``): every name a registry defines is known, each distillation method's options are valid,
the dataset's targets fit the task, and the models and methods can be built together.

The schema (:mod:`pipeline.config`) checks everything else when the config loads; it imports no
registry, so reading a config or gating a run stays free of torch.
"""

from __future__ import annotations

from pipeline.builders import check_distillation
from pipeline.config import ConfigError, PipelineConfig
from pipeline.data import DATASETS, dataset_task
from pipeline.distill.registry import validate_method_spec
from pipeline.models.backbones import BACKBONES
from pipeline.tasks import TASKS


def preflight(config: PipelineConfig, source: str = "config") -> None:
    """Raise :class:`ConfigError` listing every problem (``source`` names the file in the message);
    building the models takes about a second."""
    problems = registry_problems(config)
    if problems:
        raise ConfigError("\n".join([f"{source}: invalid configuration", *(f"  - {p}" for p in problems)]))
    check_distillation(config)


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
