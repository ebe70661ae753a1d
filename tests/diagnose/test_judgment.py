"""One judgment: the verdict from the findings, blow-ups before underflow, steps without a
gradient named, the depth reference chosen by topology, through-time severity weighed by
where the loss is. Synthetic runs with planted numbers (see test_rules)."""

from __future__ import annotations

import numpy as np

import backprobe as bp
from backprobe.diagnose import diagnose
from backprobe.diagnose.finding import KINDS, Finding
from backprobe.diagnose.verdict import STATUS_OF_KIND, verdict_of
from backprobe.store.view import LayerInfo, MemoryRun

from .test_rules import LAYERS, NAN, kinds, make_run, step_series


def test_every_kind_has_one_status_and_the_verdict_names_the_most_severe_finding():
    assert set(STATUS_OF_KIND) == set(KINDS)
    info = Finding("vanishing_through_time", "info", "short memory")
    warn = Finding("saturation", "warning", "saturated sigmoid: 60 %", where={"layers": ["act0"]})
    err = Finding("exploding", "error", "exploding gradient: 3e7", where={"layers": ["fc0", "fc1"]})
    v = verdict_of([info, warn, err], 5, ["fc0", "act0", "fc1"], ratio=0.5)
    assert (v.status, v.step, v.layer, v.finding) == ("exploding", 5, 2, err)
    assert v.message == "exploding gradient: 3e7 (and 1 more warning or error)"
    assert verdict_of([info, warn], 5, ["fc0", "act0"]).message.startswith("vanishing: saturated")
    healthy = verdict_of([info], 5, ratio=0.5)
    assert healthy.status == "healthy" and "0.5" in healthy.message


def test_equal_severity_exploding_outranks_vanishing():
    low = Finding("vanishing", "error", "vanishing gradient")
    high = Finding("exploding", "error", "exploding gradient")
    assert verdict_of([low, high], 0).status == "exploding"


def test_verdict_agrees_with_the_findings_of_the_run():
    run = make_run([step_series(grad_norm=[1e-7, NAN, 1.0, NAN, 1.0])] * 2)
    (f,) = diagnose(run)
    v = bp.verdict(run)
    assert v.finding == f and v.message == f.summary and v.status == "vanishing"
    assert v.ratio == np.float64(1e-7) or abs(v.ratio / 1e-7 - 1) < 1e-6


def test_overflow_then_underflow_is_exploding_from_where_growth_began():
    calm = [step_series(grad_norm=[1.0, NAN, 1.0, NAN, 1.0]) for _ in range(3)]
    grow = [step_series(grad_norm=[10.0**k, NAN, 10.0**k, NAN, 10.0**k]) for k in (2, 5, 9)]
    under = [step_series(grad_norm=[0.0, NAN, 0.0, NAN, 1.0], signal_norm=[0.0] * 4 + [1.0])] * 3
    run = make_run(calm + grow + under)
    found = diagnose(run)
    assert "vanishing" not in kinds(found)
    (f,) = [f for f in found if f.kind == "exploding"]
    assert (f.severity, f.step, f.evidence["peak_step"]) == ("error", 2, 5)
    assert "underflowed to 0 later" in f.summary
    assert bp.verdict(run).status == "exploding"


class WithGradients(MemoryRun):
    """A run that also stores the run-level series ``gradients``."""

    def __init__(self, counts: list[float]) -> None:
        super().__init__()
        self.counts = np.asarray(counts, dtype=np.float64)

    def history(self, stat: str) -> np.ndarray:
        return self.counts[: self.steps.size] if stat == "gradients" else super().history(stat)


def test_a_step_without_backward_is_named_not_called_non_finite():
    nothing = step_series(grad_norm=[NAN] * 5, signal_norm=[NAN] * 5)
    found = diagnose(make_run([nothing, nothing]))  # no gradients series: all NaN
    assert kinds(found) == ["no_gradient"]
    assert "call loss.backward() before probe.step()" in found[0].summary
    assert bp.verdict(make_run([nothing])).status == "unknown"
    # with the series: 0 gradients is the misuse, even where a signal was measured
    run = WithGradients([3.0, 0.0])
    run.set_layers(LAYERS)
    run.append(0, step_series())
    run.append(1, step_series(grad_norm=[NAN] * 5))
    assert kinds(diagnose(run)) == ["no_gradient"] and diagnose(run)[0].step == 1


def _tied_run(block_signal: float) -> MemoryRun:
    """wte (tied with head) → h.0 (block) with inner h.0.fc → ln_f → head (tied) → a
    params entry that did run nothing forward, and a layer that never ran."""
    layers = [
        LayerInfo(0, "wte", "Embedding", "", 10, False, shared_with="head"),
        LayerInfo(1, "h.0", "Block", "", 0, False, role="block"),
        LayerInfo(2, "h.0.fc", "Linear", "", 10, False, block="h.0"),
        LayerInfo(3, "ln_f", "LayerNorm", "", 10, False),
        LayerInfo(4, "head", "Linear", "", 0, False, shared_with="wte"),
        LayerInfo(5, "attn.out_proj", "Linear", "", 10, False, role="params"),
        LayerInfo(6, "unused", "Linear", "", 10, False, ran=False),
    ]
    run = MemoryRun()
    run.set_layers(layers)
    series = step_series(
        grad_norm=[5.0, NAN, 1e-3 * block_signal, 1.0, 5.0, 100.0, 1e-9],
        weight_norm=[10.0] * 7,
        signal_norm=[block_signal, block_signal, 1e-6, 1.0, 1.0, NAN, NAN],
        act_mean=[0.0] * 5 + [NAN, NAN],
        act_std=[1.0] * 7,
        saturated=[NAN] * 7,
        dead=[NAN] * 7,
        nonfinite_out=[0.0] * 7,
        nonfinite_grad=[0.0] * 7,
    )
    run.append(0, {k: v if v.size != 5 else np.full(7, NAN) for k, v in series.items()})
    return run


def test_tied_ends_params_entries_and_branch_layers_are_not_compared_as_a_chain():
    healthy = _tied_run(block_signal=1.0)
    assert diagnose(healthy) == []  # h.0.fc's 1e-6 signal is inside a residual branch
    assert bp.verdict(healthy).status == "healthy"
    starved = _tied_run(block_signal=1e-8)
    (f,) = diagnose(starved)
    assert (f.kind, f.severity) == ("vanishing", "error")
    assert f.where["layers"] == ["wte", "h.0", "h.0.fc"]  # the block and its branch
    v = bp.verdict(starved)
    assert (v.status == "vanishing" and v.ratio == 1e-8) or abs(v.ratio / 1e-8 - 1) < 1e-5


def test_loss_at_every_step_makes_a_decaying_jacobian_info_unless_memory_is_short():
    t = 35
    for per_step, severity, alone in ((0.68, "info", "warning"), (0.15, "warning", "error")):
        decay = per_step ** np.arange(t)
        profiles = [{("rnn", "decay"): decay, ("rnn", "signal"): np.ones(t)}] * 2
        (f,) = diagnose(make_run([step_series()] * 2, profiles))
        assert (f.kind, f.severity) == ("vanishing_through_time", severity)
        assert f.evidence["loss_at_every_step"] is True
        ended = [{**p, ("rnn", "signal"): decay[::-1]} for p in profiles]
        (g,) = diagnose(make_run([step_series()] * 2, ended))
        assert g.severity == alone and g.evidence["loss_at_every_step"] is False
