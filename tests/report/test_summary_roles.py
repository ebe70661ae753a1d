"""The summary table shows what each row measures: residual blocks, parameters-only
layers, tied layers."""

from __future__ import annotations

import pytest
from rich.console import Console

import backprobe as bp
from backprobe.report.text import summary_table

pytest.importorskip("transformers")

from tests.zoo.architectures import ARCHITECTURES, loss_of


def _table_text(name: str) -> str:
    arch = ARCHITECTURES[name]
    model = arch.build()
    with bp.Probe(model, db=None) as probe:
        loss_of(model, arch.batch(0), arch.loss_fn).backward()
        probe.step()
    console = Console(width=200, record=True)
    console.print(summary_table(probe))
    return console.export_text()


def test_the_summary_table_marks_parameters_only_rows():
    text = _table_text("mha_encoder")
    assert "attn.0.out_proj NonDynamicallyQuantizableLinear [params]" in text


def test_the_summary_table_marks_blocks_and_ties():
    text = _table_text("nanogpt")
    assert "transformer.h.0 NanoBlock [block]" in text
    assert "lm_head Linear tied to transformer.wte" in text


def test_the_report_marks_the_same_roles_as_the_terminal():
    from backprobe.report.html import render_report

    arch = ARCHITECTURES["nanogpt"]
    model = arch.build()
    with bp.Probe(model, db=None) as probe:
        loss_of(model, arch.batch(0), arch.loss_fn).backward()
        probe.step()
    page = render_report(probe, include=[])
    assert "NanoBlock [block]" in page
    assert "Linear tied to transformer.wte" in page
