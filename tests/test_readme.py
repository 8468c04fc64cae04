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
