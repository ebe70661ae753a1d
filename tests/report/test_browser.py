"""The report in a real browser: headless Debian Chromium opens the file offline with no
console message, draws a page that is not blank, and shows the findings' text.

CI installs the Debian package ``chromium`` in ``.ci/run``; elsewhere the tests are
skipped when it is missing.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import backprobe as bp
from backprobe.lab.models import DeepMLP
from backprobe.report.html import write_report

from .helpers import FINDINGS, planted_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (Debian: apt-get install chromium; CI's .ci/run "
    "installs it)",
)

#: Offline, quiet, reproducible: no sandbox (CI runs as root), no GPU, no network at all
#: (every host name resolves to nothing), console messages logged to stderr.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)
#: How Chromium logs a page's console message (console.log/error, uncaught exceptions).
CONSOLE = re.compile(r":CONSOLE(?::\d+)?\]\s*(.*)")


def chromium(tmp_path, page, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on a local file with its own throw-away profile."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for m in map(CONSOLE.search, stderr.splitlines()) if m]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("browser") / "report.html"
    return write_report(planted_run(), path, findings=FINDINGS)


def test_the_console_check_sees_errors(tmp_path):
    """The check below can fail: a page that logs and throws is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p>"
        "<script>console.error('planted error'); notDefined();</script></body></html>"
    )
    done = chromium(tmp_path, page, "--dump-dom")
    messages = console_messages(done.stderr)
    assert any("planted error" in m for m in messages), done.stderr
    assert any("notDefined" in m for m in messages), done.stderr


def test_report_opens_without_console_messages_and_shows_the_findings(tmp_path, report):
    done = chromium(tmp_path, report, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    dom = done.stdout
    assert "</html>" in dom
    text = html.unescape(dom)
    for finding in FINDINGS:
        assert finding.summary in text
    assert "verdict: vanishing" in dom
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', dom)) == 7


def test_report_screenshot_is_not_blank(tmp_path, report):
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, report, f"--screenshot={shot}", "--window-size=1200,2000")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    pixels = imread(shot)[..., :3]  # float RGB in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    ink = np.any(pixels < 0.9, axis=-1)  # anything not near-white
    assert pixels.std() > 0.05
    assert 0.05 < ink.mean() < 0.9
    # the drawn figures reach the lower half of the window, not only the text at the top
    assert ink[1000:].mean() > 0.02


#: Appended to a report: after layout, the page notes every scroll box whose content is
#: wider than the box (a table clipped at this window width).
MEASURE_CLIPPING = """<script>window.addEventListener('load', () => {
  const cut = [...document.querySelectorAll('.bp-scroll')]
    .filter(e => e.scrollWidth > e.clientWidth + 1)
    .map(e => e.scrollWidth + '>' + e.clientWidth);
  document.body.setAttribute('data-clipped', cut.join(',') || 'none');
});</script>"""


def _deep_probe(activation: str) -> bp.Probe:
    torch.manual_seed(0)
    model = DeepMLP(16, 64, 12, 4, activation=activation)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = bp.Probe(model, name=f"{activation}_deep_network_with_a_long_name")
    with probe:
        for _ in range(3):
            loss = model(torch.randn(32, 16)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    return probe


def test_two_runs_side_by_side_fit_a_1280_pixel_window(tmp_path):
    """Regression: the per-layer tables of two compared runs were clipped at 1280 px."""
    page = write_report([_deep_probe("sigmoid"), _deep_probe("relu")], tmp_path / "r.html")
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", MEASURE_CLIPPING + "</body>"))
    done = chromium(tmp_path, measured, "--dump-dom", "--window-size=1280,2000")
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-clipped="none"' in done.stdout, re.findall(r'data-clipped="[^"]*"', done.stdout)
