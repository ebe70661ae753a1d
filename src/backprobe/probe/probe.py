"""The Probe: hooks on a user's model that record gradient health while it trains.

::

    probe = bp.Probe(model, every=1, db="backprobe-runs/runs.db", name="my-run")
    with probe:                       # attach on enter, flush + detach + close on exit
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            probe.step(loss)          # records when the schedule says so
            opt.step(); opt.zero_grad()

On a recorded step, forward hooks summarise each probed layer's output and register a
tensor hook on it for the backward signal; ``step()`` adds the parameter norms, moves
everything to the host in one transfer and appends one row per statistic to the run.
On other steps the hooks return at once. The hooks never change a value: training with
the probe attached is bitwise identical to training without it.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle

from ..errors import ProbeConfigError, UnsupportedModuleError
from ..store import DEFAULT_DB, LayerInfo, MemoryRun, RunView, RunWriter
from ..store.sink import StepSink, check_sinks
from ..store.view import ALL_SERIES, USER_PREFIX, SparseRows
from .distributed import is_primary, process_group, unwrap
from .outputs import floating_tensors
from .schedule import Schedule, make_schedule
from .selection import (
    UNSUPPORTED_MODES,
    LayerFilter,
    UnsupportedMode,
    activation_family,
    is_unsupported,
    select_layers,
)
from .stats import Field, StatSlots, StepBuffer, StepStats, add_tensor_norms, refine_norms
from .through_time import TimeSettings, is_recurrent, make_watch


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ProbeConfigError(
            f"Expected a torch.nn.Module to probe, but got {type(model).__name__}. "
            "Pass the model itself (e.g. bp.Probe(model)), not its output or parameters."
        )
    if not any(True for _ in model.parameters()):
        raise ProbeConfigError(
            f"Expected a model with parameters, but this {type(model).__name__} has none: "
            "there is no gradient to probe."
        )
    return model


def _in_backward() -> bool:
    """Whether autograd is running a backward pass in this thread: a checkpointed segment
    recomputing its forward, whose outputs were already measured in the real forward."""
    return torch._C._current_graph_task_id() != -1


class _ForwardHook:
    """A module forward hook that calls back into its probe.

    It holds the probe weakly, and a deep copy or a pickle of the model (an EMA copy, a
    saved checkpoint) gets an inert hook: a copy must not record into the original's run.
    """

    __slots__ = ("_probe", "index")

    def __init__(self, probe: Probe | None, index: int) -> None:
        self._probe = None if probe is None else weakref.ref(probe)
        self.index = index

    def __call__(self, module: nn.Module, inputs: object, output: object) -> None:
        probe = None if self._probe is None else self._probe()
        if probe is not None:
            probe._on_forward(self.index, module, output)

    def __deepcopy__(self, memo: dict) -> _ForwardHook:
        return _ForwardHook(None, self.index)

    def __reduce__(self) -> tuple:
        return (_ForwardHook, (None, self.index))


class Probe(RunView):
    """Records per-layer gradient and activation statistics of ``model`` during training.

    Args:
        model: the ``nn.Module`` to watch.
        every: record every N-th ``step()`` (0, N, 2N, …) or a callable ``step -> bool``.
        db: run database path; ``None`` keeps the run in memory only.
        name: run name shown by ``backprobe runs`` (default: the model's class name).
        include / exclude: glob patterns on qualified module names and/or module types.
            By default modules owning parameters and activation modules are probed.
        unsupported: what to do with a selected module the probe cannot watch
            (TorchScript modules; modules whose output holds no floating-point tensor):
            ``"ignore"``, ``"warn"`` (default) or ``"error"``.
        scaler: the ``torch.amp.GradScaler`` of a mixed-precision loop, so that recorded
            gradients are unscaled.
        config: anything JSON-serialisable to store with the run (hyper-parameters…).
        flush_every: seconds records may wait in memory before they are written.
        time_every: for recurrent layers (``nn.RNN``/``LSTM``/``GRU`` and their cells),
            which recorded steps also measure time profiles (``time_profile``,
            ``jacobian_decay``, ``memory_horizon``): every N-th step or a callable
            ``step -> bool``, applied to recorded steps only; default: all of them.
        time_batch: sequences of the recorded batch replayed to measure them (the first
            ones); see :class:`~backprobe.probe.through_time.TimeSettings` for the cost.
        sinks: more receivers of each recorded step besides the run, e.g. a
            :class:`~backprobe.integrations.tensorboard.TensorBoardSink` (rank 0 only under
            torch.distributed); see :class:`~backprobe.store.sink.StepSink`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int | Schedule = 1,
        db: str | Path | None = DEFAULT_DB,
        name: str | None = None,
        include: LayerFilter = None,
        exclude: LayerFilter = None,
        unsupported: UnsupportedMode = "warn",
        scaler: torch.amp.GradScaler | None = None,
        config: dict | None = None,
        flush_every: float = 2.0,
        time_every: int | Schedule | None = None,
        time_batch: int = 8,
        sinks: Sequence[StepSink] = (),
    ) -> None:
        self.model = _check_model(model)
        self.schedule = make_schedule(every)
        if unsupported not in UNSUPPORTED_MODES:
            raise ProbeConfigError(
                f"Expected unsupported to be one of {UNSUPPORTED_MODES}, got {unsupported!r}."
            )
        if flush_every <= 0:
            raise ProbeConfigError(f"Expected flush_every > 0 seconds, got {flush_every!r}.")
        self.unsupported = unsupported
        self.scaler = scaler
        self.db = None if db is None else Path(db)
        self.name = name or type(model).__name__
        self.flush_every = flush_every
        self._user_config = dict(config or {})
        self._filters = (include, exclude)
        self._extra_sinks = check_sinks(sinks) if is_primary() else []

        selected = select_layers(unwrap(model), include, exclude)  # names as without DDP
        self._modules: list[nn.Module] = []
        self._names: list[str] = []
        for layer_name, module in selected:
            if is_unsupported(module):
                self._report_unsupported(layer_name, module, "TorchScript modules run no hooks")
                continue
            self._modules.append(module)
            self._names.append(layer_name)
        if not self._modules:
            raise ProbeConfigError("No selected module can be probed (all are unsupported).")
        self._families = [activation_family(m) for m in self._modules]
        self._time_schedule = None if time_every is None else make_schedule(time_every)
        settings = TimeSettings(batch=time_batch)
        self._watches = {
            i: make_watch(self._names[i], m, settings)
            for i, m in enumerate(self._modules)
            if is_recurrent(m)
        }
        self._scalars: dict[str, torch.Tensor] = {}
        # (layer, parameter) pairs for the parameter norms, in registration order
        self._params = [
            (i, p) for i, m in enumerate(self._modules) for p in m.parameters(recurse=False)
        ]
        self._warned: set[int] = set()
        self._handles: list[RemovableHandle] = []
        self._sink: RunWriter | MemoryRun | None = None
        self._closed = False
        self._step = 0  # index of the step in progress
        self._epoch = 0  # bumped at every step: late tensor hooks from an old step are ignored
        self._recording = False
        self._slots = StatSlots()
        self._buffer = self._fresh_buffer()
        self._first_call: dict[int, int] = {}
        self._order: np.ndarray | None = None  # hook index of each layer, input → output
        self._layer_info: list[LayerInfo] | None = None
        self._reader: RunView | None = None  # cached until the next recorded step

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> Probe:
        """Register the hooks and open the run; calling it again does nothing."""
        if self._closed:
            raise ProbeConfigError("This probe's run is closed; create a new Probe.")
        if self.attached:
            return self
        if self._sink is None:
            self._sink = self._open_sink()
        for i, module in enumerate(self._modules):
            self._handles.append(module.register_forward_hook(_ForwardHook(self, i)))
        for sink in self._extra_sinks:
            sink.watch(dict(zip(self._names, self._modules, strict=True)))
        for i, watch in self._watches.items():
            hook = watch.hook()
            self._handles.append(self._modules[i].register_forward_hook(hook, with_kwargs=True))
        self._begin_step()
        return self

    def _fresh_buffer(self) -> StepBuffer:
        """An empty buffer for the next step, writing into the reused statistic storage
        (what the last step wrote there is no longer needed)."""
        self._slots.reset()
        return StepBuffer(slots=self._slots)

    def _begin_step(self) -> None:
        """Decide whether the step now starting is recorded, and tell the watches."""
        self._recording = bool(self.schedule(self._step))
        timed = self._recording and (
            self._time_schedule is None or bool(self._time_schedule(self._step))
        )
        for watch in self._watches.values():
            watch.start(timed)
        self._scalars = {}

    def detach(self) -> None:
        """Remove every hook and flush; safe to call twice. The run stays open."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._epoch += 1
        self._buffer = self._fresh_buffer()
        for watch in self._watches.values():
            watch.start(False)
        if self._sink is not None:
            self._sink.flush()
        for sink in self._extra_sinks:
            sink.flush()

    def close(self, status: str = "finished", error: str | None = None) -> None:
        """Detach and mark the run finished (or failed); safe to call twice."""
        self.detach()
        if self._sink is not None and not self._closed:
            self._sink.close(status, error)
            for sink in self._extra_sinks:
                sink.close(status, error)
        self._closed = True

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("finished")
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")

    def _open_sink(self) -> RunWriter | MemoryRun:
        if self.db is None or not is_primary():  # torch.distributed: rank 0 writes the run
            return MemoryRun()
        # a partial or a callable object has no __name__
        every = getattr(self.schedule, "__name__", None) or repr(self.schedule)
        include, exclude = self._filters
        config = {
            "probe": {
                "every": every,
                "include": repr(include),
                "exclude": repr(exclude),
                "unsupported": self.unsupported,
                "amp": self.scaler is not None,
            },
            **self._user_config,
        }
        params = list(self.model.parameters())
        ready = [p for p in params if not is_lazy(p)]  # lazy modules: shapes come later
        model = {
            "class": type(self.model).__name__,
            "parameters": sum(p.numel() for p in ready),
            "trainable": sum(p.numel() for p in ready if p.requires_grad),
            "uninitialized": len(params) - len(ready),
            "device": str(params[0].device),
            "dtype": str(params[0].dtype),
        }
        return RunWriter(self.db, self.name, config, model, flush_every=self.flush_every)

    # -- hooks ----------------------------------------------------------------------------

    def _report_unsupported(self, name: str, module: nn.Module, why: str) -> None:
        message = (
            f"backprobe cannot probe layer {name!r} ({type(module).__name__}): {why}. "
            f"Exclude it (exclude=[{name!r}]) or pass unsupported='ignore'."
        )
        if self.unsupported == "error":
            raise UnsupportedModuleError(message)
        if self.unsupported == "warn":
            warnings.warn(message, stacklevel=3)

    def _on_forward(self, i: int, module: nn.Module, output: object) -> None:
        if not self._recording or not torch.is_grad_enabled() or _in_backward():
            return
        tensors = floating_tensors(output)
        if not tensors:
            if i not in self._warned:
                self._warned.add(i)
                self._report_unsupported(
                    self._names[i], module, "its output holds no floating-point tensor"
                )
            return
        if self._order is None:  # only the first recorded step decides the layer order
            self._first_call.setdefault(i, len(self._first_call))
        family = self._families[i]
        self._buffer.add_output(
            i,
            tensors[0],
            family.saturation if family else None,
            family.can_die if family else False,
        )
        on_grad = partial(self._on_grad, i, self._epoch)
        for t in tensors:
            if t.requires_grad:
                t.register_hook(on_grad)

    def _on_grad(self, i: int, epoch: int, grad: torch.Tensor) -> None:
        if epoch == self._epoch:
            self._buffer.add_grad(i, grad)

    # -- recording ------------------------------------------------------------------------

    def step(self, loss: torch.Tensor | float | None = None) -> bool:
        """End a training step: record it if the schedule says so. Returns whether it did.

        Call it after ``backward()`` (after all micro-batches when accumulating gradients)
        and before ``optimizer.zero_grad()``. ``loss`` is stored with the step.
        """
        if not self.attached:
            raise ProbeConfigError(
                "Probe.step() was called while the probe is not attached. Use `with probe:` "
                "around the training loop, or call probe.attach() first."
            )
        recorded = self._recording
        if recorded:
            self._record(loss)
        self._step += 1
        self._epoch += 1
        self._buffer = self._fresh_buffer()
        self._begin_step()
        return recorded

    def record_scalar(self, name: str, value: torch.Tensor | float) -> None:
        """Store a scalar with the step in progress, if it is recorded (e.g. the norms
        before and after clipping). Call it before ``step()``; read it back with
        ``history(name)``. A tensor stays on its device until the step's one transfer."""
        if not isinstance(name, str) or not name or name in ALL_SERIES:
            raise ProbeConfigError(
                f"Expected a scalar name (a non-empty string other than the built-in "
                f"statistics {', '.join(ALL_SERIES)}) but got {name!r}."
            )
        if not self._recording:
            return
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ProbeConfigError(
                    f"Expected one number for scalar {name!r} but got a tensor of shape "
                    f"{tuple(value.shape)}; reduce it first (e.g. .norm() or .mean())."
                )
            value = value.detach().reshape(1)
        else:
            value = torch.tensor([float(value)])
        self._scalars[name] = value

    def _record(self, loss: torch.Tensor | float | None) -> None:
        buffer = self._buffer
        trainable = [(i, p) for i, p in self._params if p.requires_grad and not is_lazy(p)]
        weights = add_tensor_norms(
            buffer, [(i, p.detach()) for i, p in trainable], Field.PARAM_NORM
        )
        grads = add_tensor_norms(
            buffer,
            [(i, p.grad) for i, p in trainable if p.grad is not None],
            Field.PARAM_GRAD_NORM,
        )
        if loss is not None:
            value = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(loss)
            buffer.add(0, Field.LOSS, value.reshape(1).float())
        params_scaled = False
        scale = self._current_scale()
        if scale is not None:
            buffer.add(0, Field.SCALE, scale.reshape(1).float())
            params_scaled = self._grads_still_scaled()
        extras = {
            (i, *key): entry
            for i, watch in self._watches.items()
            for key, entry in watch.measure(buffer, scale).items()
        }
        scalars = {name: buffer.add_extra(v) for name, v in self._scalars.items()}
        host = buffer.to_host(process_group(), len(self._modules))
        refine_norms(host, Field.PARAM_NORM, weights)
        refine_norms(host, Field.PARAM_GRAD_NORM, grads)
        gates = {i: entry for (i, _, kind), entry in extras.items() if kind == "gates"}
        stats = host.reduce(len(self._modules), params_scaled, gates)
        if self._order is None:
            self._fix_layer_order()
        assert self._sink is not None and self._layer_info is not None
        series = self._series(stats)
        series.update({USER_PREFIX + name: host.entry(e) for name, e in scalars.items()})
        profiles = {
            (name, kind): host.entry(entry)
            for (_, name, kind), entry in extras.items()
            if kind != "gates"
        }
        self._sink.append(self._step, series, profiles)
        for sink in self._extra_sinks:
            sink.append(self._step, series, profiles)
        self._reader = None

    def _current_scale(self) -> torch.Tensor | None:
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return None
        # The scale as a device tensor; scaler.get_scale() would synchronise.
        return getattr(scaler, "_scale", None)

    def _grads_still_scaled(self) -> bool:
        """Whether parameter gradients still carry the loss scale: true until the loop
        calls ``scaler.unscale_(optimizer)`` (as clipping code does) before ``step()``."""
        states = getattr(self.scaler, "_per_optimizer_states", {})
        unscaled = torch.amp.grad_scaler.OptState.UNSCALED
        return not any(state.get("stage") is unscaled for state in states.values())

    def _fix_layer_order(self) -> None:
        """Layers in the order their forwards finished at the first recorded step (input →
        output for feed-forward nets); layers that did not run keep registration order."""
        n = len(self._modules)
        self._order = np.asarray(
            sorted(range(n), key=lambda i: (self._first_call.get(i, math.inf), i)), np.int64
        )
        self._layer_info = []
        for position, i in enumerate(self._order):
            module = self._modules[i]
            own = list(module.parameters(recurse=False))
            family = self._families[i]
            self._layer_info.append(
                LayerInfo(
                    index=position,
                    name=self._names[i],
                    type=type(module).__name__,
                    family=family.name if family else "",
                    n_params=sum(p.numel() for p in own if p.requires_grad),
                    frozen=bool(own) and not any(p.requires_grad for p in own),
                )
            )
        assert self._sink is not None
        self._sink.set_layers(self._layer_info)
        for sink in self._extra_sinks:
            sink.set_layers(self._layer_info)

    def _series(self, stats: StepStats) -> dict[str, np.ndarray]:
        """The step's stored series, per-layer ones in input → output order."""
        order = self._order
        assert order is not None
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        layer, phase = stats.first_nonfinite
        first = (int(position[layer]), phase) if layer >= 0 else (-1, -1)
        return {
            **{name: values[order] for name, values in stats.per_layer.items()},
            "loss": np.array([stats.loss]),
            "first_nonfinite": np.array(first, dtype=np.float64),
        }

    # -- reading --------------------------------------------------------------------------

    def _view(self) -> RunView:
        if self._sink is None:
            raise ProbeConfigError("Nothing recorded yet: attach the probe and train first.")
        if self._reader is None:
            self._reader = self._sink.view()
        return self._reader

    @property
    def run_id(self) -> int | None:
        """Id of the run in the run database (None before attach or with ``db=None``)."""
        return self._sink.run_id if isinstance(self._sink, RunWriter) else None

    @property
    def layers(self) -> list[str]:
        """Probed layer names, input → output order (registration order until the first
        recorded step has shown the execution order)."""
        if self._layer_info is None:
            return list(self._names)
        return [layer.name for layer in self._layer_info]

    @property
    def layer_info(self) -> list[LayerInfo]:
        return self._view().layer_info

    @property
    def steps(self) -> np.ndarray:
        """Recorded step indices, int64 [S]."""
        return self._view().steps

    def _stored(self, stat: str) -> np.ndarray:
        return self._view()._stored(stat)

    def _user_rows(self, stat: str) -> SparseRows:
        return self._view()._user_rows(stat)

    def _profile_rows(self, name: str, kind: str) -> SparseRows:
        return self._view()._profile_rows(name, kind)

    @property
    def scalar_names(self) -> list[str]:
        return self._view().scalar_names

    @property
    def recurrent_layers(self) -> list[str]:
        return self._view().recurrent_layers

    def __repr__(self) -> str:
        state = "attached" if self.attached else ("closed" if self._closed else "detached")
        return (
            f"Probe({type(self.model).__name__}, layers={len(self._modules)}, "
            f"step={self._step}, {state})"
        )
