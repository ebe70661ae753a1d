"""Rules that read the model itself, before training: the mean-field prediction for an
MLP-like stack (initialisation far from χ1 = 1), and Pascanu's condition for plain
recurrent layers (vanishing through time that the weights alone guarantee).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TheoryInputError
from ..theory.bounds import recurrent_regimes
from ..theory.meanfield import MeanField, edge_of_chaos_sigma_w, mean_field, resolve_activation
from . import advice
from ._series import fmt
from .finding import Finding
from .thresholds import DiagnoseThresholds

#: Modules that pass their input through unchanged at initialisation (for mean field).
_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten)


@dataclass(frozen=True)
class MLPStack:
    """An MLP-like stack: Linear layers with one element-wise activation between them.

    ``sigma_w`` and ``sigma_b`` are the root-mean-square of the hidden layers' weights
    times √fan_in and of their biases: the mean-field σ_w and σ_b (the Linear layers that
    take an activation's output as input; the first layer sees the data instead).
    """

    linears: list[str]
    activation: str
    depth: int  # activation layers the gradient passes through
    sigma_w: float
    sigma_b: float


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """Leaf modules of nested ``nn.Sequential`` containers in forward order, or None when
    some container is not a Sequential (its forward order is then unknown)."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            inner = _leaves(child)
            if inner is None:
                return None
            out += [(f"{name}.{n}", m) for n, m in inner]
        elif any(True for _ in child.children()):
            return None
        else:
            out.append((name, child))
    return out


def _mean_square(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64) ** 2) / t.numel()


def mlp_stack(model: nn.Module) -> MLPStack | None:
    """The model as Linear → activation → Linear → … when it is one (an ``nn.Sequential``
    of Linear layers, one element-wise activation type that mean-field theory knows, and
    Dropout / Identity / Flatten), with at least two Linear layers; else None."""
    if not isinstance(model, nn.Sequential):
        return None
    leaves = _leaves(model)
    if not leaves:
        return None
    linears: list[tuple[str, nn.Linear]] = []
    acts: set[str] = set()
    hidden: list[nn.Linear] = []
    after_activation = False
    for name, m in leaves:
        if isinstance(m, nn.Linear):
            linears.append((name, m))
            if after_activation:
                hidden.append(m)
            after_activation = False
        elif isinstance(m, _PASS_THROUGH):
            continue
        else:
            try:
                acts.add(resolve_activation(m).name)
            except TheoryInputError:
                return None
            after_activation = True
    if len(acts) != 1 or not hidden:
        return None
    w2 = [_mean_square(lin.weight) * lin.in_features for lin in hidden]
    b2 = [_mean_square(lin.bias) if lin.bias is not None else 0.0 for lin in hidden]
    return MLPStack(
        linears=[n for n, _ in linears],
        activation=acts.pop(),
        depth=len(hidden),
        sigma_w=math.sqrt(sum(w2) / len(w2)),
        sigma_b=math.sqrt(sum(b2) / len(b2)),
    )


def mean_field_finding(
    stack: MLPStack, t: DiagnoseThresholds
) -> tuple[MeanField | None, Finding | None]:
    """Mean field's χ1 for the stack's activation and (σ_w, σ_b), and an
    ``initialisation`` finding when √(χ1^depth), the predicted change of the gradient's
    norm over the stack, is outside [``init_ratio_low``, ``init_ratio_high``]."""
    try:
        mf = mean_field(stack.activation, stack.sigma_w, stack.sigma_b)
    except TheoryInputError:
        return None, None
    log_ratio = 0.5 * stack.depth * math.log10(mf.chi1) if mf.chi1 > 0 else -math.inf
    low, high = math.log10(t.init_ratio_low), math.log10(t.init_ratio_high)
    if low <= log_ratio <= high:
        return mf, None
    try:
        edge = edge_of_chaos_sigma_w(stack.activation, stack.sigma_b)
    except TheoryInputError:
        edge = None
    severe = log_ratio < 2 * low or log_ratio > 2 * high
    ratio = 10**log_ratio if log_ratio > -300 else 0.0
    vanishing = mf.chi1 < 1
    direction = "shrinks" if vanishing else "grows"
    target = f"σ_w = {edge:.3g} (χ1 = 1 for σ_b = {stack.sigma_b:.2g})" if edge else "χ1 = 1"
    # a swap to ReLU only for a bounded activation the stack has: swapping ReLU for ReLU
    # or the identity for ReLU changes nothing the finding is about
    swap = (advice.swap_to_relu({stack.activation}),) if stack.activation in advice.BOUNDED else ()
    if stack.activation in ("tanh", "linear"):
        remedies = (advice.ORTHOGONAL_INIT, advice.XAVIER_INIT, *swap)
    elif stack.activation == "relu" or not vanishing:
        remedies = (advice.HE_INIT, *swap, advice.ORTHOGONAL_INIT)
    else:
        remedies = (*swap, advice.HE_INIT, advice.XAVIER_INIT)
    finding = Finding(
        kind="initialisation",
        severity="error" if severe else "warning",
        summary=(
            f"initialisation off the edge of chaos: χ1 = {mf.chi1:.3g} for {stack.activation} "
            f"at σ_w = {stack.sigma_w:.3g}, σ_b = {stack.sigma_b:.2g}; the gradient's norm "
            f"{direction} by {fmt(ratio)} over {stack.depth} layers"
        ),
        where={"layers": stack.linears},
        evidence={
            "activation": stack.activation,
            "sigma_w": stack.sigma_w,
            "sigma_b": stack.sigma_b,
            "q_star": mf.q_star,
            "chi1": mf.chi1,
            "depth_scale": mf.depth_scale,
            "trainable_depth": mf.trainable_depth,
            "depth": stack.depth,
            "predicted_grad_norm_ratio": ratio,
            "edge_of_chaos_sigma_w": edge,
        },
        cause=(
            f"Mean-field theory: at this initialisation one layer multiplies the mean square "
            f"of the back-propagated gradient by χ1 = {mf.chi1:.3g} ({mf.regime}), so over "
            f"{stack.depth} layers its norm {direction} by √(χ1^{stack.depth}) = {fmt(ratio)}; "
            f"networks train to about 6ξ = {mf.trainable_depth:.3g} layers. Aim for {target}."
        ),
        remedies=remedies,
        references=advice.INIT_REFERENCES,
    )
    return mf, finding


def recurrent_theory_findings(
    model: nn.Module, lengths: dict[str, int], t: DiagnoseThresholds
) -> list[Finding]:
    """Pascanu's sufficient condition for vanishing, λ1(W_hh) < 1/γ, for every plain
    ``nn.RNN`` layer that ran on a sequence of ``lengths[name]`` steps: the bound
    η^(T−1) on ||dh_T/dh_1|| (η = γ·λ1) below ``time_vanishing`` is a finding. (λ1 > 1/γ
    only makes explosion possible; that needs the measured profile.)"""
    findings = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.RNN) or name not in lengths:
            continue
        lag = lengths[name] - 1
        for regime in recurrent_regimes(module):
            if regime.eta is None or regime.gamma is None or regime.eta >= 1 or lag < 1:
                continue
            bound = regime.eta**lag
            if bound >= t.time_vanishing:
                continue
            findings.append(
                Finding(
                    kind="vanishing_through_time",
                    severity="error" if bound < t.time_vanishing_error else "warning",
                    summary=(
                        f"vanishing through time in {name} ({regime.weight}): λ1(W_hh) = "
                        f"{regime.lambda1:.3g} < 1/γ = {1 / regime.gamma:.3g}, so a state "
                        f"{lag} steps back reaches the end scaled by at most {fmt(bound)}"
                    ),
                    where={"layers": [name], "weight": regime.weight, "time_steps": [0, lag]},
                    evidence={
                        "lambda1_W_hh": regime.lambda1,
                        "gamma": regime.gamma,
                        "eta": regime.eta,
                        "sequence_length": lag + 1,
                        "pascanu_bound_at_longest_lag": bound,
                    },
                    cause=(
                        "Back-propagation through time multiplies one W_hhᵀ·diag(σ') per "
                        "step, each of norm at most η = γ·λ1 < 1 (Pascanu et al. 2013): the "
                        "gradient from the first steps vanishes whatever the inputs. "
                        + regime.explanation
                    ),
                    remedies=advice.TIME_VANISHING_REMEDIES,
                    references=advice.TIME_REFERENCES,
                )
            )
    return findings
