"""Spike findings: a planted outlier sample is named with its step, a spike planted in a
layer is placed there, clean runs of ten architectures raise none, and the online
detector judges every step as the findings do afterwards."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.diagnose import spikes
from backprobe.diagnose.thresholds import DiagnoseThresholds
from backprobe.errors import BackprobeError
from backprobe.store.sentinel import SentinelSeries, row_width

from ..zoo.architectures import ARCHITECTURES, loss_of

STEP = 60  # the planted step: after the 20 warm-up steps, inside the 64-step window


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def regression(
    probe: bp.Probe, steps: int, plant: Callable[[int, torch.Tensor, nn.Module], None]
) -> None:
    """SGD on a linear target, batches of 16; ``plant(step, targets, model)`` may change
    the targets before the forward or the gradients after the backward."""
    model = probe.model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 1, generator=g)
    with probe:
        for step in range(steps):
            x = torch.randn(16, 4, generator=g)
            y = x @ w
            plant(step, y, model)
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            plant(-step - 1, y, model)  # after the backward: -(step + 1)
            probe.step(loss)
            opt.step()
            opt.zero_grad()


def outlier(step: int, y: torch.Tensor, model: nn.Module) -> None:
    if step == STEP:
        y[5] *= 1e3  # one sample's target a thousand times too large


def spike_findings(run) -> list[bp.Finding]:
    return [f for f in bp.findings(run) if f.kind == "spike"]


def test_a_planted_outlier_sample_is_named_with_its_step(make_probe):
    probe = make_probe(mlp(), every=25)
    regression(probe, STEP + 5, outlier)
    (finding,) = spike_findings(probe)
    assert finding.step == finding.where["step"] == STEP
    assert finding.where["samples"] == [5]
    assert finding.severity == "warning"
    assert finding.evidence["grad_norm_ratio"] > 100  # far beyond the bar of 10
    assert finding.evidence["sample_share"] > 0.9
    assert finding.remedies[0].title.startswith("Guard the loop: skip")
    assert "sample 5" in finding.summary and "step 60" in finding.summary


def test_a_spike_the_run_got_over_is_information(make_probe):
    """The same bad batch, but 80 steps after it: the loss (0.02 before, 868 at the spike,
    0.2-0.9 for a while) comes back within 1.5 times where it was, so the spike is named
    as information and the verdict is about the network, not the batch."""
    probe = make_probe(mlp(), every=25)
    regression(probe, STEP + 80, outlier)
    (finding,) = spike_findings(probe)
    assert finding.where["step"] == STEP and finding.where["samples"] == [5]
    assert finding.severity == "info" and finding.summary.endswith("the run got over it")
    assert bp.verdict(probe).status == "healthy"


def test_a_stored_run_gives_the_same_spike_finding(tmp_path):
    db = tmp_path / "runs.db"
    probe = bp.Probe(mlp(), db=db, name="outlier", every=25)
    regression(probe, STEP + 5, outlier)
    live = spike_findings(probe)
    stored = spike_findings(bp.open_run(db, "outlier"))
    assert (
        [f.where for f in stored]
        == [f.where for f in live]
        == [{"step": STEP, "layers": live[0].where["layers"], "samples": [5]}]
    )


@pytest.mark.parametrize("layer", [0, 2, 4])
def test_a_spike_planted_in_a_layer_is_placed_there(make_probe, layer):
    def planted(step: int, y: torch.Tensor, model: nn.Module) -> None:
        if step == -(STEP + 1):  # after the backward of step 60
            model[layer].weight.grad *= 1e3

    probe = make_probe(mlp(), every=25)
    regression(probe, STEP + 1, planted)
    (finding,) = spike_findings(probe)
    assert finding.where["step"] == STEP
    assert finding.where["layers"][0] == str(layer)
    assert finding.evidence["layer_ratios"][str(layer)] > 100
    assert finding.where["samples"] == []  # the output gradient did not rise: no bad batch
    assert finding.remedies[0].title == "Lower the learning rate"


CLEAN = [
    "bert",
    "llama",
    "nanogpt",
    "word_lstm",
    "word_gru",
    "word_transformer",
    "resnet",
    "vit",
    "vgg",
    "mha_encoder",
]


def closest_approach(series: SentinelSeries, t: DiagnoseThresholds) -> float:
    """The largest rise of a judged gradient norm as a fraction of its bar (1: a spike)."""
    x = spikes.signals(series)
    median, spread, count = spikes.running_baselines(x, t.spike_window)
    bar = np.maximum(t.spike_z * spread, math.log(t.spike_ratio))
    judged = (count >= t.spike_warmup) & np.isfinite(x - median)
    judged[:, [spikes.LOSS, spikes.OUTPUT]] = False  # not triggers
    judged[:, 3:] &= spikes.carrying(series, t)
    return float(np.max(np.where(judged, (x - median) / bar, -np.inf)))


@pytest.mark.parametrize("name", CLEAN)
def test_a_clean_run_raises_no_spike(make_probe, name):
    if name in ("bert", "llama"):
        pytest.importorskip("transformers")
    arch = ARCHITECTURES[name]
    model = arch.build(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = make_probe(model, every=45)  # step 0 recorded; the sentinel sees every step
    with probe:
        for step in range(45):
            loss = loss_of(model, arch.batch(step), arch.loss_fn)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    assert spike_findings(probe) == []
    # 25 judged steps, none within 60 % of the bar (in log units): a wide margin
    assert closest_approach(probe.sentinel, DiagnoseThresholds()) < 0.6


def synthetic(n: int = 300, layers: int = 3, seed: int = 0) -> SentinelSeries:
    """Log-normal gradient norms with planted spikes in the global norm and one layer,
    a NaN loss at the end."""
    rng = np.random.default_rng(seed)
    rows = np.full((n, row_width(layers)), np.nan, np.float32)
    norms = np.exp(rng.normal(0.0, 0.2, (n, layers)))
    norms[120, 1] *= 300
    norms[200] *= 50
    rows[:, 0] = rng.normal(2.0, 0.1, n)  # loss
    rows[-1, 0] = np.nan
    rows[:, 1] = np.sqrt((norms**2).sum(axis=1))
    rows[:, 2] = 3  # gradients
    rows[:, -layers:] = norms
    return SentinelSeries.from_rows(np.arange(n), rows, tuple("abc"[:layers]))


def stored_rows(series: SentinelSeries) -> np.ndarray:
    return np.column_stack(
        [series.values, series.top_samples, series.top_norms, series.layer_grad_norm]
    ).astype(np.float32)


def test_the_online_detector_judges_each_step_as_the_findings_do():
    series = synthetic()
    offline = spikes.find_spikes(series)
    detector = spikes.SpikeDetector(series.layers)
    online = [
        spike
        for step, row in zip(series.steps, stored_rows(series), strict=True)
        if (spike := detector.observe(int(step), row)) is not None
    ]
    assert [s.step for s in offline] == [120, 200, 299]
    assert online == offline
    assert offline[0].layers[0][0] == "b" and offline[2].nonfinite


def test_no_step_is_judged_before_the_warm_up():
    series = synthetic()
    early = SentinelSeries.from_rows(
        series.steps[:30], stored_rows(series)[:30].copy(), series.layers
    )
    early.layer_grad_norm[10] *= 1e4  # a spike inside the first 20 steps: not judged
    assert spikes.find_spikes(early) == []
    t = dataclasses.replace(DiagnoseThresholds(), spike_warmup=5)
    assert [s.step for s in spikes.find_spikes(early, t)] == [10]


def test_a_spike_the_guard_acted_on_is_info(make_probe):
    probe = make_probe(mlp(), every=25)
    regression(probe, STEP + 1, outlier)
    probe.record_event("skip", {"reason": "test"}, step=STEP)
    (finding,) = spike_findings(probe)
    assert finding.severity == "info" and finding.evidence["guarded"]
    assert bp.verdict(probe).status != "exploding"


@pytest.mark.parametrize(
    "change",
    [{"spike_warmup": 1}, {"spike_warmup": 80}, {"spike_ratio": 1.0}, {"spike_layer_share": 2}],
)
def test_spike_thresholds_are_checked(change):
    with pytest.raises(BackprobeError, match="spike"):
        dataclasses.replace(DiagnoseThresholds(), **change)
