"""Expected probe statistics computed with plain PyTorch hooks and numpy, independently of
backprobe's own code.

A :class:`Recorder` puts ordinary forward hooks and tensor hooks on named modules of a
*copy* of the probed model and keeps everything each call saw (inputs, outputs, the
gradients reaching the outputs). :func:`expected_stats` turns that into the numbers the
probe should report, straight from the definitions, in float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from backprobe.store import LayerInfo

#: Per-layer statistics stored by the probe.
LAYER_STATS = (
    "grad_norm",
    "weight_norm",
    "signal_norm",
    "act_mean",
    "act_std",
    "saturated",
    "dead",
    "nonfinite_out",
    "nonfinite_grad",
)
#: Statistics derived from the stored ones.
DERIVED_STATS = ("grad_to_weight", "gain", "nonfinite")

#: Largest derivative of each bounded activation, for the "below 1 % of max" definition.
MAX_DERIVATIVE: dict[type[nn.Module], float] = {
    nn.Sigmoid: 0.25,
    nn.Tanh: 1.0,
    nn.Softsign: 1.0,
    nn.Hardsigmoid: 1.0 / 6.0,
    nn.Hardtanh: 1.0,  # checked after ReLU6, a Hardtanh subclass without saturation
}
DYING = (nn.ReLU, nn.ReLU6)


def float_tensors(obj: object) -> list[torch.Tensor]:
    """Floating-point tensors of a forward's output, depth first."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in float_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in float_tensors(v)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in float_tensors(getattr(obj, f.name))]
    return []


def module_by_name(model: nn.Module, name: str) -> nn.Module:
    """The module the probe calls ``name`` (the root is named after its class)."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    if name == type(model).__name__:
        return model
    raise KeyError(name)


class Recorder:
    """Records, with plain torch hooks, what the named modules of ``model`` see."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model = model
        self.names = list(names)
        self.modules = {n: module_by_name(model, n) for n in self.names}
        self.inputs: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.grads: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.first_calls: list[str] = []
        self.events: list[tuple[str, int, bool]] = []  # (layer, phase, all finite)
        self._handles = []
        for n, m in self.modules.items():
            self._watch(n, m)

    def _watch(self, name: str, module: nn.Module) -> None:
        self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
        self._handles.append(module.register_forward_hook(self._hook(name)))

    def watch(self, names: Sequence[str]) -> None:
        """Also record ``names`` not watched yet (the residual blocks a probe found at its
        first step), before the model runs."""
        for n in names:
            if n not in self.modules:
                self.names.append(n)
                self.modules[n] = module_by_name(self.model, n)
                for d in (self.inputs, self.outputs, self.grads):
                    d[n] = []
                self._watch(n, self.modules[n])

    def _pre_hook(self, name: str):
        def hook(module, inputs):
            if torch.is_grad_enabled() and inputs and isinstance(inputs[0], torch.Tensor):
                self.inputs[name].append(inputs[0].detach().clone())

        return hook

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not torch.is_grad_enabled():
                return
            tensors = float_tensors(output)
            if not tensors:
                return
            if name not in self.first_calls:
                self.first_calls.append(name)
            primary = tensors[0].detach().clone()
            self.outputs[name].append(primary)
            self.events.append((name, 0, bool(torch.isfinite(primary).all())))
            for t in tensors:
                if t.requires_grad:
                    t.register_hook(self._grad_hook(name))

        return hook

    def _grad_hook(self, name: str):
        def hook(grad):
            self.grads[name].append(grad.detach().clone())
            self.events.append((name, 1, bool(torch.isfinite(grad).all())))

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def reset(self) -> None:
        for d in (self.inputs, self.outputs, self.grads):
            for v in d.values():
                v.clear()
        self.events.clear()


def _norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return math.nan
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _bad_samples(tensors: list[torch.Tensor]) -> float:
    """Number of samples (rows along dim 0) holding a NaN or an infinity."""
    if not tensors:
        return math.nan
    bad = [(~torch.isfinite(t.reshape(t.shape[0], -1))).any(dim=1) for t in tensors]
    return float(sum(int(b.sum()) for b in bad))


def saturated_fraction(module: nn.Module, inputs: list[torch.Tensor]) -> float:
    """Fraction of elements where the activation's derivative (by autograd, from the
    input) is below 1 % of its maximum; NaN for non-saturating modules."""
    if isinstance(module, nn.ReLU6):
        return math.nan
    top = next((v for k, v in MAX_DERIVATIVE.items() if isinstance(module, k)), None)
    if top is None or not inputs:
        return math.nan
    flat = []
    for x in inputs:
        x = x.detach().clone().requires_grad_(True)
        y = module.forward(x.clone())  # .forward: runs no hooks
        (d,) = torch.autograd.grad(y.sum(), x)
        flat.append((d < 0.01 * top).reshape(-1))
    return float(torch.cat(flat).double().mean())


def dead_fraction(module: nn.Module, outputs: list[torch.Tensor]) -> float:
    """Fraction of units (non-batch elements) ≤ 0 in every sample of every call."""
    if not isinstance(module, DYING) or not outputs:
        return math.nan
    rows = torch.cat([o.reshape(o.shape[0], -1) for o in outputs])
    return float((rows <= 0).all(dim=0).double().mean())


def expected_stats(
    rec: Recorder, names: Sequence[str] | None = None, info: Sequence[LayerInfo] = ()
) -> dict[str, np.ndarray]:
    """The per-layer statistics of the calls ``rec`` saw, layers in ``names`` order.

    ``info`` (a probe's ``layer_info``) gives roles: a "params" entry has parameter
    statistics only; a "block" entry is its output stream, without parameter statistics;
    layers inside a block have no gain (see ``RunView.history("gain")``)."""
    names = list(names if names is not None else rec.names)
    roles = {layer.name: layer.role for layer in info}
    inside = {layer.name for layer in info if layer.block}
    out: dict[str, list[float]] = {s: [] for s in LAYER_STATS}
    for n in names:
        m = rec.modules[n]
        role = roles.get(n, "layer")
        trainable = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if role == "block":
            trainable = []
        out["grad_norm"].append(_norm([p.grad for p in trainable if p.grad is not None]))
        out["weight_norm"].append(_norm([p.detach() for p in trainable]))
        out["signal_norm"].append(_norm(rec.grads[n]) if role != "params" else math.nan)
        ys = rec.outputs[n] if role != "params" else []
        if ys:
            flat = torch.cat([y.double().reshape(-1) for y in ys]).numpy()
            with np.errstate(invalid="ignore", over="ignore"):
                out["act_mean"].append(float(flat.mean()))
                out["act_std"].append(float(flat.std()))
        else:
            out["act_mean"].append(math.nan)
            out["act_std"].append(math.nan)
        out["saturated"].append(saturated_fraction(m, rec.inputs[n]) if ys else math.nan)
        out["dead"].append(dead_fraction(m, ys))
        out["nonfinite_out"].append(_bad_samples(ys))
        out["nonfinite_grad"].append(_bad_samples(rec.grads[n] if role != "params" else []))
    stats = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        stats["grad_to_weight"] = stats["grad_norm"] / stats["weight_norm"]
        gain = np.full(len(names), np.nan)
        chain = [k for k, n in enumerate(names) if n not in inside and roles.get(n) != "params"]
        gain[chain[1:]] = stats["signal_norm"][chain[:-1]] / stats["signal_norm"][chain[1:]]
        stats["gain"] = gain
    both = np.stack([stats["nonfinite_out"], stats["nonfinite_grad"]])
    stats["nonfinite"] = np.where(np.isnan(both).all(0), np.nan, np.nansum(both, axis=0))
    return stats


def first_nonfinite(rec: Recorder, names: Sequence[str]) -> tuple[int, int]:
    """(position in ``names``, phase) of the first hook call that saw a non-finite value."""
    for name, phase, finite in rec.events:
        if not finite:
            return names.index(name), phase
    return -1, -1


def assert_matches(
    probe,
    expected: dict[str, np.ndarray],
    row: int = -1,
    rtol: float = 1e-5,
    atol: float = 1e-9,
    stats: Sequence[str] = LAYER_STATS + DERIVED_STATS,
) -> None:
    """Every statistic of the probe's recorded step ``row`` equals the reference."""
    for stat in stats:
        actual = probe.history(stat)[row]
        np.testing.assert_allclose(
            actual, expected[stat], rtol=rtol, atol=atol, equal_nan=True, err_msg=stat
        )
