"""The code stays legible: no dead code (vulture at 80% confidence, where its findings are certain:
unused imports, unreachable code, unused arguments and locals), imports that follow the layers,
no import cycle, and a config and a gate that do not need torch."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_vulture_finds_no_dead_code_in_the_product():
    found = subprocess.run([sys.executable, "-m", "vulture", "pipeline", "stages", "--min-confidence", "80"],
                           cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0 and not found.stdout, found.stdout + found.stderr


# ------------------------------------------------------------------------------ import layers
# Lower layers never import higher ones (a module may import its own layer and those below):
# the config schema is a leaf; data, models and distillation build on it; training, deployment,
# runtimes and measurement on those; stages on all of them; orchestration (runner, sweep, gate,
# command line, benchmark scripts) on top. A new module must be placed in a layer here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("pipeline", "pipeline.config", "pipeline.registry", "pipeline.artifacts", "pipeline.errors", "pipeline.status",
     "pipeline.model_files", "pipeline.metrics_contract"),
    ("pipeline.data*", "pipeline.models*", "pipeline.distill*", "pipeline.tasks*", "pipeline.metrics",
     "pipeline.environment", "pipeline.distributed"),
    ("pipeline.training", "pipeline.builders", "pipeline.deployment*", "pipeline.runtime*", "pipeline.measurement*",
     "pipeline.edge*", "pipeline.reporting*", "pipeline.orchestration", "pipeline.orchestration.stage",
     "pipeline.orchestration.code_deps", "pipeline.orchestration.preflight", "pipeline.orchestration.summary"),
    ("stages*",),
    ("pipeline.orchestration.runner", "pipeline.orchestration.sweep", "pipeline.orchestration.gate",
     "pipeline.orchestration.cli", "pipeline.__main__", "pipeline.benchmarks*"),
)


def project_modules() -> dict[str, Path]:
    modules = {}
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (function-level imports included;
    ``from package import submodule`` counts as the submodule; ``TYPE_CHECKING`` blocks are left out)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test).endswith("TYPE_CHECKING") for node in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(name: str) -> int | None:
    for index, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return index
    return None


def test_every_module_has_a_layer():
    assert not [name for name in project_modules() if layer_of(name) is None]


def test_no_module_imports_from_a_higher_layer():
    modules = project_modules()
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, path in modules.items() for target in sorted(imports_of(name, path, modules))
              if layer_of(target) > layer_of(name)]
    assert not upward, upward


def test_no_import_cycle_among_project_modules():
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    on_path: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in on_path:
            return on_path[on_path.index(name):] + [name]
        if name in done:
            return None
        on_path.append(name)
        for target in sorted(graph[name]):
            cycle = visit(target)
            if cycle:
                return cycle
        on_path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        assert cycle is None, " -> ".join(cycle)


def test_reading_a_config_and_gating_a_run_import_no_torch():
    probe = ("import sys; from pipeline.config import load_config; load_config('configs/default.yaml'); "
             "import pipeline.orchestration.gate, pipeline.orchestration.cli; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
