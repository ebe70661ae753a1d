"""Rules on recurrent layers' time profiles: gradients vanishing or exploding through time.

Reads, per recurrent (sub-)layer of the run (``run.recurrent_layers``), the decay of
``||dh_T/dh_(T−lag)||`` over the lag (Pascanu et al. 2013, eq. 5), its memory horizon,
the BPTT gradient ``||dL/dh_t||`` over the time steps, and λ1 of W_hh with γ = max |σ'|
for the bound ``(γ·λ1)^lag``. The decay and ||dL/dh_t|| are judged by their median over
the recorded steps that have a profile (one odd batch decides nothing); the memory
horizon, λ1 and γ a finding states are those of the last profiled step, the numbers
``backprobe show --time`` and the report print. Runs recorded without time profiles have
no such finding.

Severity weighs how the loss depends on time. The Jacobian decay says how much of a
change of an early state reaches the end; whether that starves learning depends on where
the loss is. With a loss only at the end, ||dL/dh_t|| decays like the Jacobian toward
the start, and the early states get no gradient: the Jacobian's decay sets the severity
(``time_vanishing`` warning, ``time_vanishing_error`` error). With a loss at every step
(a language model), every state gets a gradient from its own loss, so ||dL/dh_t|| stays
roughly flat even when the Jacobian decays: what is lost is only credit for
dependencies longer than the memory horizon. When ||dL/dh_0|| is still at least
``time_vanishing`` of ||dL/dh_(T−1)||, a vanishing Jacobian is therefore a warning only
when the memory horizon is shorter than ``time_memory_warning`` steps (a forget gate
closed shut), else info (PyTorch's default LSTM/GRU at T = 35 remembers ~19 steps).
Exploding through time keeps the Jacobian's severity: growth hurts wherever the loss is.
"""

from __future__ import annotations

import numpy as np

from ..store.view import RunView
from . import advice
from ._series import clean, fmt, typical
from .finding import Finding, Kind, Severity
from .thresholds import DiagnoseThresholds


def _last_finite(values: np.ndarray) -> int | None:
    idx = np.flatnonzero(np.isfinite(values))
    return int(idx[-1]) if idx.size else None


def _last_measured(rows: np.ndarray) -> np.ndarray:
    """The last row of ``rows`` [S, ...] that is not all NaN: what the terminal and the
    report show for the last recorded step with a profile (NaN without one)."""
    measured = ~np.isnan(rows.reshape(rows.shape[0], -1)).all(axis=1)
    index = np.flatnonzero(measured)
    return rows[index[-1]] if index.size else np.full(rows.shape[1:], np.nan)


def through_time_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """One finding per recurrent (sub-)layer whose state Jacobian over the longest
    measured lag is below ``time_vanishing`` or above ``time_exploding``."""
    findings = []
    for name in getattr(run, "recurrent_layers", []):
        decay = typical(run.jacobian_decay(name))
        if decay.size < 2 or not np.isfinite(decay[0]) or decay[0] <= 0:
            continue
        last = _last_finite(decay)
        if last is None or last == 0:
            continue
        relative = float(decay[last] / decay[0])
        if t.time_vanishing <= relative <= t.time_exploding:
            continue
        vanishing = relative < t.time_vanishing
        findings.append(_finding(run, name, decay, last, relative, vanishing, t))
    return findings


def _finding(
    run: RunView,
    name: str,
    decay: np.ndarray,
    lag: int,
    relative: float,
    vanishing: bool,
    t: DiagnoseThresholds,
) -> Finding:
    # the numbers the terminal and the report show: those of the last profiled step
    horizon = float(_last_measured(run.memory_horizon(name)))
    lam, gamma = _last_measured(run.recurrent_theory(name))
    profile = typical(run.time_profile(name))
    ends = _last_finite(profile)
    signal_ratio = (
        float(profile[0] / profile[ends])
        if ends is not None and ends > 0 and profile[ends] > 0
        else float("nan")
    )
    # a loss at every step: the gradient reaching the first state did not vanish
    every_step = vanishing and signal_ratio >= t.time_vanishing
    eta = lam * gamma
    per_step = relative ** (1.0 / lag) if relative > 0 else 0.0
    module = name.split("[")[0]
    kind: Kind = "vanishing_through_time" if vanishing else "exploding_through_time"
    limit = t.time_vanishing_error if vanishing else t.time_exploding_error
    severe = relative < limit if vanishing else relative > limit
    severity: Severity = "error" if severe else "warning"
    if every_step:
        severity = "warning" if horizon < t.time_memory_warning else "info"
    layer = run.layer_index(module) if module in run.layers else None
    gate = float(typical(run.history("gate_mean"))[layer]) if layer is not None else float("nan")
    evidence = {
        "decay_at_longest_lag": relative,
        "longest_lag": lag,
        "decay_per_step": clean(per_step),
        "memory_horizon": clean(horizon),
        "first_to_last_time_step_grad_ratio": clean(signal_ratio),
        "lambda1_W_hh": clean(lam),
        "gamma": clean(gamma),
        "eta": clean(eta),
        "pascanu_bound_at_longest_lag": clean(eta**lag) if np.isfinite(eta) else None,
        "memory_gate_mean": clean(gate),
        "loss_at_every_step": every_step,
    }
    theory = (
        f" λ1(W_hh) = {fmt(lam)} and γ = {fmt(gamma)} give η = γ·λ1 = {fmt(eta)}"
        + (", below 1: vanishing is certain." if eta < 1 else ", above 1: explosion is possible.")
        if np.isfinite(eta)
        else " The gates decide: a forget/update gate far below 1 cuts the memory path"
        + (f" (mean {gate:.2f} here)." if np.isfinite(gate) else ".")
    )
    if vanishing:
        summary = (
            f"vanishing through time in {name}: a change of the state {lag} steps back "
            f"reaches the end scaled by {fmt(relative)} (×{fmt(per_step)} per step); the memory "
            f"reaches {'beyond the sequence' if np.isinf(horizon) else f'{horizon:.0f} steps back'}"
            + (
                f"; ||dL/dh_t|| stays flat (first/last {fmt(signal_ratio)}): a loss at every "
                "step reaches every state, only longer dependencies are out of reach"
                if every_step
                else ""
            )
        )
        cause = (
            "Back-propagation through time multiplies one step Jacobian ∂h_t/∂h_(t−1) per "
            "step (W_hhᵀ·diag(σ') for a plain RNN; Pascanu et al. 2013, eq. 5); "
            f"here each shrinks the gradient ×{fmt(per_step)}, "
            f"so inputs more than ~{horizon:.0f} steps back cannot influence learning." + theory
        )
        gated = not np.isfinite(eta)
        remedies = advice.GATED_VANISHING_REMEDIES if gated else advice.TIME_VANISHING_REMEDIES
    else:
        summary = (
            f"exploding through time in {name}: a change of the state {lag} steps back "
            f"reaches the end scaled by {fmt(relative)} (×{fmt(per_step)} per step)"
        )
        cause = (
            "Back-propagation through time multiplies one step Jacobian ∂h_t/∂h_(t−1) per "
            "step (W_hhᵀ·diag(σ') for a plain RNN); "
            f"here each grows the gradient ×{fmt(per_step)}, so gradients from long ago "
            "dominate and updates explode." + theory
        )
        remedies = advice.TIME_EXPLODING_REMEDIES
    return Finding(
        kind=kind,
        severity=severity,
        summary=summary,
        where={"layers": [module], "recurrent": name, "time_steps": [0, lag]},
        evidence=evidence,
        cause=cause,
        remedies=remedies,
        references=advice.TIME_REFERENCES,
    )
