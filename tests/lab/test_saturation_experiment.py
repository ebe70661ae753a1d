"""The ``saturation`` experiment (Glorot & Bengio 2010): a sigmoid network's top hidden
layer falls to near 0 and stays there; tanh and the normalised init do not.

The quick configuration is too short to see the plateau end; the full one (marked slow)
sees it, on seed 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from backprobe.lab.experiments import run_experiment
from backprobe.lab.experiments.glorot import SATURATED, _Plateau, activation_figure
from backprobe.store.run import open_run


def _run(
    db: Path | None, *variants: str, quick: bool = True, settings: tuple[str, ...] = ()
) -> dict[str, dict[str, float]]:
    results = run_experiment(
        "saturation",
        variants=list(variants),
        quick=quick,
        settings=settings,
        db=db,
        console=Console(quiet=True),
    )
    return {r.job.variant: r.metrics for r in results}


def test_plateau_is_read_from_the_top_layers_mean() -> None:
    plateau = _Plateau("sigmoid")
    means = [0.5, 0.2, 0.05, 0.03, 0.02, 0.025, 0.035, 0.05, 0.2]
    rows = [plateau.update(100 * i, m) for i, m in enumerate(means)]
    assert rows[1]["saturation_step"] != rows[1]["saturation_step"]  # NaN: not yet
    assert rows[2]["saturation_step"] == 200 and rows[3]["plateau_steps"] == 100
    # Twice the lowest mean (0.02) is reached again at step 700: the plateau ends there.
    assert math.isnan(rows[6]["exit_step"]) and rows[7]["exit_step"] == 700
    assert rows[-1]["plateau_steps"] == 500 and rows[-1]["plateau_ratio"] == 2.5
    assert rows[-1]["top_mean_low"] == 0.02
    # tanh's mean 0 is the middle of its range: never saturated.
    tanh = _Plateau("tanh")
    row = [tanh.update(s, 0.0) for s in (0, 100)][-1]
    assert row["top_mean_low"] == 0.5 and row["plateau_steps"] == 0.0
    assert math.isnan(row["saturation_step"])


def test_sigmoid_top_layer_saturates_where_tanh_does_not(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    m = _run(db, "sigmoid-standard") | _run(db, "tanh-standard", settings=("steps=300",))
    sigmoid, tanh = m["sigmoid-standard"], m["tanh-standard"]
    assert sigmoid["top_mean_low"] < SATURATED / 2
    assert sigmoid["saturation_step"] <= 300 and sigmoid["plateau_steps"] >= 450
    assert tanh["top_mean_low"] > 0.4 and tanh["plateau_steps"] == 0
    # The stored statistics draw the paper's figure: one panel per run.
    runs = {v: open_run(db, f"lab/saturation/{v}/s0") for v in m}
    assert runs["sigmoid-standard"].history("act4_mean")[-1] < SATURATED
    fig = activation_figure(runs)
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) >= 4


def test_normalised_init_keeps_tanh_layers_alike_at_initialisation() -> None:
    """Glorot & Bengio's Figure 6: with the standard init tanh's activations narrow layer
    by layer (each layer's weights have n·Var(W) = 1/3); the normalised init keeps them."""
    m = _run(None, "tanh-standard", "tanh-normalised", settings=("steps=1", "eval_every=1"))
    ratio = {variant: metrics["init_std_ratio"] for variant, metrics in m.items()}
    assert ratio["tanh-standard"] < 0.3 and ratio["tanh-normalised"] > 0.6


@pytest.mark.slow
def test_full_sigmoid_plateau_ends_many_times_later_than_it_began() -> None:
    m = _run(None, "sigmoid-standard", "tanh-standard", "tanh-normalised", quick=False)
    sigmoid = m["sigmoid-standard"]
    assert sigmoid["top_mean_low"] < SATURATED / 2
    assert sigmoid["exit_step"] > 10 * sigmoid["saturation_step"]
    assert sigmoid["plateau_ratio"] > 5.0
    for variant in ("tanh-standard", "tanh-normalised"):
        assert m[variant]["top_mean_low"] > 0.4 and m[variant]["plateau_steps"] == 0
