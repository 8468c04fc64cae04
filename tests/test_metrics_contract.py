"""One module names metrics.json's sections (pipeline/metrics_contract.py); docs/metrics.md documents
exactly those, and a real run writes nothing else."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline import metrics_contract as keys

ROOT = Path(__file__).resolve().parents[1]


def documented_sections() -> set[str]:
    """The first name of every key in docs/metrics.md's contract table (`teacher.miou` -> teacher)."""
    table = [line for line in (ROOT / "docs" / "metrics.md").read_text().splitlines() if line.startswith("| `")]
    return {name for row in table for name in re.findall(r"`([a-z_]+)[.`]", row.split(" | ")[0])}


def test_the_contract_names_each_section_once_and_every_section_is_documented():
    assert len(set(keys.TOP_LEVEL_KEYS)) == len(keys.TOP_LEVEL_KEYS)
    assert documented_sections() == set(keys.TOP_LEVEL_KEYS)


def test_a_run_writes_only_the_contracts_sections_in_its_order(smoke_reference):
    written = list(json.loads((smoke_reference / "metrics.json").read_text()))
    assert set(written) <= set(keys.TOP_LEVEL_KEYS), set(written) - set(keys.TOP_LEVEL_KEYS)
    assert written == [key for key in keys.TOP_LEVEL_KEYS if key in written]
