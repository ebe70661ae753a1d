"""``bp.check(model, batch)``: will gradients vanish or explode? Asked before training.

One forward and one backward pass on one batch at initialisation, with a
:class:`~backprobe.Probe` in memory (``db=None``) attached, gives each layer's gradient
norm, backward signal and gain, saturation and dead units; the diagnosis rules turn
them into findings. Two predictions from theory are added where the model allows:
mean field's χ1 for an MLP-like ``nn.Sequential`` (Linear layers and one element-wise
activation), and Pascanu's condition for plain ``nn.RNN`` layers. The singular values of
the input–output Jacobian (at up to ``jacobian_examples`` examples) say how evenly the
model passes gradients in all directions.

Dropout is switched off during the check (the network itself is measured, as mean field
assumes); the model is left as it was: parameter gradients, the global random state and
every module's train/eval mode are restored afterwards.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import SupportsIndex, overload

import torch
from torch import nn

from .._format import counted
from ..errors import BackprobeError, CheckInputError
from ..probe import Probe
from ..probe.outputs import floating_tensors
from ..store.view import RunView
from ..theory.jacobian import IsometrySummary, isometry_summary, jacobian_singular_values
from ..theory.meanfield import MeanField
from ._series import fmt
from .depth import first_to_last_ratio
from .finding import Finding
from .model_rules import mean_field_finding, mlp_stack, recurrent_theory_findings
from .rules import diagnose, sort_findings
from .thresholds import DiagnoseThresholds
from .verdict import Verdict, verdict_of

#: All singular values of the Jacobian when the output has at most this many units (one
#: backward pass of that many copies of an example); above, the top ``JACOBIAN_TOP_K``.
JACOBIAN_REPLICA_ROWS = 256
JACOBIAN_TOP_K = 8
#: Callables named when a factory is not found in its module (the rest are counted).
FACTORY_NAMES_SHOWN = 8


class CheckResult(list[Finding]):
    """The findings of a check (a ``list[Finding]``, most severe first) and what they
    were made from; a slice (``result[:3]``) is a CheckResult with the same attributes.

    Attributes:
        verdict: the one-line verdict on the recorded step (``verdict.status``:
            healthy, vanishing, exploding, nonfinite, unknown).
        run: the one-step run (the read API of a Probe: ``run.history("gain")``...).
        mean_field: the mean-field prediction, for MLP-like models; else None.
        jacobian: summary of the input–output Jacobian's singular values, or None when
            the input is not floating point or the Jacobian could not be taken
            (``jacobian_note`` says why).
        seconds: wall-clock time of the check.
    """

    def __init__(
        self,
        findings: list[Finding],
        verdict: Verdict,
        run: RunView,
        mean_field: MeanField | None,
        jacobian: IsometrySummary | None,
        jacobian_note: str,
        seconds: float,
    ) -> None:
        super().__init__(findings)
        self.verdict = verdict
        self.run = run
        self.mean_field = mean_field
        self.jacobian = jacobian
        self.jacobian_note = jacobian_note
        self.seconds = seconds

    @overload
    def __getitem__(self, index: SupportsIndex) -> Finding: ...

    @overload
    def __getitem__(self, index: slice) -> CheckResult: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Finding | CheckResult:
        if not isinstance(index, slice):
            return super().__getitem__(index)
        return CheckResult(
            super().__getitem__(index),
            self.verdict,
            self.run,
            self.mean_field,
            self.jacobian,
            self.jacobian_note,
            self.seconds,
        )

    @property
    def worst(self) -> str:
        """The highest severity among the findings, ``"none"`` when there is none."""
        return max(self, key=lambda f: f.severity_rank).severity if self else "none"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _split_batch(batch: object) -> tuple[object, object | None]:
    """(inputs, targets or None) from a tensor, an (inputs, targets) pair or a dict."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def _to_device(x: object, device: torch.device) -> object:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple | list):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _call(model: nn.Module, x: object) -> object:
    if isinstance(x, dict):
        return model(**x)
    return model(x)


def _loss(output: object, y: object, loss_fn: Callable | None, seed: int) -> torch.Tensor:
    """``loss_fn(output, y)`` (or ``loss_fn(output)``), else the default: a fixed random
    projection ``Σ out·r / batch`` with r ~ N(0, 1), whose gradient at the output is
    random with unit variance whatever the output's scale, as mean-field theory assumes."""
    if loss_fn is not None:
        loss = loss_fn(output) if y is None else loss_fn(output, y)
    else:
        tensors = floating_tensors(output)
        if not tensors:
            raise CheckInputError(
                f"Expected the model to return a floating-point tensor, but got "
                f"{type(output).__name__}; pass loss_fn= to say what to differentiate."
            )
        out = tensors[0]
        gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        r = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        loss = (out * r).sum() / max(out.shape[0] if out.dim() else 1, 1)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise CheckInputError(
            "Expected loss_fn to return a scalar tensor that depends on the model's "
            f"parameters, but got {loss!r:.80}; return e.g. F.cross_entropy(output, y)."
        )
    return loss.reshape(())


def _dropout_off(model: nn.Module) -> None:
    """Dropout modules, and recurrent layers with dropout between layers, to eval mode:
    the check measures the network itself (as mean field does), and the unrolled twin
    that measures gradients through time cannot replay a fused kernel's dropout masks.
    Normalisation layers keep their mode (batch statistics while training)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or (
            isinstance(m, nn.RNNBase) and m.dropout > 0
        ):
            m.eval()


def _sequence_lengths(model: nn.Module) -> tuple[dict[str, int], list]:
    """Forward pre-hooks that note each nn.RNN's sequence length; (lengths, handles)."""
    lengths: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.RNN):

            def note(mod: nn.Module, args: tuple, name: str = name) -> None:
                x = args[0] if args else None
                if isinstance(x, torch.Tensor):
                    batched = x.dim() == 3
                    lengths[name] = x.shape[1 if mod.batch_first and batched else 0]

            handles.append(module.register_forward_pre_hook(note))
    return lengths, handles


def _jacobians_by_replicas(model: nn.Module, xs: torch.Tensor, d_out: int) -> torch.Tensor:
    """The [E, D_out, D_in] Jacobians of the examples ``xs`` [E, *in] in float64, exactly,
    from one forward and one backward pass of D_out copies of each: copy k back-propagates
    the k-th unit vector, so its input gradient is row k. Plain autograd: unlike
    ``torch.func`` it costs no multi-second import on first use."""
    twin = copy.deepcopy(model).double()
    e = xs.shape[0]
    copies = xs.double().repeat_interleave(d_out, dim=0).requires_grad_(True)
    out = twin(copies).reshape(e, d_out, d_out)
    eye = torch.eye(d_out, dtype=torch.float64).expand(e, d_out, d_out)
    (grad,) = torch.autograd.grad(out, copies, eye)
    return grad.reshape(e, d_out, -1)


def _jacobian(model: nn.Module, x: object, examples: int) -> tuple[IsometrySummary | None, str]:
    """Isometry summary of the input–output Jacobian at the first ``examples`` examples:
    all singular values when the output has at most ``JACOBIAN_REPLICA_ROWS`` units (by
    :func:`_jacobians_by_replicas`), else the top ``JACOBIAN_TOP_K`` by subspace iteration
    (:func:`~backprobe.theory.jacobian.jacobian_singular_values`)."""
    if examples <= 0:
        return None, "not asked for"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None, "the input is not a floating-point tensor"
    xs = x[:examples].detach()
    try:
        with torch.no_grad():
            out = model(xs[:1])
        if not isinstance(out, torch.Tensor):
            return None, "the model's output is not a single tensor"
        d_in, d_out = xs[0].numel(), out[0].numel()
        if d_out <= JACOBIAN_REPLICA_ROWS:
            s = torch.linalg.svdvals(_jacobians_by_replicas(model, xs, d_out))
            return isometry_summary(s), "all singular values"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            top = jacobian_singular_values(
                model, xs, k=min(JACOBIAN_TOP_K, d_in, d_out), method="top", iters=60, tol=1e-4
            )
        return isometry_summary(top), f"top {counted(top.shape[1], 'singular value')}"
    except (RuntimeError, BackprobeError) as exc:
        return None, f"not available for this model ({_first_line(exc)})"


def check(
    model: nn.Module,
    batch: object = None,
    loss_fn: Callable | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    thresholds: DiagnoseThresholds | None = None,
    seed: int = 0,
    jacobian_examples: int = 2,
) -> CheckResult:
    """Predict, from one batch at initialisation, whether gradients will vanish or explode.

    Args:
        model: the ``nn.Module`` as it will start training.
        batch: the model's input (a tensor, or a dict of keyword arguments), or a pair
            ``(inputs, targets)`` for ``loss_fn``. None: a random N(0, 1) input of
            ``input_shape`` (batch first).
        loss_fn: ``loss_fn(output, targets)`` (or ``loss_fn(output)`` without targets).
            None: a fixed random projection of the output (see ``_loss``).
        thresholds: the rules' thresholds (:class:`DiagnoseThresholds`).
        seed: seeds the random input and projection.
        jacobian_examples: examples whose input–output Jacobian is analysed (0: none).

    Returns:
        A :class:`CheckResult`: the list of findings, most severe first, with
        ``.verdict``, ``.mean_field``, ``.jacobian`` and ``.run`` attached.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise CheckInputError(
            f"Expected a torch.nn.Module to check, but got {type(model).__name__}; pass the "
            "model itself."
        )
    t = thresholds or DiagnoseThresholds()
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if batch is None:
        if input_shape is None:
            raise CheckInputError(
                "Expected a batch or an input_shape, but got neither; pass a batch of real "
                "data, or input_shape=(32, 784) for a random one."
            )
        shape = tuple(int(v) for v in input_shape)
        gen = torch.Generator().manual_seed(seed)
        dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
        batch = torch.randn(shape, generator=gen, dtype=dtype)
    x, y = _split_batch(batch)
    x, y = _to_device(x, device), _to_device(y, device)
    saved_grads = {p: p.grad for p in params}
    modes = [(m, m.training) for m in model.modules()]
    lengths, handles = _sequence_lengths(model)
    # time_every=1: recurrent layers' per-time-step profiles at this one step
    probe = Probe(model, db=None, name=type(model).__name__, unsupported="ignore", time_every=1)
    try:
        for p in params:
            p.grad = None
        _dropout_off(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with probe:
                try:
                    output = _call(model, x)
                except Exception as exc:
                    given = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise CheckInputError(
                        f"The model's forward failed on an input of shape {given}: "
                        f"{_first_line(exc)}. Pass an input of the shape the model takes "
                        "(batch first), e.g. input_shape=(32, 784)."
                    ) from exc
                loss = _loss(output, y, loss_fn, seed)
                loss.backward()
                probe.step(loss)
            jac, note = _jacobian(model.eval(), x, jacobian_examples)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        for p, g in saved_grads.items():
            p.grad = g
    findings = diagnose(probe, t)
    stack = mlp_stack(model)
    mf = None
    if stack is not None:
        mf, init = mean_field_finding(stack, t)
        if init is not None:
            findings.append(init)
    measured = {
        f.where.get("layers", [""])[0] for f in findings if f.kind == "vanishing_through_time"
    }
    findings += [
        f
        for f in recurrent_theory_findings(model, lengths, t)
        if f.where["layers"][0] not in measured
    ]
    findings = [_with_jacobian(f, jac) for f in findings]
    if jac is not None and jac.verdict == "ill-conditioned":
        findings.append(_ill_conditioned(jac))
    findings = sort_findings(findings)
    return CheckResult(
        findings,
        verdict_of(findings, int(probe.steps[-1]), probe.layers, first_to_last_ratio(probe)),
        probe,
        mf,
        jac,
        note,
        time.perf_counter() - start,
    )


def _with_jacobian(finding: Finding, jac: IsometrySummary | None) -> Finding:
    if jac is None or finding.kind not in ("vanishing", "exploding", "initialisation"):
        return finding
    evidence = {
        **finding.evidence,
        "jacobian_mean_squared_singular_value": jac.mean_squared,
        "jacobian_condition_number": jac.condition_number,
    }
    return replace(finding, evidence=evidence)


def _ill_conditioned(jac: IsometrySummary) -> Finding:
    return Finding(
        kind="initialisation",
        severity="info",
        summary=(
            f"input–output Jacobian ill-conditioned: singular values from {fmt(jac.min)} to "
            f"{fmt(jac.max)}, {100 * jac.fraction_in_band:.0f} % within [1/2, 2]"
        ),
        evidence={
            "jacobian_mean_squared_singular_value": jac.mean_squared,
            "jacobian_condition_number": jac.condition_number,
            "fraction_in_band": jac.fraction_in_band,
        },
        cause=(
            "On average the gradient keeps its size, but some directions shrink and others "
            "grow (Pennington et al. 2017): typical of deep ReLU nets even at He init."
        ),
        references=("Saxe et al. 2014", "Pennington et al. 2017"),
    )


# ---------------------------------------------------------------------- the CLI's inputs


def parse_shape(text: str) -> tuple[int, ...]:
    """``"32,784"`` → (32, 784): positive integers separated by commas (or ``x``)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise CheckInputError(
            f"Expected --input-shape as positive integers separated by commas, batch first "
            f"(e.g. 32,784 or 8,3,32,32), but got {text!r}."
        )
    return shape


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The callable named by ``"module:factory"`` (a dotted module importable from the
    current folder, or a ``path/to/file.py``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckInputError(
            f"Expected MODULE:FACTORY (e.g. mymodels:make_mlp or models.py:make_mlp), but "
            f"got {spec!r}."
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise FileNotFoundError(f"no file {path}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except Exception as exc:
        raise CheckInputError(
            f"Cannot import {module_name!r} ({_first_line(exc)}). Expected a module importable "
            "from the current folder or a path to a .py file."
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise CheckInputError(
            f"Module {module_name!r} has no callable {attr!r}. Callables there: "
            f"{_first_names(names)}."
        )
    return factory


def _first_names(names: list[str], shown: int = FACTORY_NAMES_SHOWN) -> str:
    """``a, b, c`` or ``a, b, c … and 5 more``; ``none`` for no name."""
    if not names:
        return "none"
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" … and {more} more" if more > 0 else "")


def build_model(spec: str) -> nn.Module:
    """Call the factory named by ``spec`` with no arguments; it must return an nn.Module."""
    factory = load_factory(spec)
    try:
        model = factory()
    except Exception as exc:
        raise CheckInputError(
            f"The factory {spec} raised {_first_line(exc)}. Expected it to build the model "
            "when called with no arguments."
        ) from exc
    if not isinstance(model, nn.Module):
        raise CheckInputError(
            f"Expected {spec}() to return a torch.nn.Module, but it returned "
            f"{type(model).__name__}."
        )
    return model
