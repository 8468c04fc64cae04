"""One table, two renderings: Markdown (terminal, report.md, sweep.md) and HTML (report.html).

Cells may hold user data (class names from a dataset's classes.txt, file names, error messages),
so both renderings escape them: a ``|`` cannot split a Markdown row, a ``<script>`` stays text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_MARKDOWN_SPECIAL = str.maketrans({"\\": "\\\\", "|": "\\|", "<": "\\<", ">": "\\>", "\n": " ", "\r": " "})


def format_cell(value: Any) -> str:
    """None as "-", floats to two decimals (three significant digits below 0.01)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)


def markdown_cell(value: Any) -> str:
    return format_cell(value).translate(_MARKDOWN_SPECIAL)


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(markdown_cell(cell) for cell in self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(markdown_cell(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        if not self.rows:
            return '<p class="note">nothing to show</p>'
        head = "".join(f"<th>{html.escape(format_cell(cell))}</th>" for cell in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(cell))}</td>" for cell in row) + "</tr>"
                       for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        return self.markdown()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return Table(header, rows).markdown()
