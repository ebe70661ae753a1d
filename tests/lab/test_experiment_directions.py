"""Each experiment's quick configuration points the way the papers (and the seeds) say.

Runs are kept in memory (db=None); storage is covered by test_experiments_quick.py.
"""

from __future__ import annotations

import itertools
import math

import pytest
from rich.console import Console

from backprobe.lab.experiments import get_experiment, run_experiment
from backprobe.lab.experiments.base import PerSeed
from backprobe.lab.experiments.feedforward import (
    SCALE_SIGMA_W2,
    DepthConfig,
    _depth_rows,
    depth_grid,
    six_xi,
)
from backprobe.theory.meanfield import mean_field


def _quick(name: str, *variants: str, settings: tuple[str, ...] = ()) -> dict[str, dict]:
    results = run_experiment(
        name,
        variants=list(variants),
        settings=settings,
        quick=True,
        db=None,
        console=Console(quiet=True),
    )
    return {r.job.variant: r.metrics for r in results}


def test_adding_lstm_beats_the_baseline_and_the_tanh_rnn() -> None:
    m = _quick("adding", "lstm-T100", "rnn-T100")
    assert m["lstm-T100"]["test_mse"] < 0.5 * m["lstm-T100"]["baseline"]
    assert m["lstm-T100"]["test_mse"] < m["rnn-T100"]["test_mse"]


def test_copy_lstm_remembers_more_than_the_rnn() -> None:
    m = _quick("copy", "lstm", "rnn")
    assert m["lstm"]["test_loss"] < 0.8 * m["lstm"]["baseline"]
    assert m["lstm"]["test_loss"] < m["rnn"]["test_loss"]


def test_temporal_order_clipping_and_omega_solve_what_sgd_does_not() -> None:
    m = _quick("temporal-order", "sgd", "sgd-clip-omega")
    assert m["sgd-clip-omega"]["test_error"] < 0.05
    assert m["sgd"]["test_error"] > m["sgd-clip-omega"]["test_error"] + 0.3


def test_latch_success_falls_with_length() -> None:
    m = _quick("latch", "rnn-T10", "rnn-T200")
    assert m["rnn-T10"]["test_accuracy"] > 0.9
    assert m["rnn-T200"]["test_accuracy"] < 0.75


def test_autocomplete_rnn_forgets_the_first_words_over_a_long_filler() -> None:
    m = _quick("autocomplete", "rnn-L5", "rnn-L100")
    assert m["rnn-L5"]["test_accuracy"] > 0.9
    assert m["rnn-L100"]["test_accuracy"] < 0.7


def test_w_rec_small_vanishes_within_pascanus_bound() -> None:
    m = _quick("w-rec", "lambda0.5", "lambda3")
    assert m["lambda0.5"]["time_ratio_init"] < 0.5**49
    assert m["lambda3"]["time_ratio_init"] > 1e6 * m["lambda0.5"]["time_ratio_init"]


def test_short_network_learns_where_the_50_layer_sigmoid_does_not() -> None:
    m = _quick("short-vs-long", "short-sigmoid", "deep-sigmoid")
    assert m["short-sigmoid"]["test_accuracy"] > m["deep-sigmoid"]["test_accuracy"] + 0.2
    assert m["deep-sigmoid"]["grad_ratio"] < 1e-6


def test_depth_sweep_deep_sigmoid_fails_where_shallow_relu_trains() -> None:
    m = _quick("depth-sweep", "relu-he-d8", "sigmoid-xavier-d64")
    assert m["relu-he-d8"]["test_accuracy"] > 0.6
    assert m["sigmoid-xavier-d64"]["test_accuracy"] < 0.4


def _per_seed(values: list[float]) -> PerSeed:
    return PerSeed(dict(enumerate(values)))


def test_depth_scale_rows_give_each_seeds_deepest_trainable_depth_against_six_xi() -> None:
    variants = {f"d{d}": {"depth": d} for d in (6, 12, 24, 48)}
    results = {
        "d6": {"test_accuracy": _per_seed([0.9, 0.8])},
        "d12": {"test_accuracy": _per_seed([0.7, 0.7])},
        "d24": {"test_accuracy": _per_seed([0.5, 0.8])},  # seed 1 trains here, seed 0 not
        "d48": {"test_accuracy": _per_seed([0.3, 0.2])},
    }
    config = DepthConfig(trainable_accuracy=0.6)
    row, ratio = _depth_rows("x", {"g": list(variants)}, variants, results, config, {"g": 13.8})
    assert row.values == (12.0, 24.0) and row.seed_ids == (0, 1) and row.value == 18
    assert (row.low, row.high) == (12.0, 24.0)
    assert row.verdict == "reproduced" and row.holds_on == "2/2 seeds"
    assert ratio.values == pytest.approx((12 / 13.8, 24 / 13.8))
    row, _ = _depth_rows("x", {"g": list(variants)}, variants, results, config, {"g": 30.0})
    assert row.verdict == "partly reproduced" and row.holds_on == "1/2: fails on seed 0"
    row, _ = _depth_rows("x", {"g": ["d48"]}, variants, results, config, {"g": 60.0})
    assert math.isnan(row.value) and row.verdict == "not reproduced"
    # A seed that trains at the deepest depth tried gives a lower bound, and says so.
    (row, _) = _depth_rows("x", {"g": ["d6", "d12"]}, variants, results, config, {"g": 13.8})
    assert "lower bound" in row.note and "seeds 0, 1" in row.note


def test_six_xi_is_the_correlation_depth_in_both_phases() -> None:
    # Ordered phase: 6ξ_c = 6/|ln χ1|, deeper as σ_w grows; chaotic σ_w² = 4: 6ξ_c = 41.9
    # (Schoenholz et al. 2017), where 6/ln χ1 would give 20.4.
    assert six_xi(0.8) == pytest.approx(mean_field("tanh", 0.8**0.5, 0.05**0.5).trainable_depth)
    assert 10 < six_xi(0.8) < six_xi(1.0) < six_xi(1.2) < 60
    assert six_xi(4.0) == pytest.approx(41.9, abs=0.05)
    for s2 in SCALE_SIGMA_W2:
        grid = depth_grid(six_xi(s2))
        # Neighbours at most 15 % apart from 0.5 × 6ξ_c on.
        near = [(a, b) for a, b in itertools.pairwise(grid) if a >= 0.5 * six_xi(s2)]
        assert all(b / a <= 1.15 for a, b in near)
        assert grid[-1] >= min(2.0 * six_xi(s2), 37) and grid[0] <= 0.55 * six_xi(s2)


@pytest.mark.parametrize("variant", ["sw2=1-d11"])
def test_depth_scale_shallow_mean_field_net_trains(variant: str) -> None:
    m = _quick("depth-scale", variant, "sw2=0.8-d37")
    assert m[variant]["test_accuracy"] > m["sw2=0.8-d37"]["test_accuracy"] + 0.2


def test_autocomplete_summary_is_the_longest_filler_each_cell_solves() -> None:
    experiment = get_experiment("autocomplete")
    results = {
        "rnn-L5": {"test_accuracy": _per_seed([1.0])},
        "rnn-L20": {"test_accuracy": _per_seed([0.93])},
        "rnn-L50": {"test_accuracy": _per_seed([0.55])},
        "lstm-L5": {"test_accuracy": _per_seed([1.0])},
        "lstm-L100": {"test_accuracy": _per_seed([0.97])},
    }
    assert experiment.summarise is not None
    rows = {r.variant.split(" ")[0]: r for r in experiment.summarise(results, None)}
    assert set(rows) == {"rnn", "lstm"}  # gru has no runs: no row
    assert rows["rnn"].value == 20 and rows["lstm"].value == 100
    assert rows["rnn"].metric == "longest_filler_solved" and rows["rnn"].seeds == 1
