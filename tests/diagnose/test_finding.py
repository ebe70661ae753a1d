"""A finding's kind and severity are checked when it is built, also from stored data."""

from __future__ import annotations

import pytest

from backprobe.diagnose.finding import KINDS, SEVERITIES, Finding
from backprobe.diagnose.training import UPDATE_RULES, update_rule
from backprobe.errors import BackprobeError, DiagnoseError


def test_kinds_and_severities_are_those_of_the_literals():
    assert "vanishing_through_time" in KINDS and "plateau" in KINDS
    assert SEVERITIES == ("info", "warning", "error")  # mildest first: severity_rank
    assert [Finding("plateau", s, "").severity_rank for s in SEVERITIES] == [0, 1, 2]


@pytest.mark.parametrize(
    ("kind", "severity", "message"),
    [
        ("vanish", "error", r"finding kind in .*'vanishing'.* but got 'vanish'"),
        ("vanishing", "fatal", r"severity in \('info', 'warning', 'error'\), but got 'fatal'"),
    ],
)
def test_an_unknown_kind_or_severity_is_refused_at_construction(kind, severity, message):
    with pytest.raises(DiagnoseError, match=message):
        Finding(kind, severity, "summary")  # type: ignore[arg-type]  # the wrong value is the test
    stored = {"kind": kind, "severity": severity, "summary": "from a database"}
    with pytest.raises(DiagnoseError, match=message):
        Finding.from_dict(stored)


def test_update_rule_accepts_the_two_rules_and_explains_any_other_name():
    assert [update_rule(name) for name in UPDATE_RULES] == ["sgd", "adam"]
    with pytest.raises(BackprobeError, match=r"optimizer to be one of .* got 'lion'.*'adam'"):
        update_rule("lion")
