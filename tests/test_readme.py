"""The documentation stays true: docs/tat.md's Python example runs as written, and README.md links it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAT_DOC = (ROOT / "docs" / "tat.md").read_text()


def test_the_tat_training_loop_example_runs():
    code = re.search(r"```python\n(.*?)```", TAT_DOC, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/tat.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    assert namespace["loss"].ndim == 0 and namespace["both"](namespace["f_s"], namespace["f_t"]).ndim == 0


def test_the_readme_links_every_document_it_names():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)\)", readme):
        assert (ROOT / link).is_file(), link


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Markdown link targets that are paths inside the repository (no scheme, no bare anchor)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = [f"{doc.relative_to(ROOT)} -> {link}" for doc in DOCUMENTS for link in relative_links(doc.read_text())
              if not (doc.parent / link).exists()]
    assert not broken, broken


def test_no_document_config_or_source_file_points_outside_the_repository():
    files = [*DOCUMENTS, *(ROOT / "configs").rglob("*.yaml"), *(ROOT / "pipeline").rglob("*.py"),
             *(ROOT / "stages").rglob("*.py")]
    outside = re.compile(r"\.\./shared|/work/|\.\./\.\./")
    hits = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in files
            for match in [outside.search(path.read_text())] if match]
    assert not hits, hits
