"""Which of the project's source files a module depends on: the transitive closure of its imports.

A stage's fingerprint hashes these files, so a change to any module a stage imports, directly or
through others, however deep, at module level or inside a function, makes the stage stale (as DVC
tracks a stage's dependencies). Read from the source with ``ast``, nothing is imported. Besides
``import`` statements, a string constant that names a project module by its dotted path (a
registry of lazily imported readers, say) counts as an import too.

A package's ``__init__`` counts only where the package itself is imported (``import pkg``,
``from pkg import name``), not where it is merely the parent of the module imported: Python runs it
then, but the importer uses none of it, and ``stages/__init__.py``, which lists every stage, would
otherwise make each stage depend on all the others.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("pipeline", "stages")


class UnknownModuleError(LookupError):
    """A module named as a dependency is not a project source file."""


def module_path(name: str, root: Path | None = None) -> Path | None:
    """The source file of project module ``name`` (a package: its __init__.py), or None."""
    root = root or PROJECT_ROOT
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name ``path`` (module ``name``) may import, project-local or not."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = _package_of(name, path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            # `from package import name` may name a submodule.
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value.split(".")[0] in PROJECT_PACKAGES and node.value.replace(".", "").isidentifier():
            found.add(node.value)  # a dotted module name, imported lazily (a bare "stages" is just a word)
    return found


def dependency_files(modules: Iterable[str], root: Path | None = None) -> list[Path]:
    """Source files of ``modules`` and of every project module they import, transitively, sorted."""
    root = root or PROJECT_ROOT
    pending: list[str] = []
    seen: dict[str, Path] = {}
    for name in modules:
        path = module_path(name, root) or _installed_source(name)
        seen[name] = path
        pending.extend(imported_names(name, path))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = module_path(name, root)
        if path is None:
            continue  # not project code, or `from module import function`
        seen[name] = path
        pending.extend(imported_names(name, path) - seen.keys())
    return sorted(set(seen.values()))


def _installed_source(name: str) -> Path:
    """A requested module outside the project's packages (a test's stage, say): wherever Python finds it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise UnknownModuleError(f"module '{name}' has no Python source to fingerprint")
    return Path(spec.origin)


def code_digest(modules: Iterable[str], root: Path | None = None) -> str:
    """sha256 over the source of ``modules`` and all they import from the project."""
    root = root or PROJECT_ROOT
    digest = hashlib.sha256()
    for path in dependency_files(modules, root):
        digest.update((str(path.relative_to(root)) if path.is_relative_to(root) else path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
