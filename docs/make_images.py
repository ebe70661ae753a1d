"""Regenerate the pictures in docs/images: `.venv/bin/python docs/make_images.py`.

Trains two small models with the probe attached (a minute on a laptop CPU), draws the
main figures from their runs, writes the HTML report of the deep network and, when
headless Chromium is installed, a screenshot of it. Seeds are fixed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

import backprobe as bp
from backprobe.lab.models import DeepMLP, RecurrentModel
from backprobe.lab.tasks import adding_task
from backprobe.report import figures
from backprobe.report.html import write_report
from backprobe.theory.jacobian import jacobian_singular_values

OUT = Path(__file__).parent / "images"


def deep_sigmoid(db: Path) -> bp.Probe:
    """The seeds' long network: 20 sigmoid layers, PyTorch's default init, 200 SGD steps."""
    torch.manual_seed(0)
    model = DeepMLP(16, 32, depth=20, out_features=1, activation="sigmoid")
    x = torch.randn(256, 16)
    y = (x[:, :4].sum(1, keepdim=True) > 0).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with bp.Probe(model, every=5, db=db, name="deep-sigmoid") as probe:
        for _ in range(200):
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    return probe


def small_rnn(db: Path) -> bp.Probe:
    """A tanh RNN with λ1(W_hh) = 0.9 on the adding problem, T = 40: Pascanu's vanishing
    regime, with its time profiles recorded every 20 steps."""
    torch.manual_seed(0)
    task = adding_task(128, 40)
    model = RecurrentModel(2, 32, 1, cell="rnn", recurrent_norm=0.9)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with bp.Probe(model, every=5, time_every=20, db=db, name="rnn-adding") as probe:
        for _ in range(100):
            loss = nn.functional.mse_loss(model(task.x), task.y)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    return probe


def spectra() -> dict[str, torch.Tensor]:
    """Input–hidden Jacobian spectra at initialisation of 20-layer trunks."""
    torch.manual_seed(0)
    x = torch.randn(8, 32)
    out = {}
    for label, activation, init in (
        ("sigmoid, default init", "sigmoid", "default"),
        ("tanh, orthogonal init", "tanh", "orthogonal"),
    ):
        model = DeepMLP(32, 32, depth=20, out_features=1, activation=activation, init=init)
        trunk = nn.Sequential(*list(model.children())[:-1])  # without the readout
        out[label] = jacobian_singular_values(trunk.eval(), x)
    return out


def screenshot(page: Path, png: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium not found: no screenshot")
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                "--window-size=1000,1800",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
        )


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "runs.db"
        deep = deep_sigmoid(db)
        rnn = small_rnn(db)
        picked = figures.run_figures(deep, bp.findings(deep))
        for key in ("gradient_flow", "heatmap", "gain"):
            figures.save(picked[key], OUT / f"{key}.png", dpi=80)
        name = rnn.recurrent_layers[0]
        recurrent = figures.recurrent_figures(rnn, name)
        figures.save(recurrent[f"time_profile:{name}"], OUT / "time_profile.png", dpi=80)
        figures.save(recurrent[f"jacobian_decay:{name}"], OUT / "jacobian_decay.png", dpi=80)
        figures.save(figures.jacobian_spectrum_figure(spectra()), OUT / "spectrum.png", dpi=80)
        page = write_report(bp.open_run(db, deep.run_id), Path(tmp) / "report.html")
        screenshot(page, OUT / "report.png")
    for path in sorted(OUT.glob("*.png")):
        print(path, path.stat().st_size)


if __name__ == "__main__":
    main()
