"""The rules on measured updates, attention logits and entropy, output logits and the
residual stream: planted runs at and around their thresholds, and two live runs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.diagnose import DiagnoseThresholds, diagnose
from backprobe.diagnose.finding import Finding
from backprobe.errors import BackprobeError
from backprobe.store.view import LAYER_SERIES, LayerInfo, MemoryRun

NAN = math.nan
#: emb → two residual blocks with attention → head
LAYERS = [
    LayerInfo(0, "emb", "Embedding", "", 10, False),
    LayerInfo(1, "h.0", "Block", "", 0, False, role="block"),
    LayerInfo(2, "h.1", "Block", "", 0, False, role="block"),
    LayerInfo(3, "head", "Linear", "", 10, False),
]
STEPS = 30


def series(**per_layer) -> dict[str, np.ndarray]:
    """A healthy step: gradients 1, weights 10, streams of RMS 1, attention logits 5 with
    entropy 2, updates 1e-3, output logits of 3."""
    values = {
        "grad_norm": [1.0, NAN, NAN, 1.0],
        "weight_norm": [10.0, NAN, NAN, 10.0],
        "signal_norm": [1.0] * 4,
        "act_mean": [0.0] * 4,
        "act_std": [1.0] * 4,
        "nonfinite_out": [0.0] * 4,
        "nonfinite_grad": [0.0] * 4,
        "attn_logit_max": [NAN, 5.0, 5.0, NAN],
        "attn_entropy": [NAN, 2.0, 2.0, NAN],
        "attn_entropy_min": [NAN, 1.5, 1.5, NAN],
        "update_to_weight": [1e-3, NAN, NAN, 1e-3],
    }
    values.update(per_layer)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    for stat in LAYER_SERIES:
        out.setdefault(stat, np.full(4, NAN))
    out.update(loss=np.array([1.0]), first_nonfinite=np.array([-1.0, -1.0]))
    out.update(gradients=np.array([2.0]), overhead=np.array([NAN]))
    out.update(output_max=np.array([3.0]), output_rms=np.array([1.0]))
    return out


def run_of(make_step) -> MemoryRun:
    """A run of STEPS steps, step i's series from ``make_step(i / (STEPS - 1))``."""
    run = MemoryRun()
    run.set_layers(LAYERS)
    for i in range(STEPS):
        run.append(i, make_step(i / (STEPS - 1)))
    return run


def ramp(start: float, end: float, x: float) -> float:
    """Geometric from ``start`` at x = 0 to ``end`` at x = 1."""
    return start * (end / start) ** x


def found(run: MemoryRun, kind: str, **kwargs) -> list[Finding]:
    return [f for f in diagnose(run, **kwargs) if f.kind == kind]


def test_a_healthy_run_has_none_of_these_findings():
    """Logits 0.2 → 20, entropy 2.5 → 1, the stream ×30, updates 1e-3: all of it what
    healthy runs show."""

    def step(x):
        return series(
            attn_logit_max=[NAN, ramp(0.2, 20, x), 5.0, NAN],
            attn_entropy=[NAN, ramp(2.5, 1.0, x), 2.0, NAN],
            act_std=[1.0, ramp(0.05, 1.5, x), 1.0, 1.0],
        )

    kinds = {f.kind for f in diagnose(run_of(step))}
    assert not kinds & {"logit_growth", "entropy_collapse", "stream_growth", "learning_rate"}


def test_attention_logit_growth_is_named_in_its_layer():
    run = run_of(lambda x: series(attn_logit_max=[NAN, 5.0, ramp(1.0, 120.0, x), NAN]))
    (f,) = found(run, "logit_growth")
    assert f.severity == "warning" and f.where == {"layers": ["h.1"]}
    assert f.remedies[0].title.startswith("Normalise queries and keys")
    assert f.evidence["attn_logit_max_end"]["h.1"] > 50
    assert "Dehghani et al. 2023 (ViT-22B, QK-norm)" in f.references


@pytest.mark.parametrize(("start", "end"), [(60.0, 70.0), (1.0, 45.0)])
def test_large_logits_from_the_start_or_below_the_threshold_are_not_growth(start, end):
    """A pretrained model whose logits were large from the start; a rise that stays
    under 50."""
    run = run_of(lambda x: series(attn_logit_max=[NAN, 5.0, ramp(start, end, x), NAN]))
    assert found(run, "logit_growth") == []


def test_output_logit_growth_calls_for_the_z_loss():
    def step(x):
        out = series()
        out["output_max"] = np.array([ramp(2.0, 60.0, x)])
        return out

    (f,) = found(run_of(step), "logit_growth")
    assert f.where == {"output": True}
    assert f.remedies[0].title == "Add the z-loss on the output logits"


def test_output_logits_of_a_model_without_attention_are_not_judged():
    def step(x):
        out = series(attn_logit_max=[NAN] * 4, attn_entropy=[NAN] * 4)
        out["output_max"] = np.array([ramp(2.0, 60.0, x)])
        return out

    assert found(run_of(step), "logit_growth") == []


@pytest.mark.parametrize(("end", "collapsed"), [(0.05, True), (0.3, False)])
def test_entropy_collapse(end, collapsed):
    run = run_of(lambda x: series(attn_entropy=[NAN, ramp(2.5, end, x), 2.0, NAN]))
    hits = found(run, "entropy_collapse")
    assert bool(hits) == collapsed
    if collapsed:
        assert hits[0].where == {"layers": ["h.0"]} and hits[0].severity == "warning"
        assert hits[0].evidence["attn_entropy_end"]["h.0"] < 0.1 * 2.5


def test_stream_growth_is_information_alone_and_a_warning_with_logit_growth():
    def stream(x, logits=5.0):
        return series(
            act_std=[1.0, 1.0, ramp(0.05, 20.0, x), 1.0],
            attn_logit_max=[NAN, 5.0, logits, NAN],
        )

    (alone,) = found(run_of(stream), "stream_growth")
    assert alone.severity == "info" and alone.where == {"layers": ["h.1"]}
    assert alone.evidence["stream_rms_end"]["h.1"] > 100 * 0.05
    unstable = run_of(lambda x: stream(x, logits=ramp(1.0, 120.0, x)))
    (warned,) = found(unstable, "stream_growth")
    assert warned.severity == "warning"
    slower = run_of(lambda x: series(act_std=[1.0, 1.0, ramp(0.5, 20.0, x), 1.0]))
    assert found(slower, "stream_growth") == []


def updates(ratio) -> MemoryRun:
    """A run whose measured update-to-weight ratio at x ∈ [0, 1] is ``ratio(x)``."""
    return run_of(lambda x: series(update_to_weight=[ratio(x), NAN, NAN, ratio(x)]))


def test_measured_updates_in_the_band_are_fine_and_replace_the_estimate():
    """An lr given to findings would estimate updates of lr·||g||/||θ|| = 1 (too large):
    the measured 1e-3 stands instead."""
    assert found(updates(lambda x: 1e-3), "learning_rate", lr=10.0) == []


def test_large_first_updates_call_for_warm_up():
    (f,) = found(updates(lambda x: 0.08 if x < 0.3 else 1e-3), "learning_rate")
    assert f.severity == "warning" and f.evidence["estimated_from"] == "measured"
    assert f.summary.startswith("learning rate too large: over its first 10")
    assert f.remedies[0].title == "Warm the learning rate up"


def test_large_last_updates_call_for_a_lower_learning_rate():
    (f,) = found(updates(lambda x: 1e-3 if x < 0.6 else 0.05), "learning_rate")
    assert "over its last 10" in f.summary
    assert f.remedies[0].title == "Lower the learning rate"


def test_one_step_far_too_large_is_an_error():
    (f,) = found(updates(lambda x: 0.6 if x == 0 else 1e-3), "learning_rate")
    assert f.severity == "error" and "the update at step 0" in f.summary
    assert f.evidence["largest_at_step"] == 0


def test_updates_far_below_the_band_everywhere_are_too_small():
    (f,) = found(updates(lambda x: 3e-7), "learning_rate")
    assert f.summary.startswith("learning rate too small")
    # a schedule decayed to 0 at the end: small last steps are not a finding
    assert found(updates(lambda x: ramp(1e-3, 1e-9, x)), "learning_rate") == []


def test_findings_survive_json():
    run = run_of(lambda x: series(attn_logit_max=[NAN, 5.0, ramp(1.0, 120.0, x), NAN]))
    for f in diagnose(run):
        assert Finding.from_dict(f.to_dict()) == f


def test_thresholds_out_of_order_are_refused():
    with pytest.raises(BackprobeError, match="update_too_large"):
        DiagnoseThresholds(update_too_large=1.0)
    with pytest.raises(BackprobeError, match="trend_window"):
        dataclasses.replace(DiagnoseThresholds(), trend_window=0)


def test_live_learning_rate_far_too_large_is_measured(make_probe):
    """Adam at lr 1 on an MLP: its first update replaces the weights several times over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    results = {}
    for lr in (1e-3, 1.0):
        net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        net.load_state_dict(model.state_dict())
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        probe = make_probe(net, optimizer=opt)
        with probe:
            for _ in range(6):
                loss = nn.functional.cross_entropy(net(x), y)
                loss.backward()
                probe.step(loss)
                opt.step()
                opt.zero_grad()
        results[lr] = [f for f in bp.findings(probe) if f.kind == "learning_rate"]
    assert results[1e-3] == []
    (f,) = results[1.0]
    assert f.severity == "error" and f.evidence["update_to_weight_largest"] > 3


def test_live_attention_logit_growth_is_named(make_probe):
    """An encoder layer whose query and key weights are scaled up at every step: the
    logits grow ×1.3² per step from ~1 and the finding names its attention."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    x = torch.randn(4, 6, 16)
    probe = make_probe(layer)
    with probe:
        for _ in range(24):
            layer(x).pow(2).mean().backward()
            probe.step()
            layer.zero_grad()
            with torch.no_grad():
                layer.self_attn.in_proj_weight[:32].mul_(1.3)
    (f,) = [f for f in bp.findings(probe) if f.kind == "logit_growth"]
    assert f.where == {"layers": ["self_attn"]}
    collapse = [f for f in bp.findings(probe) if f.kind == "entropy_collapse"]
    assert collapse and collapse[0].where == {"layers": ["self_attn"]}
