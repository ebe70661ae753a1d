"""Short numbers and counted nouns, as every terminal line and report shows them."""

from __future__ import annotations

import math

import pytest

from backprobe._format import compact_number, counted


@pytest.mark.parametrize(
    ("value", "significant", "expected"),
    [
        (0.0753, 3, "0.0753"),
        (0.0, 3, "0"),
        (2e-18, 3, "2.0e-18"),
        (2000.0, 3, "2.0e3"),
        (470.0, 2, "4.7e2"),
        (-560.0, 2, "-5.6e2"),
        (999.7, 3, "1.0e3"),
        (12.3, 2, "12"),
        (math.inf, 3, "inf"),
    ],
)
def test_compact_number(value, significant, expected):
    assert compact_number(value, significant=significant) == expected


def test_compact_number_never_writes_pythons_exponent_sign():
    """Regression: 470 at two significant digits was 4.7e+02 beside 2.0e3."""
    for value in (470.0, 999.0, 123.0, 5.5e-3, 4.2e7):
        for significant in (1, 2, 3):
            assert "+" not in compact_number(value, significant=significant)
            assert "e0" not in compact_number(value, significant=significant)


def test_counted():
    assert [counted(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert counted(1, "finding") == "1 finding"
    assert counted(3, "singular value") == "3 singular values"
    assert counted(2, "sequence", "sequences") == "2 sequences"
