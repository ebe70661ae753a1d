"""The HTML report: self-contained, escaped, the verdict first, findings with their
remedies, the per-layer table and the figures; from a Probe, a stored run, a killed
run, and the command line."""

from __future__ import annotations

import base64
import html
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe._format import compact_number
from backprobe.cli import main
from backprobe.diagnose.depth import first_to_last_ratio
from backprobe.diagnose.finding import Finding, Remedy
from backprobe.diagnose.verdict import verdict, verdict_of
from backprobe.errors import BackprobeError
from backprobe.report.html import render_report, write_report
from backprobe.store.view import MemoryRun

from ..store.helpers import record
from .helpers import EVIL, FINDINGS, planted_run


def _external_references(page: str) -> list[str]:
    """URLs the page would load: src / href attributes, CSS url() and @import, that are
    not inline data."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", page, flags=re.I)
    found += re.findall(r"url\(\s*['\"]?([^)'\"]+)", page, flags=re.I)
    found += re.findall(r"@import\s+['\"]?([^;'\"]+)", page, flags=re.I)
    return [url for url in found if not url.startswith("data:")]


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_of_a_planted_run_shows_verdict_findings_table_and_figures():
    run = planted_run()
    page = render_report(run, findings=FINDINGS)
    assert page.startswith("<!DOCTYPE html>")
    # the banner is the verdict of the findings the page shows
    expected = verdict_of(FINDINGS, int(run.steps[-1]), run.layers, first_to_last_ratio(run))
    assert expected.status == "vanishing" and expected.finding in FINDINGS
    # the verdict comes first, before findings, table and figures
    text = html.unescape(page)
    at = text.index(f"verdict: {expected.message}")
    assert at < text.index("Findings") < text.index("Layers at step 45") < text.index("Figures")
    # findings: most severe first, with evidence, cause, remedy code and references
    assert page.index("the first layer receives") < page.index("sigmoids saturate")
    for text in (
        "1e-8",
        "0.1, 0.2",
        "a product of small local derivatives",
        "He initialisation",
        "bp.remedies.init_(model, &#39;he&#39;)",
        "Hochreiter 1991",
        "layers: fc0, fc1",
        "step 45",
    ):
        assert text in page, text
    # the per-layer table: one row per layer with its gradient norm
    grad = run.history("grad_norm")[-1]
    rows = re.findall(r'<td class="bp-name">([^<]*)</td>', page)
    assert rows[: len(run.layers)] == run.layers
    assert f"<td>{compact_number(grad[0])}</td>" in page
    # figures: one PNG per figure of run_figures, each a real image
    images = _images(page)
    assert len(images) == 7  # loss, flow, heatmap, gain, saturation, time profile, decay
    assert all(img[:8] == b"\x89PNG\r\n\x1a\n" and len(img) > 5000 for img in images)
    # the recurrent layer's memory horizon and λ1 are in its table
    assert re.search(
        r'<td class="bp-name">rnn</td><td>40</td><td>12</td>\s*<td>10</td><td>3</td>', page
    )
    assert _external_references(page) == []
    assert "<script" not in page.lower()


def test_a_run_without_recorded_steps_says_so():
    page = render_report(MemoryRun(), include=["loss"])
    assert "no findings computed" in page
    assert "no recorded step yet" in page
    assert _images(page) == []


def test_without_given_findings_the_report_diagnoses_the_run():
    run = planted_run()
    page = render_report(run, include=["loss"])
    findings = bp.findings(run)
    assert findings
    for finding in findings:
        assert finding.summary in html.unescape(page)


def test_given_findings_need_a_single_run():
    with pytest.raises(BackprobeError, match="findings with a single run"):
        render_report([planted_run(), planted_run()], findings=FINDINGS)


def test_every_user_string_is_escaped():
    run = planted_run(names=[EVIL, "act0", "fc1", "act1"], recurrent=EVIL)
    run.name = EVIL  # type: ignore[attr-defined]  # the title shows a run's name
    findings = [
        Finding(
            "vanishing",
            "error",
            f"summary {EVIL}",
            where={"layers": [EVIL]},
            evidence={EVIL: EVIL},
            cause=EVIL,
            remedies=(Remedy(EVIL, EVIL, EVIL),),
            references=(EVIL,),
            step=5,
        )
    ]
    page = render_report(run, include=["loss", "time_profile"], findings=findings)
    assert "<script" not in page.lower()
    escaped = html.escape(EVIL)
    assert page.count(escaped) >= 10
    # a layer name that looks like markup is shown, as text, in the table
    assert f'<td class="bp-name">{escaped}</td>' in page


def test_a_real_model_with_a_markup_layer_name(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(EVIL, nn.Linear(4, 8))
    model.add_module("act", nn.Tanh())
    model.add_module("out", nn.Linear(8, 1))
    probe = bp.Probe(model, db=tmp_path / "runs.db", name=EVIL)
    with probe:
        for _ in range(3):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            model.zero_grad()
    path = bp.write_report(probe, tmp_path / "r.html", include=["gradient_flow"])
    page = path.read_text()
    assert "<script" not in page.lower()
    assert html.escape(EVIL) in page
    stored = bp.open_run(tmp_path / "runs.db", probe.run_id)
    assert stored.layers[0] == EVIL
    assert "<script" not in stored._repr_html_().lower()


def test_probe_report_and_notebook_fragment(tmp_path):
    probe = record(None, steps=4)
    path = bp.write_report(probe, tmp_path / "out" / "probe.html", include=["loss"])
    page = path.read_text()
    assert f"verdict: {verdict(probe).message}" in html.unescape(page)
    fragment = probe._repr_html_()
    assert fragment.startswith('<div class="bp-report">')
    assert "<html" not in fragment and "<!DOCTYPE" not in fragment
    assert len(_images(fragment)) == 2  # the notebook's quick figures: loss, gradient flow
    assert "in memory" in fragment


def test_compare_two_runs_side_by_side(tmp_path):
    db = tmp_path / "runs.db"
    a = record(db, name="left", steps=3)
    b = record(db, name="right", steps=5, seed=1)
    runs = [bp.open_run(db, a.run_id), bp.open_run(db, b.run_id)]
    page = render_report(runs, include=["gradient_flow"])
    assert "run 1: left vs run 2: right" in page
    assert 'class="bp-columns"' in page and "repeat(2," in page
    sections = page.split('<section class="bp-run">')[1:]
    assert len(sections) == 2
    assert "run 1: left" in sections[0] and "run 2: right" in sections[1]
    assert "3 recorded steps" in sections[0] and "5 recorded steps" in sections[1]
    assert "gradient flow of the compared runs" in page.lower()
    assert len(_images(page)) == 2 + 2  # two overlays, and one figure per run
    with pytest.raises(BackprobeError, match="single run"):
        render_report(runs, extra_figures={"x": None})


def test_a_run_without_steps_still_reports(tmp_path):
    run = planted_run()
    empty = MemoryRun()
    empty.set_layers(run.layer_info)
    page = render_report(empty)
    assert "no recorded step yet" in page
    assert "no findings computed" in page
    assert _images(page) == []
    # a notebook shows a probe before training, even before it was attached
    probe = bp.Probe(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), db=None)
    for _ in range(2):
        fragment = probe._repr_html_()
        assert "0 recorded steps" in fragment and "no recorded step yet" in fragment
        probe.attach()
    probe.close()


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(BackprobeError, match="Expected a run"):
        render_report("run 1")
    with pytest.raises(BackprobeError, match="is a folder"):
        write_report(planted_run(), tmp_path)


# -- the command line ---------------------------------------------------------------------


def _run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["backprobe", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_report_one_and_two_runs(tmp_path, monkeypatch, capsys):
    db = tmp_path / "runs.db"
    record(db, name="alpha", steps=3)
    record(db, name="beta", steps=2)
    both = tmp_path / "both.html"
    code, stdout, err = _run_main(
        monkeypatch, capsys, "report", "1", "beta", "--db", db, "-o", both
    )
    assert code == 0, err
    assert stdout.strip() == f"wrote {both}"
    assert "run 1: alpha vs run 2: beta" in both.read_text()
    code, _, err = _run_main(monkeypatch, capsys, "report", "gamma", "--db", db, "-o", both)
    assert code == 1
    assert err.startswith("backprobe: error: ") and len(err.strip().splitlines()) == 1


#: Trains until killed, printing each step; argv: db path.
FOREVER = textwrap.dedent(
    """
    import sys, time
    import torch
    from torch import nn
    import backprobe as bp

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    probe = bp.Probe(model, db=sys.argv[1], name="killed", flush_every=0.05)
    probe.attach()
    step = 0
    while True:
        loss = model(torch.randn(16, 4)).pow(2).mean()
        loss.backward()
        probe.step(loss)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
                p.grad = None
        print(step, flush=True)
        step += 1
        time.sleep(0.01)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_report_of_a_killed_run(tmp_path, monkeypatch, capsys):
    db = tmp_path / "runs.db"
    script = tmp_path / "train.py"
    script.write_text(FOREVER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            line = child.stdout.readline()
            assert line, f"child ended early: {child.wait()} {child.stderr.read()}"
            if int(line) >= 10:
                break
            assert time.monotonic() < deadline, "child too slow"
        time.sleep(0.5)  # several flush intervals
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    out = tmp_path / "killed.html"
    code, _, err = _run_main(monkeypatch, capsys, "report", "killed", "--db", db, "-o", out)
    assert code == 0, err
    page = out.read_text()
    run = bp.open_run(db, "killed")
    assert run.status == "interrupted" and run.steps.size >= 10
    assert "interrupted" in page and "ended without closing this run" in page
    assert f"{run.steps.size} recorded steps" in page
    assert html.escape(f"verdict: {verdict(run).message}", quote=False) in page
    assert len(re.findall(r'<td class="bp-name">', page)) == len(run.layers)
    assert len(_images(page)) == 5
    assert np.isfinite(run.history("loss")).all()


def test_evidence_with_nothing_to_show_makes_no_chip():
    """Regression: an evidence value of None or NaN was an empty chip."""
    finding = Finding(
        "vanishing",
        "error",
        "planted",
        evidence={"ratio": 1e-8, "saturated_fraction": float("nan"), "none": None, "empty": []},
    )
    page = render_report(planted_run(), findings=[finding])
    chips = re.findall(r'<span class="bp-key">([^<]*)</span>\s*([^<]*)</span>', page)
    assert chips == [("ratio", "1.0e-8")]


def test_a_stored_run_and_its_probe_say_the_same_run_id(tmp_path):
    probe = record(tmp_path / "runs.db", name="who", steps=2)
    stored = bp.open_run(tmp_path / "runs.db", "who")
    assert stored.run_id == stored.id == probe.run_id
    assert f"run {probe.run_id}: who" in render_report(stored)
