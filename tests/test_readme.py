"""README.md stays true: its Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_tat_training_loop_example_runs():
    section = README[README.index("## Use TaT in your own training loop"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    assert namespace["loss"].ndim == 0 and namespace["both"](namespace["f_s"], namespace["f_t"]).ndim == 0
