"""Each experiment's quick configuration points the way the papers (and the seeds) say.

Runs are kept in memory (db=None); storage is covered by test_experiments_quick.py.
"""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from backprobe.lab.experiments import get_experiment, run_experiment
from backprobe.lab.experiments.feedforward import DepthConfig, _depth_rows, six_xi


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


def test_depth_scale_rows_compare_the_deepest_trainable_with_six_xi() -> None:
    variants = {f"d{d}": {"depth": d} for d in (6, 12, 24, 48)}
    results = {
        "d6": {"test_accuracy": [0.9, 0.8]},
        "d12": {"test_accuracy": [0.7, 0.7]},
        "d24": {"test_accuracy": [0.5, 0.8]},  # mean 0.65: trains
        "d48": {"test_accuracy": [0.3, 0.2]},
    }
    config = DepthConfig(trainable_accuracy=0.6)
    (row,) = _depth_rows("x", {"g": list(variants)}, variants, results, config, {"g": 13.8})
    assert row.value == 24 and row.verdict == "reproduced" and row.seeds == 2
    (row,) = _depth_rows("x", {"g": list(variants)}, variants, results, config, {"g": 60.0})
    assert row.verdict == "not reproduced"
    (row,) = _depth_rows("x", {"g": ["d48"]}, variants, results, config, {"g": 60.0})
    assert math.isnan(row.value) and row.verdict == "not reproduced"
    # 6ξ from the mean-field module: χ1 < 1 in the ordered phase, deeper as σ_w grows.
    assert 10 < six_xi(0.8) < six_xi(1.0) < six_xi(1.2) < 60


@pytest.mark.parametrize("variant", ["sw2=1-d6"])
def test_depth_scale_shallow_mean_field_net_trains(variant: str) -> None:
    m = _quick("depth-scale", variant, "sw2=0.8-d72")
    assert m[variant]["test_accuracy"] > m["sw2=0.8-d72"]["test_accuracy"] + 0.2


def test_autocomplete_summary_is_the_longest_filler_each_cell_solves() -> None:
    experiment = get_experiment("autocomplete")
    results = {
        "rnn-L5": {"test_accuracy": [1.0]},
        "rnn-L20": {"test_accuracy": [0.93]},
        "rnn-L50": {"test_accuracy": [0.55]},
        "lstm-L5": {"test_accuracy": [1.0]},
        "lstm-L100": {"test_accuracy": [0.97]},
    }
    assert experiment.summarise is not None
    rows = {r.variant.split(" ")[0]: r for r in experiment.summarise(results, None)}
    assert set(rows) == {"rnn", "lstm"}  # gru has no runs: no row
    assert rows["rnn"].value == 20 and rows["lstm"].value == 100
    assert rows["rnn"].metric == "longest_filler_solved" and rows["rnn"].seeds == 1
