"""Per-step summaries of a run that several rules read: which layers own parameters,
the total parameter-gradient norm, and the steps at which no gradient was measured."""

from __future__ import annotations

import numpy as np

from ..errors import BackprobeError
from ..store.view import RunView


def param_layers(run: RunView) -> np.ndarray:
    """Indices of layers with trainable parameters."""
    return np.asarray([i.index for i in run.layer_info if i.n_params > 0], dtype=np.int64)


def total_grad_norms(run: RunView) -> np.ndarray:
    """The parameter-gradient norm over all probed parameters, float64 [S]: inf where a
    layer's norm overflowed float32, NaN where no layer has a finite one."""
    grad = run.history("grad_norm")[:, param_layers(run)]
    finite = np.where(np.isfinite(grad), grad, np.nan)
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sqrt(np.nansum(finite**2, axis=1))
    total[~np.isfinite(grad).any(axis=1)] = np.nan
    total[np.isposinf(grad).any(axis=1)] = np.inf
    return total


def no_gradient_rows(run: RunView) -> np.ndarray:
    """Rows at which no probed parameter had a gradient, bool [S]: the run-level series
    ``gradients`` is 0; where a run has no such series (runs recorded before it), every
    parameter gradient and every backward signal is missing."""
    layers = param_layers(run)
    grad = run.history("grad_norm")[:, layers]
    signal = run.history("signal_norm")
    missing = np.isnan(grad).all(axis=1) & np.isnan(signal).all(axis=1) & (layers.size > 0)
    try:
        stored = run.history("gradients")
    except BackprobeError:  # a run recorded before the series existed
        return missing
    table = np.asarray(stored, dtype=np.float64).reshape(run.steps.size, -1)
    counts = table[:, 0] if table.shape[1] else np.full(run.steps.size, np.nan)
    return np.where(np.isnan(counts), missing, counts == 0)
