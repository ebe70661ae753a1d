"""``make zoo`` writes the precision/recall table from the same judgments as the tests."""

from __future__ import annotations

import pytest

from .judge import CASES, score
from .table import render

pytest.importorskip("transformers")


def test_the_table_has_a_row_per_case_and_the_scores() -> None:
    text = render()
    result = score()
    assert f"**Recall** {result.found}/{result.planted}" in text
    assert f"**Precision** {result.correct}/{result.findings}" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(CASES)  # the header and one row per case
    for name in CASES:
        assert any(row.startswith(f"| {name} |") for row in rows), name
