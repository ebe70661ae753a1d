"""Each rule on synthetic runs with planted numbers: thresholds, places, evidence."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import backprobe as bp
from backprobe.diagnose import DiagnoseThresholds, diagnose
from backprobe.errors import BackprobeError
from backprobe.store.view import LAYER_SERIES, USER_PREFIX, LayerInfo, MemoryRun

#: fc0 (Linear) → act0 (sigmoid) → fc1 (Linear) → act1 (relu) → fc2 (Linear)
LAYERS = [
    LayerInfo(0, "fc0", "Linear", "", 10, False),
    LayerInfo(1, "act0", "Sigmoid", "sigmoid", 0, False),
    LayerInfo(2, "fc1", "Linear", "", 10, False),
    LayerInfo(3, "act1", "ReLU", "relu", 0, False),
    LayerInfo(4, "fc2", "Linear", "", 10, False),
]
NAN = math.nan


def step_series(**overrides) -> dict[str, np.ndarray]:
    """A healthy step: every gradient and signal 1, weights 10, nothing saturated or dead."""
    values = {
        "grad_norm": [1.0, NAN, 1.0, NAN, 1.0],
        "weight_norm": [10.0, NAN, 10.0, NAN, 10.0],
        "signal_norm": [1.0] * 5,
        "act_mean": [0.0] * 5,
        "act_std": [1.0] * 5,
        "saturated": [NAN, 0.0, NAN, NAN, NAN],
        "dead": [NAN, NAN, NAN, 0.0, NAN],
        "nonfinite_out": [0.0] * 5,
        "nonfinite_grad": [0.0] * 5,
    }
    values.update(overrides)
    for stat in LAYER_SERIES:  # series the rules do not read (gates of gated cells)
        values.setdefault(stat, [NAN] * 5)
    series = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    series.setdefault("loss", np.array([1.0]))
    series.setdefault("first_nonfinite", np.array([-1.0, -1.0]))
    assert set(LAYER_SERIES) <= set(series)
    return series


def make_run(steps: list[dict], profiles: list[dict] | None = None) -> MemoryRun:
    run = MemoryRun()
    run.set_layers(LAYERS)
    for i, series in enumerate(steps):
        run.append(i, series, None if profiles is None else profiles[i])
    return run


def kinds(findings) -> list[str]:
    return [f.kind for f in findings]


def test_healthy_run_has_no_finding():
    assert diagnose(make_run([step_series()] * 3)) == []


def test_empty_run_has_no_finding():
    run = MemoryRun()
    run.set_layers(LAYERS)
    assert diagnose(run) == []


@pytest.mark.parametrize(("first", "severity"), [(2e-3, None), (5e-4, "warning"), (1e-7, "error")])
def test_vanishing_thresholds(first, severity):
    grads = [first, NAN, 1.0, NAN, 1.0]
    found = diagnose(make_run([step_series(grad_norm=grads)] * 2))
    if severity is None:
        assert found == []
        return
    (f,) = found
    assert (f.kind, f.severity) == ("vanishing", severity)
    assert f.where["layers"] == ["fc0"]  # only the leading run of starving layers
    assert f.evidence["first_to_last_grad_ratio"] == pytest.approx(first, rel=1e-6)
    assert f.remedies[0].call.startswith("backprobe.remedies.swap_activations_")


def test_vanishing_signal_alone_counts_and_spans_the_leading_layers():
    signal = [1e-8, 1e-6, 1e-4, 0.1, 1.0]
    (f,) = diagnose(make_run([step_series(signal_norm=signal)]))
    assert f.kind == "vanishing" and f.severity == "error"
    assert f.where["layers"] == ["fc0", "act0", "fc1"]
    assert f.evidence["first_to_last_signal_ratio"] == pytest.approx(1e-8)
    assert f.evidence["mean_gain_per_layer"] == pytest.approx(0.01, rel=1e-6)


def test_exploding_and_configurable_threshold():
    grads = [1e4, NAN, 1.0, NAN, 1.0]
    (f,) = diagnose(make_run([step_series(grad_norm=grads)]))
    assert (f.kind, f.severity, f.where["layers"]) == ("exploding", "warning", ["fc0"])
    lenient = DiagnoseThresholds(exploding_warning=1e5, exploding_error=1e7)
    assert diagnose(make_run([step_series(grad_norm=grads)]), lenient) == []


def test_median_over_steps_ignores_one_odd_step():
    odd = step_series(grad_norm=[1e-9, NAN, 1.0, NAN, 1.0])
    assert diagnose(make_run([step_series(), odd, step_series()])) == []


@pytest.mark.parametrize(("fraction", "severity"), [(0.4, None), (0.6, "warning"), (0.95, "error")])
def test_saturation(fraction, severity):
    found = diagnose(make_run([step_series(saturated=[NAN, fraction, NAN, NAN, NAN])]))
    if severity is None:
        assert found == []
        return
    (f,) = found
    assert (f.kind, f.severity, f.where["layers"]) == ("saturation", severity, ["act0"])
    assert f.evidence["max_saturated_fraction"] == pytest.approx(fraction)


def test_dead_units_name_the_layer_feeding_them():
    (f,) = diagnose(make_run([step_series(dead=[NAN, NAN, NAN, 1.0, NAN])]))
    assert (f.kind, f.severity, f.where["layers"]) == ("dead_units", "error", ["act1"])
    assert f.where["fed_by"] == ["fc1"]
    assert diagnose(make_run([step_series(dead=[NAN, NAN, NAN, 0.5, NAN])])) == []


def growing(n: int, factor: float) -> list[dict]:
    """n finite steps whose gradients grow ×factor per step."""
    return [step_series(grad_norm=[factor**i, NAN, factor**i, NAN, factor**i]) for i in range(n)]


def test_first_nonfinite_after_a_blow_up():
    bad = step_series(grad_norm=[NAN, NAN, NAN, NAN, NAN], first_nonfinite=np.array([2.0, 1.0]))
    after = step_series(first_nonfinite=np.array([0.0, 0.0]))
    found = diagnose(make_run([*growing(4, 10.0), bad, after]))
    assert kinds(found) == ["nonfinite", "exploding"]
    f, blowup = found
    assert (f.kind, f.severity, f.step) == ("nonfinite", "error", 4)
    assert f.where == {"layers": ["fc1"], "step": 4}
    assert f.evidence["phase"] == "backward"
    assert f.evidence["growth_per_step"] == pytest.approx(10.0, rel=1e-9)
    assert f.evidence["overflow"] is True
    assert "an overflow" in f.summary and f.remedies[0].title == "Lower the learning rate"
    # the blow-up itself, dated by the step where the growth began
    assert (blowup.severity, blowup.step, blowup.evidence["nonfinite_step"]) == ("error", 0, 4)
    assert blowup.evidence["growth"] == pytest.approx(1e3)
    assert "turned non-finite at step 4" in blowup.summary


def test_sudden_nonfinite_in_a_forward_output():
    bad = step_series(first_nonfinite=np.array([1.0, 0.0]))
    (f,) = diagnose(make_run([*growing(3, 1.0), bad]))
    assert f.evidence["layer"] == "act0" and f.evidence["phase"] == "forward"
    assert f.evidence["growth_per_step"] == pytest.approx(1.0)
    assert "detect_anomaly" in f.remedies[0].call


def test_nonfinite_loss_alone():
    bad = step_series(loss=np.array([math.inf]))
    (f,) = diagnose(make_run([step_series(), bad]))
    assert f.kind == "nonfinite" and f.where == {"step": 1} and f.evidence["layer"] is None


def test_learning_rate_from_lr_and_from_weight_change():
    # grad/weight = 0.1 everywhere: the update ratio is lr·0.1
    run = make_run([step_series()] * 3)
    (big,) = diagnose(run, lr=20.0)
    assert (big.kind, big.severity) == ("learning_rate", "error")
    assert big.evidence["update_to_weight_median"] == pytest.approx(2.0)
    assert "too large" in big.summary
    (small,) = diagnose(run, lr=1e-5)
    assert "too small" in small.summary and small.severity == "warning"
    assert diagnose(run, lr=1e-2) == []
    assert diagnose(run) == []  # weights unchanged: no evidence either way
    # Adam: lr·√n/||θ|| = 1e-3·√10/10
    (adam,) = diagnose(run, lr=1.0, optimizer="adam")
    assert adam.evidence["update_to_weight_median"] == pytest.approx(math.sqrt(10) / 10)
    with pytest.raises(BackprobeError, match="optimizer"):
        diagnose(run, lr=1.0, optimizer="lion")


def test_learning_rate_lower_bound_from_weight_norms_and_recorded_lr():
    steps = [
        step_series(weight_norm=[10.0 * 1.5**i, NAN, 10.0 * 1.5**i, NAN, 10.0 * 1.5**i])
        for i in range(4)
    ]
    (f,) = diagnose(make_run(steps))
    assert f.evidence["estimated_from"] == "weight_change"
    assert f.evidence["update_to_weight_median"] == pytest.approx(0.5)
    recorded = [{**s, USER_PREFIX + "lr": np.array([1e-6])} for s in [step_series()] * 3]
    (g,) = diagnose(make_run(recorded))
    assert g.evidence["lr"] == pytest.approx(1e-6) and "too small" in g.summary


def test_plateau_needs_a_flat_loss_and_starving_layers():
    starving = [1e-3, NAN, 0.5, NAN, 1.0]  # 1e-3: a plateau warning, not a vanishing one
    flat = [step_series(grad_norm=starving, loss=np.array([2.0])) for _ in range(10)]
    (f,) = [f for f in diagnose(make_run(flat)) if f.kind == "plateau"]
    assert f.where["layers"] == ["fc0"] and f.where["steps"] == [5, 9]
    assert f.evidence["relative_change"] == 0.0
    falling = [step_series(grad_norm=starving, loss=np.array([2.0 - 0.1 * i])) for i in range(10)]
    assert "plateau" not in kinds(diagnose(make_run(falling)))
    fed = [step_series(loss=np.array([2.0])) for _ in range(10)]
    assert "plateau" not in kinds(diagnose(make_run(fed)))


def test_through_time_from_profiles():
    t = 20
    decay = 0.5 ** np.arange(t)  # 0.5^19 ≈ 1.9e-6 at the longest lag
    profiles = [
        {
            ("rnn", "decay"): decay,
            ("rnn", "signal"): decay[::-1],  # a loss at the end only: ||dL/dh_t|| decays too
            ("rnn", "theory"): np.array([0.5, 1.0]),
        }
    ] * 2
    (f,) = diagnose(make_run([step_series()] * 2, profiles))
    assert (f.kind, f.severity) == ("vanishing_through_time", "warning")
    assert f.evidence["decay_per_step"] == pytest.approx(0.5, rel=1e-6)
    assert f.evidence["memory_horizon"] == 10  # 0.5^10 < 1e-3
    assert f.evidence["eta"] == pytest.approx(0.5)
    grow = [{**p, ("rnn", "decay"): 2.0 ** np.arange(t)} for p in profiles]
    (g,) = diagnose(make_run([step_series()] * 2, grow))
    assert (g.kind, g.severity) == ("exploding_through_time", "warning")


def test_a_through_time_finding_states_the_numbers_the_time_view_prints():
    """λ1 drifts while training: the finding's λ1, γ and horizon are the last profiled
    step's, as `backprobe show --time` prints them, not a median beside them."""
    from rich.console import Console

    from backprobe.report.through_time import time_table

    t = 20
    profiles = [
        {
            ("rnn", "decay"): base ** np.arange(t),
            ("rnn", "signal"): (base ** np.arange(t))[::-1],
            ("rnn", "theory"): np.array([lam, 1.0]),
        }
        for base, lam in ((0.5, 0.50), (0.6, 0.62), (0.7, 0.74))
    ]
    run = make_run([step_series()] * 3, profiles)
    (f,) = diagnose(run)
    assert f.evidence["lambda1_W_hh"] == pytest.approx(0.74, rel=1e-6)
    assert f.evidence["memory_horizon"] == run.memory_horizon("rnn")[-1]
    assert "λ1(W_hh) = 0.74" in f.cause or "λ1(W_hh) = 0.74" in f.summary
    console = Console(record=True, width=200)
    console.print(time_table(run, "rnn"))
    assert "λ1 = 0.74" in console.export_text()


def test_thresholds_are_checked():
    with pytest.raises(BackprobeError, match="vanishing_error"):
        DiagnoseThresholds(vanishing_warning=1e-9)
    assert dataclasses.replace(DiagnoseThresholds(), dead_warning=0.8).dead_warning == 0.8


def test_findings_round_trip_through_json():
    bad = step_series(first_nonfinite=np.array([1.0, 0.0]))
    run = make_run([step_series(dead=[NAN, NAN, NAN, 1.0, NAN]), bad])
    for f in bp.findings(run, lr=10.0):
        assert bp.Finding.from_dict(json.loads(json.dumps(f.to_dict()))) == f


def test_rules_read_only_the_steps_before_the_first_nonfinite_one():
    garbage = step_series(
        grad_norm=[NAN, NAN, 1e-9, NAN, 1.0],
        dead=[NAN, NAN, NAN, 1.0, NAN],
        first_nonfinite=np.array([0.0, 1.0]),
    )
    assert kinds(diagnose(make_run([step_series(), garbage]))) == ["nonfinite"]
    assert kinds(diagnose(make_run([garbage]))) == ["nonfinite"]
    starving = step_series(grad_norm=[1e-5, NAN, 1.0, NAN, 1.0])
    assert kinds(diagnose(make_run([starving, garbage]))) == ["nonfinite", "vanishing"]
