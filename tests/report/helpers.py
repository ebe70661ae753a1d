"""Planted runs for the report tests: known arrays in a MemoryRun, so that every figure
and table can be checked against the numbers that went in."""

from __future__ import annotations

import numpy as np

from backprobe.diagnose.finding import Finding, Remedy
from backprobe.store.view import LAYER_SERIES, LayerInfo, MemoryRun

#: Planted steps; the recurrent profile is stored at every other one.
STEPS = np.arange(0, 50, 5)
#: Sequence length of the planted recurrent layer.
T = 12
#: λ1 and γ of the planted recurrent layer: η = γ·λ1 = 0.75.
LAMBDA1, GAMMA = 3.0, 0.25
#: A layer or run name that is also markup.
EVIL = "<script>alert(1)</script>"

FINDINGS = [
    Finding(
        "saturation",
        "warning",
        "sigmoids saturate in act2",
        where={"layers": ["act2"]},
        evidence={"saturated": 0.83},
        cause="σ' is near 0 for large |a|",
        step=30,
    ),
    Finding(
        "vanishing",
        "error",
        "the first layer receives 1e-8 of the last layer's gradient",
        where={"layers": ["fc0", "fc1"]},
        evidence={"ratio": 1e-8, "per_layer_gain": [0.1, 0.2]},
        cause="a product of small local derivatives",
        remedies=(Remedy("He initialisation", "bp.remedies.init_(model, 'he')", "keeps χ1 at 1"),),
        references=("Hochreiter 1991",),
        step=45,
    ),
]


def planted_run(
    names: list[str] | None = None,
    recurrent: str | None = "rnn",
) -> MemoryRun:
    """Alternating Linear / Sigmoid layers whose gradient norm falls 100× per Linear toward
    the input (a vanishing profile), a decreasing loss, and, if ``recurrent`` names one,
    a recurrent layer with time profiles at every other step (its decay 0.5^lag, so the
    memory horizon at 1e-3 is lag 10)."""
    names = names or [f"fc{i // 2}" if i % 2 == 0 else f"act{i // 2}" for i in range(8)]
    n = len(names)
    linear = np.arange(n) % 2 == 0
    run = MemoryRun()
    run.set_layers(
        [
            LayerInfo(
                i, name, *(("Linear", "", 10) if linear[i] else ("Sigmoid", "sigmoid", 0)), False
            )
            for i, name in enumerate(names)
        ]
    )
    rng = np.random.default_rng(0)
    for k, step in enumerate(STEPS):
        series = {stat: rng.uniform(0.1, 0.9, n) for stat in LAYER_SERIES}
        series["grad_norm"] = np.where(linear, 10.0 ** (np.arange(n) - n - k / 4.0), np.nan)
        series["weight_norm"] = np.where(linear, 2.0, np.nan)
        series["saturated"] = np.where(linear, np.nan, np.linspace(0.1, 0.8, n))
        series["dead"] = np.full(n, np.nan)
        series["nonfinite_out"] = np.zeros(n)
        series["nonfinite_grad"] = np.zeros(n)
        series["loss"] = np.array([1.0 / (1 + step)])
        series["first_nonfinite"] = np.array([-1.0, -1.0])
        profiles = {}
        if recurrent and k % 2 == 0:
            profiles = {
                (recurrent, "signal"): 0.6 ** np.arange(T)[::-1] * (1 + k),
                (recurrent, "decay"): 0.5 ** np.arange(T),
                (recurrent, "theory"): np.array([LAMBDA1, GAMMA]),
            }
        run.append(int(step), series, profiles)
    return run
