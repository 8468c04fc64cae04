"""Tables render the same rows as Markdown and HTML, and user data (class names) in a cell can
neither break a row nor inject markup, nor stop a chart from drawing."""

from __future__ import annotations

from pipeline.orchestration.summary import backends_table
from pipeline.reporting.tables import Table

HOSTILE = ["road|lane", "<script>alert(1)</script>", "back\\slash", "two\nlines", "a & b"]


def test_a_pipe_in_a_cell_does_not_split_the_markdown_row():
    markdown = Table(["class", "IoU"], [[name, 1.0] for name in HOSTILE]).markdown()
    for line in markdown.splitlines():
        unescaped_pipes = line.replace("\\|", "").count("|")
        assert unescaped_pipes == 3, line
    assert "<script>" not in markdown and "\\<script\\>" in markdown


def test_html_cells_are_escaped():
    page = Table(["class", "<b>IoU</b>"], [[name, 1.0] for name in HOSTILE]).html()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>" not in page and "a &amp; b" in page
    assert page.count("<tr>") == len(HOSTILE) + 1


def test_the_backend_table_header_has_as_many_columns_as_its_rows():
    table = backends_table({"backends": {"onnxruntime-fp32": {"status": "passed", "miou": 50.0,
                                                              "max_abs_diff": 1e-6}}})
    header, _, row = table.markdown().splitlines()
    assert header.count("|") == row.count("|") == len(table.header) + 1


def test_charts_draw_hostile_class_names_as_text():
    import numpy as np

    from pipeline.reporting import charts

    names = ["$x^$", "a$b", "<script>", "road|lane", "\\frac"]
    assert charts.per_class_bars(names, {"student": {name: 50.0 for name in names}}).startswith(b"\x89PNG")
    masks = list(np.arange(len(names)).repeat(64).reshape(len(names), 8, 8) % len(names))
    images = np.zeros((len(names), 8, 8, 3), np.uint8)
    assert charts.sample_grid(images, {"truth": masks}, names).startswith(b"\x89PNG")
