"""Every activation backprobe knows, one record each: how to recognise it and what it does
to gradients.

A record (:class:`ActivationKind`) holds an activation's name, the torch classes and
functions that compute it, the Hugging Face ``transformers`` and ``timm`` classes that do
(recognised by package and class name, so neither package is imported), its function φ,
where its output counts as saturated, whether its units can die, γ = max |φ'|, the
initialisation gain that fits it, and exact float64 formulas of φ and φ' for the
mean-field theory. The probe, the theory and the remedies all read this one table.

Example:
    >>> from torch import nn
    >>> from backprobe.activations import activation_kind
    >>> kind = activation_kind(nn.Sigmoid())
    >>> kind.name, kind.gamma, kind.can_die
    ('sigmoid', 0.25, False)
    >>> activation_kind("Swish").name
    'silu'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATION_KINDS",
    "SATURATION_FRACTION",
    "ActivationKind",
    "ArrayFunction",
    "ExactForm",
    "Saturation",
    "activation_kind",
]

#: A unit's derivative below this fraction of the activation's maximum derivative counts
#: as saturated.
SATURATION_FRACTION = 0.01

#: A function of a float64 array, applied element-wise, returning an array of its shape.
ArrayFunction = Callable[[np.ndarray], np.ndarray]

#: A function of a tensor, element-wise unless the record says otherwise.
TensorFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Saturation:
    """Saturated outputs of a bounded activation are those with ``|y - center| > half_width``.

    Derived from the output alone, so that in-place activations and activations whose
    input is gone still work. ``inclusive`` counts ``|y - center| == half_width`` too: a
    hard clamp's output sits exactly on its bound when saturated.
    """

    center: float
    half_width: float
    inclusive: bool = False


@dataclass(frozen=True)
class ExactForm:
    """φ and φ' element-wise on float64 arrays, exact to rounding (also where φ' is tiny),
    for the theory's quadratures and Jacobian products.

    ``homogeneous`` is ``(E[φ(z)²], E[φ'(z)²])`` for a positively homogeneous φ
    (φ(c·x) = c·φ(x) for c > 0, as ReLU and linear), whose Gaussian expectations are
    then exact: E[φ(√q z)²] = q·E[φ(z)²] and E[φ'(√q z)²] = E[φ'(z)²] for every q.
    """

    phi: ArrayFunction
    dphi: ArrayFunction
    homogeneous: tuple[float, float] | None = None


@dataclass(frozen=True)
class ActivationKind:
    """One activation: how to recognise it and what it does to gradients.

    Attributes:
        name: the name the rest of backprobe uses (``"relu"``, ``"gelu_tanh"``).
        function: φ on a tensor at the default arguments (``defaults``).
        modules: torch classes computing it; a subclass is recognised too.
        foreign: ``(package, class name)`` of classes in other packages computing it
            (``("transformers", "GELUActivation")``), matched without importing them.
        functions: torch functions computing it (``torch.tanh``, ``F.tanh``).
        call_names: the names it is called by inside a ``forward`` (``torch.X(``,
            ``F.X(``, ``x.X()``), for finding calls that no module swap reaches.
        saturation: where its output counts as saturated (φ' below
            :data:`SATURATION_FRACTION` of γ), or None for unbounded activations.
        clamp_attributes: for a hard clamp whose bounds are constructor arguments, the
            names of the module's lower and upper bound; its saturation is read from them.
        can_die: whether φ' = 0 wherever φ ≤ 0, so a unit whose output is ≤ 0 for a
            whole batch passes no gradient (ReLU family).
        gamma: γ = sup |φ'| at the default arguments; ``inf`` when unbounded, None when
            φ is not element-wise (GLU).
        init_gain: the weight gain that keeps the forward variance (as
            ``nn.init.calculate_gain``), None where no standard gain is known.
        exact: exact float64 φ and φ' for the mean-field theory, or None.
        defaults: ``(attribute, value)`` pairs of a module for which ``function`` and
            ``exact`` are its activation (ELU's ``alpha`` = 1).
        aliases: other names it is known by (``"swish"`` for SiLU).
        nonlinear: False for the identity, which is no activation to probe.
    """

    name: str
    function: TensorFunction
    gamma: float | None
    modules: tuple[type[nn.Module], ...] = ()
    foreign: tuple[tuple[str, str], ...] = ()
    functions: tuple[Callable[..., torch.Tensor], ...] = ()
    call_names: tuple[str, ...] = ()
    saturation: Saturation | None = None
    clamp_attributes: tuple[str, str] | None = None
    can_die: bool = False
    init_gain: float | None = None
    exact: ExactForm | None = None
    defaults: tuple[tuple[str, object], ...] = ()
    aliases: tuple[str, ...] = ()
    nonlinear: bool = True

    def saturation_of(self, module: nn.Module | None = None) -> Saturation | None:
        """The saturation of this activation as ``module`` is configured (a clamp's own
        bounds), or at the default arguments without a module."""
        if module is None or self.clamp_attributes is None:
            return self.saturation
        lo, hi = (float(getattr(module, a)) for a in self.clamp_attributes)
        return Saturation((lo + hi) / 2, (hi - lo) / 2, inclusive=True)


# ------------------------------------------------------------------ exact float64 forms


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1/(1 + e^-x) without overflow, and relatively exact for very negative x."""
    return np.exp(-np.logaddexp(0.0, -x))


def _dsigmoid(x: np.ndarray) -> np.ndarray:
    return _sigmoid(x) * _sigmoid(-x)


_math_erf = np.frompyfunc(math.erf, 1, 1)
_math_erfc = np.frompyfunc(math.erfc, 1, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    """numpy has no erf; math.erf is exact to an ulp and fast enough for a few hundred nodes."""
    return np.asarray(_math_erf(x), dtype=np.float64)


def _derf(x: np.ndarray) -> np.ndarray:
    return 2.0 / math.sqrt(math.pi) * np.exp(-x * x)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Φ(x) through erfc, which keeps relative precision in the lower tail."""
    return 0.5 * np.asarray(_math_erfc(-np.asarray(x) / math.sqrt(2.0)), dtype=np.float64)


def _gelu(x: np.ndarray) -> np.ndarray:
    return x * _normal_cdf(x)


def _dgelu(x: np.ndarray) -> np.ndarray:
    return _normal_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _dtanh(x: np.ndarray) -> np.ndarray:
    """sech²(x) = 4e / (1 + e)² with e = exp(−2|x|): no 1 − tanh² cancellation."""
    e = np.exp(-2.0 * np.abs(x))
    return 4.0 * e / (1.0 + e) ** 2


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


def _dsilu(x: np.ndarray) -> np.ndarray:
    return _sigmoid(x) * (1 + x * _sigmoid(-x))


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _delu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _drelu(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x) > 0).astype(np.float64)  # φ'(0) = 0, as torch's autograd


def _identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _one(x: np.ndarray) -> np.ndarray:
    return np.ones_like(x, dtype=np.float64)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


# --------------------------------------------------------------- tensor forms and facts

_F = SATURATION_FRACTION
#: erf(√ln(1/f)): where erf' = (2/√π)e^{−x²} falls to f of its maximum.
_ERF_EDGE = math.erf(math.sqrt(math.log(1.0 / _F)))
#: GELU's derivative peaks at x = √2: Φ(√2) + √2·φ(√2).
_GELU_GAMMA = 0.5 * math.erfc(-1.0) + math.sqrt(2.0) * math.exp(-1.0) / math.sqrt(2.0 * math.pi)
#: SiLU's derivative σ(x)(1 + x·σ(−x)) peaks at x ≈ 2.3994 (no closed form; the tests
#: check it against autograd).
_SILU_GAMMA = 1.0998393201288672
#: SELU's derivative approaches scale·α just below 0.
_SELU_GAMMA = 1.0507009873554805 * 1.6732632423543772
#: The tanh approximation of GELU peaks slightly above the exact one (x ≈ 1.4185).
_GELU_TANH_GAMMA = 1.128993068658772
#: Mish's derivative peaks at x ≈ 1.4906.
_MISH_GAMMA = 1.088498161251728
#: √softplus(x)'s derivative σ(x) / (2√softplus(x)) peaks at x ≈ 0.9214.
_SQRT_SOFTPLUS_GAMMA = 0.3190863431694758
#: Hugging Face's LaplaceActivation: Φ((x − μ)/σ) with these constants.
_LAPLACE_MU, _LAPLACE_SIGMA = 0.707107, 0.282095
#: Hugging Face's ClippedGELUActivation as its "gelu_10" configuration builds it.
_CLIPPED_GELU_BOUNDS = (-10.0, 10.0)
#: ReLU's gain, used for ReLU-like activations (≈ 0 for negative inputs, ≈ identity for
#: positive ones) that ``nn.init.calculate_gain`` does not know: an approximation that
#: LSUV or the edge of chaos (exact for each activation) can replace.
_RELU_GAIN = math.sqrt(2.0)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _hard_mish(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (x + 2).clamp(min=0, max=2)


def _prelu(x: torch.Tensor) -> torch.Tensor:
    return F.prelu(x, torch.full((1,), 0.25, dtype=x.dtype, device=x.device))


def _rrelu(x: torch.Tensor) -> torch.Tensor:
    return F.rrelu(x, training=False)


def _threshold(x: torch.Tensor) -> torch.Tensor:
    return F.threshold(x, 0.0, 0.0)


def _laplace(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - _LAPLACE_MU) / (_LAPLACE_SIGMA * math.sqrt(2.0))))


def _relu_squared(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


def _clipped_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.clip(F.gelu(x), *_CLIPPED_GELU_BOUNDS)


def _sqrt_softplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x).sqrt()


def _identity_tensor(x: torch.Tensor) -> torch.Tensor:
    return x


def _hf(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple(("transformers", n) for n in names)


def _timm(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple(("timm", n) for n in names)


#: The table. Thresholds of the smooth bounded activations follow from the derivative
#: written in terms of the output y: sigmoid y(1−y) (max 1/4), tanh 1−y² (max 1),
#: softsign (1−|y|)² (max 1), erf and the Laplace CDF a Gaussian density; hard clamps
#: saturate exactly on their bounds.
ACTIVATION_KINDS: tuple[ActivationKind, ...] = (
    ActivationKind(
        "sigmoid",
        torch.sigmoid,
        gamma=0.25,
        modules=(nn.Sigmoid,),
        foreign=_timm("Sigmoid"),
        functions=(torch.sigmoid, F.sigmoid, torch.special.expit),
        call_names=("sigmoid",),
        saturation=Saturation(0.5, math.sqrt(0.25 - 0.25 * _F)),
        init_gain=1.0,
        exact=ExactForm(_sigmoid, _dsigmoid),
    ),
    ActivationKind(
        "tanh",
        torch.tanh,
        gamma=1.0,
        modules=(nn.Tanh,),
        foreign=_timm("Tanh"),
        functions=(torch.tanh, F.tanh),
        call_names=("tanh",),
        saturation=Saturation(0.0, math.sqrt(1.0 - _F)),
        init_gain=5.0 / 3.0,
        exact=ExactForm(np.tanh, _dtanh),
    ),
    ActivationKind(
        "softsign",
        F.softsign,
        gamma=1.0,
        modules=(nn.Softsign,),
        functions=(F.softsign,),
        call_names=("softsign",),
        saturation=Saturation(0.0, 1.0 - math.sqrt(_F)),
    ),
    ActivationKind(
        "hardtanh",
        F.hardtanh,
        gamma=1.0,
        modules=(nn.Hardtanh,),
        functions=(F.hardtanh,),
        call_names=("hardtanh",),
        saturation=Saturation(0.0, 1.0, inclusive=True),
        clamp_attributes=("min_val", "max_val"),
    ),
    ActivationKind(
        "hardsigmoid",
        F.hardsigmoid,
        gamma=1.0 / 6.0,
        modules=(nn.Hardsigmoid,),
        foreign=_timm("HardSigmoid", "HardSigmoidMe"),
        functions=(F.hardsigmoid,),
        call_names=("hardsigmoid",),
        saturation=Saturation(0.5, 0.5, inclusive=True),
    ),
    ActivationKind(
        "erf",
        torch.erf,
        gamma=2.0 / math.sqrt(math.pi),
        functions=(torch.erf, torch.special.erf),
        call_names=("erf",),
        saturation=Saturation(0.0, _ERF_EDGE),
        exact=ExactForm(_erf, _derf),
    ),
    ActivationKind(
        "laplace",
        _laplace,
        gamma=1.0 / (_LAPLACE_SIGMA * math.sqrt(2.0 * math.pi)),
        foreign=_hf("LaplaceActivation"),
        saturation=Saturation(0.5, 0.5 * _ERF_EDGE),
    ),
    ActivationKind(
        "relu",
        torch.relu,
        gamma=1.0,
        modules=(nn.ReLU,),
        functions=(torch.relu, F.relu),
        call_names=("relu", "relu_"),
        can_die=True,
        init_gain=math.sqrt(2.0),
        exact=ExactForm(_relu, _drelu, homogeneous=(0.5, 0.5)),
    ),
    ActivationKind(
        "relu6",
        F.relu6,
        gamma=1.0,
        modules=(nn.ReLU6,),  # a Hardtanh subclass, but a ReLU in spirit
        functions=(F.relu6,),
        call_names=("relu6",),
        can_die=True,
    ),
    ActivationKind(
        "relu_squared",
        _relu_squared,
        gamma=math.inf,
        foreign=_hf("ReLUSquaredActivation"),
        can_die=True,
    ),
    ActivationKind(
        "leaky_relu",
        F.leaky_relu,
        gamma=1.0,
        modules=(nn.LeakyReLU,),
        functions=(F.leaky_relu,),
        call_names=("leaky_relu",),
        init_gain=math.sqrt(2.0 / (1.0 + 0.01**2)),  # negative_slope = 0.01
        defaults=(("negative_slope", 0.01),),
    ),
    ActivationKind(
        "prelu",
        _prelu,
        gamma=1.0,
        modules=(nn.PReLU,),  # timm's PReLU subclasses it
        call_names=("prelu",),
    ),
    ActivationKind(
        "rrelu", _rrelu, gamma=1.0, modules=(nn.RReLU,), functions=(F.rrelu,), call_names=("rrelu",)
    ),
    ActivationKind(
        "elu",
        F.elu,
        gamma=1.0,
        modules=(nn.ELU,),
        functions=(F.elu,),
        call_names=("elu",),
        init_gain=_RELU_GAIN,
        exact=ExactForm(_elu, _delu),
        defaults=(("alpha", 1.0),),
    ),
    ActivationKind(
        "selu",
        F.selu,
        gamma=_SELU_GAMMA,
        modules=(nn.SELU,),
        functions=(F.selu,),
        call_names=("selu",),
        init_gain=0.75,
    ),
    ActivationKind(
        "celu", F.celu, gamma=1.0, modules=(nn.CELU,), functions=(F.celu,), call_names=("celu",)
    ),
    ActivationKind(
        "gelu",
        F.gelu,
        gamma=_GELU_GAMMA,
        modules=(nn.GELU,),
        foreign=(*_hf("GELUActivation"), *_timm("GELU")),
        functions=(F.gelu,),
        call_names=("gelu",),
        init_gain=_RELU_GAIN,
        exact=ExactForm(_gelu, _dgelu),  # exact GELU, torch's approximate="none"
        defaults=(("approximate", "none"),),
    ),
    ActivationKind(
        "gelu_tanh",
        _gelu_tanh,
        gamma=_GELU_TANH_GAMMA,
        foreign=(
            *_hf(
                "NewGELUActivation",
                "FastGELUActivation",
                "AccurateGELUActivation",
                "GELUTanh",
                "PytorchGELUTanh",
            ),
            *_timm("GELUTanh"),
        ),
        init_gain=_RELU_GAIN,
    ),
    ActivationKind(
        "clipped_gelu",
        _clipped_gelu,
        gamma=_GELU_GAMMA,
        # no saturation: GELU's own slope vanishes for negative inputs, below the clamp
        foreign=_hf("ClippedGELUActivation"),
    ),
    ActivationKind(
        "quick_gelu",
        _quick_gelu,
        gamma=_SILU_GAMMA,  # x·σ(1.702x) has the slope of SiLU at 1.702x
        foreign=(*_hf("QuickGELUActivation"), *_timm("QuickGELU")),
        init_gain=_RELU_GAIN,
    ),
    ActivationKind(
        "silu",
        F.silu,
        gamma=_SILU_GAMMA,
        modules=(nn.SiLU,),
        foreign=(*_hf("SiLUActivation"), *_timm("Swish", "SwishMe")),
        functions=(F.silu,),
        call_names=("silu",),
        init_gain=_RELU_GAIN,
        exact=ExactForm(_silu, _dsilu),
        aliases=("swish",),
    ),
    ActivationKind(
        "mish",
        F.mish,
        gamma=_MISH_GAMMA,
        modules=(nn.Mish,),
        foreign=(*_hf("MishActivation"), *_timm("Mish", "MishMe")),
        functions=(F.mish,),
        call_names=("mish",),
        init_gain=_RELU_GAIN,
    ),
    ActivationKind(
        "hardswish",
        F.hardswish,
        gamma=1.5,
        modules=(nn.Hardswish,),
        foreign=_timm("HardSwish", "HardSwishMe"),
        functions=(F.hardswish,),
        call_names=("hardswish",),
    ),
    ActivationKind("hard_mish", _hard_mish, gamma=1.0, foreign=_timm("HardMish", "HardMishMe")),
    ActivationKind(
        "softplus",
        F.softplus,
        gamma=1.0,
        modules=(nn.Softplus,),
        functions=(F.softplus,),
        call_names=("softplus",),
        # β = 1 and no linear threshold: torch's softplus returns x above 20 (off by < 2.1e-9)
        exact=ExactForm(_softplus, _sigmoid),
        defaults=(("beta", 1.0),),
    ),
    ActivationKind(
        "sqrt_softplus",
        _sqrt_softplus,
        gamma=_SQRT_SOFTPLUS_GAMMA,
        foreign=_hf("SqrtSoftplusActivation"),
    ),
    ActivationKind(
        "logsigmoid",
        F.logsigmoid,
        gamma=1.0,
        modules=(nn.LogSigmoid,),
        functions=(F.logsigmoid,),
        call_names=("logsigmoid",),
    ),
    ActivationKind(
        "tanhshrink",
        F.tanhshrink,
        gamma=1.0,
        modules=(nn.Tanhshrink,),
        functions=(F.tanhshrink,),
        call_names=("tanhshrink",),
    ),
    ActivationKind(
        "softshrink",
        F.softshrink,
        gamma=1.0,
        modules=(nn.Softshrink,),
        functions=(F.softshrink,),
        call_names=("softshrink",),
    ),
    ActivationKind(
        "hardshrink",
        F.hardshrink,
        gamma=1.0,
        modules=(nn.Hardshrink,),
        functions=(F.hardshrink,),
        call_names=("hardshrink",),
    ),
    ActivationKind(
        "threshold",  # φ at threshold 0, value 0: nn.Threshold has no default arguments
        _threshold,
        gamma=1.0,
        modules=(nn.Threshold,),
        call_names=("threshold",),
    ),
    # GLU halves its input, a[:half]·σ(b[half:]): not element-wise, so no single γ
    ActivationKind("glu", F.glu, gamma=None, modules=(nn.GLU,), functions=(F.glu,)),
    ActivationKind(
        "linear",
        _identity_tensor,
        gamma=1.0,
        modules=(nn.Identity,),
        foreign=_hf("LinearActivation"),
        init_gain=1.0,
        exact=ExactForm(_identity, _one, homogeneous=(1.0, 1.0)),
        aliases=("identity",),
        nonlinear=False,
    ),
)

_BY_NAME: dict[str, ActivationKind] = {
    key: kind for kind in ACTIVATION_KINDS for key in (kind.name, *kind.aliases)
}
_BY_CLASS: dict[type, ActivationKind] = {
    cls: kind for kind in ACTIVATION_KINDS for cls in kind.modules
}
_BY_FOREIGN: dict[tuple[str, str], ActivationKind] = {
    spec: kind for kind in ACTIVATION_KINDS for spec in kind.foreign
}
_FUNCTIONS: tuple[tuple[Callable[..., torch.Tensor], ActivationKind], ...] = tuple(
    (f, kind) for kind in ACTIVATION_KINDS for f in kind.functions
)


def _kind_of_class(cls: type) -> ActivationKind | None:
    """The most specific class in ``cls``'s MRO that the table knows (ReLU6 before its
    base Hardtanh), torch's own or another package's by package and class name."""
    for base in cls.__mro__:
        kind = _BY_CLASS.get(base)
        if kind is None:
            package = (getattr(base, "__module__", None) or "").partition(".")[0]
            kind = _BY_FOREIGN.get((package, base.__name__))
        if kind is not None:
            return kind
    return None


def activation_kind(obj: object) -> ActivationKind | None:
    """The table's record for ``obj``, or None when it is no activation the table knows.

    ``obj`` is a name or alias (case and surrounding spaces ignored: ``" Tanh"``,
    ``"swish"``), an activation module or its class (torch's, a subclass of one, or a
    Hugging Face / timm activation class), or a torch function (``torch.tanh``,
    ``F.silu``, ``torch.special.expit``). A module's constructor arguments do not change
    its record; see ``defaults`` and :meth:`ActivationKind.saturation_of`.
    """
    if isinstance(obj, str):
        return _BY_NAME.get(obj.strip().lower())
    if isinstance(obj, type):
        return _kind_of_class(obj)
    if isinstance(obj, nn.Module):
        return _kind_of_class(type(obj))
    for function, kind in _FUNCTIONS:
        if obj is function:
            return kind
    return None
