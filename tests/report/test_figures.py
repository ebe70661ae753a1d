"""Figures: their axes hold exactly the run's numbers, on the scales the docstrings
promise; the time-profile bound is a true bound on a real recurrence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm, to_rgba
from numpy.testing import assert_allclose, assert_array_equal

import backprobe as bp
from backprobe.diagnose.finding import Finding
from backprobe.errors import BackprobeError
from backprobe.report import figures as F
from backprobe.theory.bounds import hochreiter_bound
from backprobe.theory.jacobian import BAND, isometry_summary

from ..store.helpers import record
from .helpers import GAMMA, LAMBDA1, STEPS, T, planted_run


def _lines(ax):
    """The data lines of an axes (not the reference lines spanning it)."""
    return [
        line for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")
    ]


def _ticklabels(ax, axis="x"):
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


def test_choose_steps_spreads_from_first_to_last():
    assert_array_equal(F.choose_steps(np.arange(3)), [0, 1, 2])
    assert_array_equal(F.choose_steps(np.arange(10), 4), [0, 3, 6, 9])
    assert F.choose_steps(np.arange(0)).size == 0


def test_gradient_flow_draws_the_parameter_layers_on_a_log_scale():
    run = planted_run()
    grad = run.history("grad_norm")
    rows = [0, 9]
    fig = F.gradient_flow_figure(grad[rows], run.layers, run.steps[rows])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    keep = [0, 2, 4, 6]  # the Linear layers; the sigmoids own no parameter
    assert _ticklabels(ax) == [run.layers[i] for i in keep]
    lines = _lines(ax)
    assert [line.get_label() for line in lines] == ["step 0", "step 45"]
    for line, row in zip(lines, rows, strict=True):
        assert_array_equal(line.get_xdata(), np.arange(4))
        assert_array_equal(line.get_ydata(), grad[row, keep])
    # falling toward the input: the vanishing picture
    assert np.all(np.diff(lines[-1].get_ydata()) > 0)


def test_gradient_flow_counts_underflow_it_cannot_draw():
    values = np.array([[0.0, 1e-30, 1e-3], [0.0, 0.0, 1e-2]])
    fig = F.gradient_flow_figure(values, ["a", "b", "c"], [0, 1])
    ax = fig.axes[0]
    assert "3 values 0 (underflow)" in ax.get_title()
    assert np.isnan(_lines(ax)[0].get_ydata()[0])


def test_heatmap_holds_every_step_and_layer_with_input_at_top():
    run = planted_run()
    grad = run.history("grad_norm")
    fig = F.heatmap_figure(grad, run.layers, run.steps)
    ax = fig.axes[0]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    assert isinstance(mesh.norm, LogNorm)
    keep = [0, 2, 4, 6]
    assert_array_equal(np.asarray(mesh.get_array()).reshape(4, len(STEPS)), grad[:, keep].T)
    top, bottom = ax.get_ylim()
    assert top > bottom  # inverted: row 0 (the input layer) at the top
    assert _ticklabels(ax, "y") == [run.layers[i] for i in keep]
    # cells are centred on the recorded steps
    assert ax.get_xlim() == pytest.approx((STEPS[0] - 2.5, STEPS[-1] + 2.5))


def test_gain_marks_one_and_draws_each_step():
    run = planted_run()
    gain = run.history("gain")
    fig = F.gain_figure(gain[[3]], run.layers, run.steps[[3]])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert any(np.all(np.asarray(line.get_ydata()) == 1.0) for line in ax.get_lines())
    (line,) = [line for line in _lines(ax) if line.get_label().startswith("step")]
    assert_allclose(line.get_ydata(), gain[3, 1:])  # the first layer has no gain


def test_saturation_bars_are_the_fractions_in_percent():
    run = planted_run()
    sat, dead = run.history("saturated")[-1], run.history("dead")[-1]
    fig = F.saturation_figure(sat, dead, run.layers, int(run.steps[-1]))
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    sigmoid = [1, 3, 5, 7]
    assert_allclose(heights[:4], 100 * sat[sigmoid])
    assert_allclose(heights[4:], 0)
    assert ax.get_ylim() == (0, 100)
    assert "step 45" in ax.get_title()


def _tanh_rnn_profile(W: torch.Tensor, steps: int, seed: int = 0) -> np.ndarray:
    """||dL/dh_t|| for t = 0…T−1 of h_t = tanh(W h_(t−1) + x_t), loss reading h_T only."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.zeros(W.shape[0], dtype=torch.float64, requires_grad=True)
    states = []
    for _ in range(steps):
        h = torch.tanh(W @ h + torch.randn(W.shape[0], generator=gen, dtype=torch.float64))
        h.retain_grad()
        states.append(h)
    h.pow(2).sum().backward()
    return np.array([float(s.grad.norm()) for s in states])


@pytest.mark.parametrize("scale", [0.6, 1.5])
def test_time_profile_bound_lies_above_a_real_recurrence(scale):
    torch.manual_seed(1)
    W = scale * torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    profile = _tanh_rnn_profile(W, 15)
    bound = hochreiter_bound(W, "tanh", range(15))
    fig = F.time_profile_figure(profile, [7], bound=bound, layer="rnn")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "rnn" in ax.get_title()
    drawn, anchored = ax.get_lines()
    assert_array_equal(drawn.get_ydata(), profile)
    expected = profile[-1] * scale ** (14 - np.arange(15))
    assert_allclose(anchored.get_ydata(), expected, rtol=1e-12)
    # the bound holds: ||dL/dh_t|| <= ||dL/dh_T||·η^(T−t) with η = γ·λ1 = scale
    assert np.all(profile <= anchored.get_ydata() * (1 + 1e-9))


def test_time_profile_per_step_bounds_and_missing_ones():
    profile = np.vstack([np.ones(5), 2 * np.ones(5)])
    bound = np.vstack([0.5 ** np.arange(5), np.full(5, np.nan)])  # gated: no bound
    fig = F.time_profile_figure(profile, [0, 1], bound=bound)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3  # two profiles and one bound
    assert_allclose(lines[2].get_ydata(), 0.5 ** np.arange(5)[::-1])


def test_jacobian_decay_marks_the_memory_horizon():
    decay = np.vstack([0.5 ** np.arange(T), 0.99 ** np.arange(T)])
    horizon = np.array([10.0, np.inf])
    bound = 0.75 ** np.arange(T)
    fig = F.jacobian_decay_figure(decay, [0, 9], horizon, threshold=1e-3, bound=bound)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = ax.get_lines()
    labels = [line.get_label() for line in lines]
    assert labels[0] == "step 0: 10" and "step 9: never" in labels
    verticals = [line for line in lines if np.ptp(np.asarray(line.get_xdata(), float)) == 0]
    assert [line.get_xdata()[0] for line in verticals] == [10.0]  # none for inf
    threshold = next(line for line in lines if line.get_label() == "0.001 × lag 0")
    assert_allclose(threshold.get_ydata(), 1e-3)
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert len(dashed) == 2  # the bound, in each step's colour
    for drawn_bound in dashed:
        assert_allclose(drawn_bound.get_ydata(), bound)
    assert 0.5**10 < 1e-3 < 0.5**9  # the planted horizon is the first lag below


def test_jacobian_spectrum_draws_sorted_values_and_the_band():
    rng = np.random.default_rng(0)
    spectra = {"a": rng.uniform(0.1, 3, (3, 5)), "b": rng.uniform(0.9, 1.1, (2, 4))}
    fig = F.jacobian_spectrum_figure(spectra)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = _lines(ax)
    for line, (name, s) in zip(lines, spectra.items(), strict=True):
        assert_array_equal(line.get_ydata(), np.sort(s.ravel())[::-1])
        assert line.get_label().startswith(name)
        assert isometry_summary(s).verdict in line.get_label()
    band = ax.patches[0].get_path().get_extents().transformed(ax.patches[0].get_transform())
    assert band is not None
    assert "isometric" in lines[1].get_label()
    assert f"{BAND[0]:g}–{BAND[1]:g}" in ax.get_legend_handles_labels()[1][0]


def test_loss_marks_findings_by_step_and_severity():
    run = planted_run()
    findings = [
        Finding("vanishing", "error", "first layer starves", step=20),
        Finding("saturation", "warning", "sigmoids saturate", step=35),
        Finding("initialisation", "info", "whole run"),
    ]
    fig = F.loss_figure(run.steps, run.history("loss"), findings)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    loss, *marks = ax.get_lines()
    assert_array_equal(loss.get_xdata(), run.steps)
    assert_array_equal(loss.get_ydata(), run.history("loss"))
    assert [m.get_xdata()[0] for m in marks] == [20, 35]
    assert to_rgba(marks[0].get_color()) == to_rgba(F.SEVERITY_COLOURS["error"])
    assert [m.get_label() for m in marks] == ["error: vanishing", "warning: saturation"]
    assert "1 finding about the whole run" in ax.get_title()


def test_loss_with_a_nonpositive_value_stays_linear():
    fig = F.loss_figure(np.arange(3), np.array([1.0, -0.5, np.nan]))
    assert fig.axes[0].get_yscale() == "linear"


def test_run_figures_of_a_recorded_run(tmp_path):
    probe = record(tmp_path / "runs.db", steps=9)
    figures = F.run_figures(probe)
    assert list(figures) == ["loss", "gradient_flow", "heatmap", "gain", "saturation"]
    grad = probe.history("grad_norm")
    rows = F.choose_steps(probe.steps)
    lines = _lines(figures["gradient_flow"].axes[0])
    assert [line.get_label() for line in lines] == [f"step {s}" for s in probe.steps[rows]]
    for line, row in zip(lines, rows, strict=True):
        assert_array_equal(line.get_ydata(), grad[row, [0, 2]])  # the two Linear layers
    only = F.run_figures(probe, include=["loss"], steps=[2])
    assert list(only) == ["loss"]
    with pytest.raises(BackprobeError, match="Step 99 was not recorded"):
        F.run_figures(probe, steps=[99])


def test_run_figures_draw_the_recurrent_profiles_with_their_bound():
    run = planted_run()
    figures = F.run_figures(run)
    assert "time_profile:rnn" in figures and "jacobian_decay:rnn" in figures
    profile = run.time_profile("rnn")
    rows = np.flatnonzero(np.isfinite(profile).any(axis=1))
    assert rows.size == 5  # every other step
    ax = figures["time_profile:rnn"].axes[0]
    steps = [line.get_label() for line in ax.get_lines() if line.get_label().startswith("step")]
    assert steps == [f"step {s}" for s in run.steps[rows[F.choose_steps(rows)]]]
    decay_ax = figures["jacobian_decay:rnn"].axes[0]
    bound = next(line for line in decay_ax.get_lines() if line.get_label() == F.BOUND_LINE)
    assert_allclose(bound.get_ydata(), (GAMMA * LAMBDA1) ** np.arange(T), rtol=1e-6)
    verticals = {
        line.get_xdata()[0]
        for line in decay_ax.get_lines()
        if np.ptp(np.asarray(line.get_xdata(), float)) == 0 and len(line.get_xdata()) == 2
    }
    assert verticals == {10.0}  # 0.5^10 < 1e-3 < 0.5^9
    assert not F.run_figures(planted_run(recurrent=None), include=["time_profile"])


def test_a_run_without_steps_has_no_figures():
    run = planted_run()
    empty = type(run)()
    empty.set_layers(run.layer_info)
    assert F.run_figures(empty) == {}


def test_save_writes_png_and_svg(tmp_path):
    fig = F.loss_figure(np.arange(3), np.array([3.0, 2.0, 1.0]))
    png = F.save(fig, tmp_path / "sub" / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = F.save(fig, tmp_path / "loss.svg").read_text()
    assert "<svg" in svg
    assert F.png_bytes(fig)[:4] == b"\x89PNG"
    assert F.svg_text(fig).lstrip().startswith("<?xml")
    with pytest.raises(BackprobeError, match=r"\.png or \.svg"):
        F.save(fig, tmp_path / "loss.jpg")


def test_shape_errors_say_what_was_expected():
    with pytest.raises(BackprobeError, match="Expected 3 layer names"):
        F.gradient_flow_figure(np.ones((1, 3)), ["a", "b"], [0])
    with pytest.raises(BackprobeError, match="one row per step label"):
        F.gain_figure(np.ones((2, 3)), ["a", "b", "c"], [0])
    with pytest.raises(BackprobeError, match="bound over 4 lags"):
        F.time_profile_figure(np.ones((1, 4)), [0], bound=np.ones(3))
    with pytest.raises(BackprobeError, match="same shape"):
        F.loss_figure(np.arange(3), np.ones(2))


class _LastStateRNN(torch.nn.Module):
    """A tanh RNN read out from h_T only, so that the bound anchored at T holds."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.RNN(3, 8, batch_first=True)
        self.out = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


def test_recurrent_figures_of_a_probed_rnn_respect_the_bound():
    torch.manual_seed(0)
    model = _LastStateRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0 *= 2.0  # some directions grow, most shrink
    probe = bp.Probe(model, db=None, time_every=1, time_batch=4)
    with probe:
        for _ in range(2):  # no update: W_hh, hence the bound, stays as it is
            loss = model(torch.randn(4, 15, 3)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            model.zero_grad()
    (name,) = probe.recurrent_layers
    figures = F.recurrent_figures(probe, name)
    bound = hochreiter_bound(model.rnn.weight_hh_l0, "tanh", range(15))
    profile = probe.time_profile(name)
    ax = figures[f"time_profile:{name}"].axes[0]
    data = [line for line in ax.get_lines() if line.get_label().startswith("step")]
    assert_array_equal(data[-1].get_ydata(), profile[-1])
    anchored = next(line for line in ax.get_lines() if "bound" in line.get_label())
    assert_allclose(anchored.get_ydata(), profile[0, -1] * bound[::-1], rtol=1e-5)
    # the measured gradient through time never exceeds the theory's bound
    assert np.all(profile[0] <= anchored.get_ydata() * (1 + 1e-5))
    decay_ax = figures[f"jacobian_decay:{name}"].axes[0]
    decay = probe.jacobian_decay(name)
    assert np.all(decay[0] <= bound * (1 + 1e-5))
    horizon = probe.memory_horizon(name)[0]
    shown = "never" if np.isinf(horizon) else f"{horizon:.0f}"
    labels = [line.get_label() for line in decay_ax.get_lines()]
    assert f"step 0: {shown}" in labels and f"step 1: {shown}" in labels


def test_nothing_to_draw_is_said_not_failed():
    nothing = np.full((2, 3), np.nan)
    fig = F.heatmap_figure(nothing, ["a", "b", "c"], [0, 1])
    assert "no positive value" in fig.axes[0].get_title()
    assert F.png_bytes(fig)[:4] == b"\x89PNG"
    fig = F.gradient_flow_figure(np.zeros((1, 2)), ["a", "b"], [0])
    assert "2 values 0 (underflow)" in fig.axes[0].get_title()


def test_compare_figures_overlay_the_runs():
    run = planted_run()
    grad = run.history("grad_norm")[-1]
    fig = F.compare_flow_figure({"a": (run.layers, grad), "b": (run.layers, 2 * grad)})
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    a, b = _lines(ax)
    assert (a.get_label(), b.get_label()) == ("a", "b")
    assert_array_equal(a.get_ydata(), grad[[0, 2, 4, 6]])
    assert_array_equal(b.get_ydata(), 2 * grad[[0, 2, 4, 6]])
    assert _ticklabels(ax) == ["fc0", "fc1", "fc2", "fc3"]  # shared names label the axis
    other = F.compare_flow_figure({"a": (run.layers, grad), "b": (["x", "y"], np.ones(2))})
    assert "counted from the input" in other.axes[0].get_xlabel()
    fig = F.compare_loss_figure({"a": (run.steps, run.history("loss")), "b": ([0, 1], [2.0, 1.0])})
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert_array_equal(_lines(ax)[0].get_ydata(), run.history("loss"))
    assert_array_equal(_lines(ax)[1].get_xdata(), [0, 1])


def _legend_colours(fig) -> list[tuple[str, tuple]]:
    legend = fig.axes[0].get_legend()
    return [
        (text.get_text(), to_rgba(handle.get_color()))
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
    ]


@pytest.mark.parametrize("figure", ["time_profile", "jacobian_decay"])
def test_no_two_legend_entries_share_a_colour(figure):
    """Regression: the bound's entry took the colour of the first step's."""
    rows = np.vstack([0.5 ** np.arange(T), 0.9 ** np.arange(T)])
    bound = 0.75 ** np.arange(T)
    if figure == "time_profile":
        fig = F.time_profile_figure(rows[:, ::-1], [0, 9], bound=bound)
    else:
        fig = F.jacobian_decay_figure(rows, [0, 9], np.array([10.0, 21.0]), bound=bound)
    entries = [(label, colour) for label, colour in _legend_colours(fig) if "×" not in label]
    assert any(label.startswith("dashed: bound") for label, _ in entries)
    colours = [colour for _, colour in entries]
    assert len(set(colours)) == len(colours), entries


@pytest.mark.parametrize(
    "loss", [np.linspace(1.6, 1.3, 50), np.geomspace(100, 0.01, 50)], ids=["narrow", "wide"]
)
def test_loss_ticks_are_plain_numbers(loss):
    """Regression: a loss within a decade had ticks like 1.46×10⁰."""
    for fig in (
        F.loss_figure(np.arange(50), loss),
        F.compare_loss_figure({"a": (np.arange(50), loss)}),
    ):
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
        shown = [label for label in labels if label]
        assert len(shown) >= 2
        for label in shown:
            assert float(label) > 0, label  # "1.35", "2.0e3": no ×10, no mathtext
