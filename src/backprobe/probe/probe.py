"""The Probe: hooks on a user's model that record gradient health while it trains.

::

    probe = bp.Probe(model, db="backprobe-runs/runs.db", name="my-run")  # 2 % budget
    with probe:                       # attach on enter, flush + detach + close on exit
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            probe.step(loss)          # records when the schedule says so
            opt.step(); opt.zero_grad()

On a recorded step, forward hooks summarise each probed layer's output and register a
tensor hook on it for the backward signal; ``step()`` adds the parameter norms, moves
everything to the host in one transfer and appends one row per statistic to the run.
Residual blocks (:mod:`~backprobe.probe.blocks`) are probed too, by the residual stream
at their output. The first recorded step also decides each layer's role and the layers'
order from the graph it ran (:meth:`Probe._fix_layer_order`). The layers' hooks are
registered for recorded steps only: other steps run just the sentinel's hook on the
model (:mod:`~backprobe.probe.sentinel`). The hooks never change a value: training with
the probe attached is bitwise identical to training without it.
"""

from __future__ import annotations

import atexit
import itertools
import math
import time
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
from ..store.sentinel import LAYERS_KEY, RunEvent, SentinelSeries
from ..store.sink import StepSink, check_sinks
from ..store.view import ALL_SERIES, USER_PREFIX, SparseRows
from .attention import AttentionWatch
from .blocks import block_candidates, is_block_call
from .budget import DEFAULT_BUDGET, BudgetSchedule, StepClock
from .compiled import MEASURED_BY, EagerSteps, tracing
from .distributed import is_primary, process_group, unwrap
from .outputs import floating_tensors
from .schedule import Schedule, make_schedule
from .selection import (
    UNSUPPORTED_MODES,
    LayerFilter,
    UnsupportedMode,
    activation_family,
    filter_matches,
    is_unsupported,
    owns_parameters,
    select_layers,
)
from .sentinel import Gathered, Pending, Sentinel
from .stats import Field, StatSlots, StepBuffer, StepStats, add_tensor_norms, refine_norms
from .through_time import TimeSettings, is_recurrent, make_watch
from .updates import PerEntry, UpdateWatch


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


#: What a probed entry's forward did in the step in progress (see Probe._on_forward).
_RAN_WITHOUT_GRAD = 0  # it ran, but only without gradient: nothing measured yet
_MEASURED = 1  # a grad-enabled forward was measured
_RECOMPUTED = 2  # it ran without gradient, and its recompute inside backward was measured


class _ForwardHook:
    """A module forward hook that calls back into its probe.

    It holds the probe weakly, and a deep copy or a pickle of the model (an EMA copy, a
    saved checkpoint) gets an inert hook: a copy must not record into the original's run.
    A block candidate's hook is registered with ``with_kwargs=True`` (its input decides
    whether it is a residual block).
    """

    __slots__ = ("_probe", "index")

    def __init__(self, probe: Probe | None, index: int) -> None:
        self._probe = None if probe is None else weakref.ref(probe)
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, *rest: object) -> None:
        if tracing():  # compiled graphs carry no probe work (see probe.compiled)
            return
        probe = None if self._probe is None else self._probe()
        if probe is not None:
            kwargs = rest[0] if len(rest) == 2 and isinstance(rest[0], dict) else {}
            probe._on_forward(self.index, module, rest[-1], args, kwargs)

    def __deepcopy__(self, memo: dict) -> _ForwardHook:
        return _ForwardHook(None, self.index)

    def __reduce__(self) -> tuple:
        return (_ForwardHook, (None, self.index))


class _ParamHook:
    """A parameter's gradient hook for the first recorded step: when the backward pass
    reached a layer's parameters (how a layer measured by its parameters is placed).
    Weak and inert in copies, like :class:`_ForwardHook`."""

    __slots__ = ("_probe", "index")

    def __init__(self, probe: Probe | None, index: int) -> None:
        self._probe = None if probe is None else weakref.ref(probe)
        self.index = index

    def __call__(self, grad: torch.Tensor | None) -> None:
        probe = None if self._probe is None else self._probe()
        if probe is not None and grad is not None:
            probe._param_events.setdefault(self.index, next(probe._clock))

    def __deepcopy__(self, memo: dict) -> _ParamHook:
        return _ParamHook(None, self.index)

    def __reduce__(self) -> tuple:
        return (_ParamHook, (None, self.index))


#: Probes holding an unrecorded step's sentinel values on their way to the host.
_unsettled: weakref.WeakSet[Probe] = weakref.WeakSet()


@atexit.register
def _settle_at_exit() -> None:
    """Store the sentinel rows still on their way of probes never closed (a crash: the
    last step is the one to see). Registered after the run writers' exit handler, so it
    runs before they close the runs."""
    for probe in list(_unsettled):
        probe._settle_sentinel()


class Probe(RunView):
    """Records per-layer gradient and activation statistics of ``model`` during training.

    Args:
        model: the ``nn.Module`` to watch.
        every: record every N-th ``step()`` (0, N, 2N, …) or a callable ``step -> bool``,
            instead of the overhead budget (``every=1``: every step).
        budget: the overhead allowed, as a fraction of the training time (default
            0.02, 2 %), when no ``every`` is given. The probe times recorded and
            unrecorded steps with its own clock and spaces recordings to stay within it,
            time profiles included; the first 10 steps are all recorded
            (:mod:`~backprobe.probe.budget`). The measured overhead is stored at each
            recorded step (series ``overhead``) and at the end of the run, under any
            schedule.
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
        resume: the id (or name) of a stored run in ``db`` to continue instead of
            starting a new one, e.g. training resumed from a checkpoint: marked
            running again, its steps from ``first_step`` on replaced.
        first_step: the index of the first ``step()`` (a resumed training's global
            step), so that schedules and stored steps continue the framework's.
        optimizer: the ``torch.optim.Optimizer`` the loop steps after ``probe.step()``:
            its step hooks measure the update it applies after each recorded step
            (``update_to_weight`` = ||Δθ|| / ||θ|| per layer, and Adam's effective step
            ``adam_step``), stored with that step; see :mod:`~backprobe.probe.updates`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int | Schedule | None = None,
        budget: float | None = None,
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
        resume: int | str | None = None,
        first_step: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.model = _check_model(model)
        self._step_clock = StepClock()  # durations between step() calls: the overhead
        self._step_started: float | None = None  # when the step in progress began
        if budget is not None and every is not None:
            raise ProbeConfigError(
                f"Expected either every= (a fixed schedule) or budget= (an overhead "
                f"budget), but got both (every={every!r}, budget={budget!r}); drop one."
            )
        self.schedule: Schedule = (
            make_schedule(every)
            if every is not None
            else BudgetSchedule(self._step_clock, DEFAULT_BUDGET if budget is None else budget)
        )
        if unsupported not in UNSUPPORTED_MODES:
            raise ProbeConfigError(
                f"Expected unsupported to be one of {UNSUPPORTED_MODES}, got {unsupported!r}."
            )
        if flush_every <= 0:
            raise ProbeConfigError(f"Expected flush_every > 0 seconds, got {flush_every!r}.")
        self.unsupported = unsupported
        self.scaler = scaler
        self.db = None if db is None else Path(db)
        self.name = name or type(unwrap(model)).__name__
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
        self._n_layers = len(self._modules)  # entries 0…n-1: layers; then block candidates
        chosen = {id(m) for m in self._modules}
        for block_name, module in block_candidates(unwrap(model)):
            if (
                id(module) not in chosen
                and not is_unsupported(module)
                and (include is None or filter_matches(block_name, module, include))
                and not filter_matches(block_name, module, exclude)
            ):
                self._modules.append(module)
                self._names.append(block_name)
        self._inside = self._probed_descendants()
        self._owns = [owns_parameters(m) for m in self._modules]
        self._families = [activation_family(m) for m in self._modules]
        self._time_schedule = None if time_every is None else make_schedule(time_every)
        settings = TimeSettings(batch=time_batch)
        self._time_batch = time_batch
        self._watches = {
            i: make_watch(self._names[i], m, settings)
            for i, m in enumerate(self._modules)
            if is_recurrent(m)
        }
        self._attention = AttentionWatch(unwrap(model))
        self._scalars: dict[str, torch.Tensor] = {}
        # (layer, parameter) pairs for the parameter norms, in registration order
        self._params = [
            (i, p)
            for i, m in enumerate(self._modules[: self._n_layers])
            for p in m.parameters(recurse=False)
        ]
        self._updates = (
            None
            if optimizer is None
            else UpdateWatch(
                optimizer, self._params, len(self._modules), self._update_due, self._amend
            )
        )
        self._sentinel = Sentinel(self._params)  # every step: loss, norms, output samples
        self._last_sentinel: tuple[int, np.ndarray] | None = None
        self._pending: Pending | None = None  # an unrecorded step's values on their way
        self._pinned: torch.Tensor | None = None  # host memory they are copied into (CUDA)
        self._warned: set[int] = set()
        self._warned_missing: set[str] = set()
        self._warned_no_gradient = False
        self._handles: list[RemovableHandle] = []  # while attached
        self._layer_handles: list[RemovableHandle] = []  # during recorded steps
        self._sink: RunWriter | MemoryRun | None = None
        self._closed = False
        self._step = first_step  # index of the step in progress
        self._resume = resume
        self._last_recorded: int | None = None  # index of the last recorded step
        self._epoch = 0  # bumped at every step: late tensor hooks from an old step are ignored
        self._recording = False
        self._eager = EagerSteps()  # recorded steps of a compiled model run eagerly
        self._slots = StatSlots()
        self._buffer = self._fresh_buffer()
        self._ran: dict[int, int] = {}  # entry → _RAN_WITHOUT_GRAD or _MEASURED, this step
        # the first recorded step's graph: forward finish and backward event order
        self._first_call: dict[int, int] = {}
        self._backward: dict[int, int] = {}  # entry → its output's first gradient event
        self._param_events: dict[int, int] = {}  # entry → its parameters' first gradient
        self._clock = itertools.count()
        self._last_grad: torch.Tensor | None = None  # the last output gradient seen, and
        self._last_event = -1  # its event (first recorded step only)
        self._param_handles: list[RemovableHandle] = []
        self._containers: set[int] = set()  # layers whose probed children ran inside them
        self._blocks: dict[int, bool] = {}  # block candidate → is a residual block
        self._measured = np.ones(len(self._modules), bool)  # entries measured by output
        self._order: np.ndarray | None = None  # hook index of each layer, input → output
        self._position = np.full(len(self._modules), -1, np.int64)  # entry → its index
        self._layer_info: list[LayerInfo] | None = None
        self._reader: RunView | None = None  # cached until the next recorded step

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @property
    def recording(self) -> bool:
        """Whether the step in progress (the one the next ``step()`` ends) is recorded:
        the schedule's answer, fixed when the previous step ended."""
        return self._recording

    def attach(self) -> Probe:
        """Register the hooks and open the run; calling it again does nothing."""
        if self._closed:
            raise ProbeConfigError("This probe's run is closed; create a new Probe.")
        if self.attached:
            return self
        if self._sink is None:
            self._sink = self._open_sink()
        for sink in self._extra_sinks:
            n = self._n_layers
            sink.watch(dict(zip(self._names[:n], self._modules[:n], strict=True)))
        for i, watch in self._watches.items():
            self._handles.append(
                self._modules[i].register_forward_hook(watch.hook(), with_kwargs=True)
            )
        if self._updates is not None:
            self._handles.extend(self._updates.hooks())
        self._handles.append(self.model.register_forward_hook(self._sentinel.hook()))
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
        self._hook_layers(self._recording)
        self._eager.run_eagerly(self._recording)
        timed = self._recording and (
            self._time_schedule is None or bool(self._time_schedule(self._step))
        )
        for watch in self._watches.values():
            watch.start(timed)
        self._attention.start(self._recording)
        self._scalars = {}
        self._ran = {}
        if self._recording and self._order is None and not self._param_handles:
            self._param_handles = [
                p.register_hook(_ParamHook(self, i))
                for i, p in self._params
                if p.requires_grad and not is_lazy(p)
            ]

    def _hook_layers(self, recording: bool) -> None:
        """Register the layers' forward hooks for a recorded step, or remove them: an
        unrecorded step runs none of them (each costs a Python call and the module's
        slower call path with hooks: 0.15 ms a step on a 32-module MLP), only the
        sentinel's hook on the model. Once the layer order is fixed, entries not measured
        by their output (layers measured by their parameters, block candidates that are
        not residual blocks) get none."""
        if not recording:
            for handle in self._layer_handles:
                handle.remove()
            self._layer_handles.clear()
            return
        if self._layer_handles:
            return
        for i, module in enumerate(self._modules):
            if self._order is None or self._measured[i]:
                hook = _ForwardHook(self, i)
                block = i >= self._n_layers  # its input decides whether it is a block
                self._layer_handles.append(module.register_forward_hook(hook, with_kwargs=block))

    def _remove_param_hooks(self) -> None:
        for handle in self._param_handles:
            handle.remove()
        self._param_handles.clear()

    def detach(self) -> None:
        """Remove every hook and flush; safe to call twice. The run stays open."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hook_layers(False)
        self._remove_param_hooks()
        self._eager.run_eagerly(False)
        self._step_started = None  # time spent detached is no step
        self._epoch += 1
        self._sentinel.next_step()
        self._buffer = self._fresh_buffer()
        for watch in self._watches.values():
            watch.start(False)
        self._attention.start(False)
        if self._updates is not None:
            self._updates.settle(wait=True)
        self._settle_sentinel()
        if self._sink is not None:
            self._sink.flush()
        for sink in self._extra_sinks:
            sink.flush()

    def close(self, status: str = "finished", error: str | None = None) -> None:
        """Detach and mark the run finished (or failed); safe to call twice. The overhead
        measured to the end replaces the one stored at the last recorded step (a run
        that ends while its first recordings are paid back has measured it since)."""
        self.detach()
        if self._sink is not None and not self._closed:
            self._store_final_overhead(self._sink)
            self._sink.close(status, error)
            for sink in self._extra_sinks:
                sink.close(status, error)
        self._closed = True

    def _store_final_overhead(self, sink: RunWriter | MemoryRun) -> None:
        measured = self._measured_overheads()
        finite = {name: value for name, value in measured.items() if np.isfinite(value).all()}
        if self._last_recorded is not None and finite:
            sink.amend(self._last_recorded, finite)
            self._reader = None

    def _measured_overheads(self) -> dict[str, np.ndarray]:
        """The stored series of the overheads measured so far (see
        :mod:`~backprobe.probe.budget`): recording's, and the sentinel's."""
        clock = self._step_clock
        return {
            "overhead": np.array([clock.overhead()]),
            "sentinel_overhead": np.array([clock.sentinel_overhead()]),
        }

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("finished")
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")

    def _open_sink(self) -> RunWriter | MemoryRun:
        if self.db is None or not is_primary():  # torch.distributed: rank 0 writes the run
            memory = MemoryRun()
            memory.sentinel_layers = tuple(self._sentinel_layers())
            return memory
        config = {"probe": self.probe_config, **self._user_config}
        params = list(self.model.parameters())
        ready = [p for p in params if not is_lazy(p)]  # lazy modules: shapes come later
        model = {
            "class": type(unwrap(self.model)).__name__,
            "parameters": sum(p.numel() for p in ready),
            "trainable": sum(p.numel() for p in ready if p.requires_grad),
            "uninitialized": len(params) - len(ready),
            "device": str(params[0].device),
            "dtype": str(params[0].dtype),
        }
        return RunWriter(
            self.db,
            self.name,
            config,
            model,
            flush_every=self.flush_every,
            resume=self._resume,
            first_step=self._step,
        )

    @property
    def probe_config(self) -> dict:
        """The probe's options as stored with the run: its schedule (``every``: ``every_N``,
        ``budget 2%``, or a callable's name), filters, and how statistics are measured."""
        # a partial or a callable object has no __name__
        every = getattr(self.schedule, "__name__", None) or repr(self.schedule)
        include, exclude = self._filters
        return {
            "every": every,
            "include": repr(include),
            "exclude": repr(exclude),
            "unsupported": self.unsupported,
            "amp": self.scaler is not None,
            "measured": self._how_measured(),
            LAYERS_KEY: self._sentinel_layers(),
        }

    def _sentinel_layers(self) -> list[str]:
        """Names of the sentinel's layers (its row's columns): probed layers owning
        parameters, in registration order."""
        return [self._names[i] for i in self._sentinel.entries]

    def _how_measured(self) -> dict[str, str]:
        """How each kind of statistic is measured (stored with the run, shown by ``show``
        and the report): per-layer statistics on the full batch, time profiles on a
        sub-batch."""
        measured = {"layer statistics": MEASURED_BY}
        if self._watches:
            n = self._time_batch
            measured["time profiles"] = (
                f"sub-batch of {n} sequences, replayed eagerly and unrolled at timed steps"
            )
        return measured

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

    def _on_forward(
        self, i: int, module: nn.Module, output: object, args: tuple, kwargs: dict
    ) -> None:
        """Measure one forward call of entry ``i``, at most once per step per call of the
        model: the grad-enabled call, or (reentrant checkpointing, whose first forward runs
        without gradient) its recompute inside the backward pass; a recompute of a call
        that was measured already (non-reentrant checkpointing) is skipped."""
        if not self._recording or not self._measured[i]:
            return
        if not torch.is_grad_enabled():
            self._ran.setdefault(i, _RAN_WITHOUT_GRAD)
            self._note_forward(i)
            return
        if _in_backward():
            if self._ran.get(i) not in (_RAN_WITHOUT_GRAD, _RECOMPUTED):
                return
            self._ran[i] = _RECOMPUTED
        else:
            self._ran[i] = _MEASURED
        if self._order is None and not self._first_step_role(i, args, kwargs, output):
            return
        tensors = floating_tensors(output)
        if not tensors:
            if i not in self._warned:
                self._warned.add(i)
                self._report_unsupported(
                    self._names[i], module, "its output holds no floating-point tensor"
                )
            return
        family = self._families[i]
        self._buffer.add_output(
            i,
            tensors[0],
            family.saturation if family else None,
            family.can_die if family else False,
        )
        on_grad = partial(self._on_grad, i, self._epoch)
        for t in tensors[:1] if i >= self._n_layers else tensors:  # a block: its stream
            if t.requires_grad:
                t.register_hook(on_grad)

    def _note_forward(self, i: int) -> None:
        """At the first recorded step: when entry ``i``'s forward first finished."""
        if self._order is None and not _in_backward():
            self._first_call.setdefault(i, len(self._first_call))

    def _first_step_role(self, i: int, args: tuple, kwargs: dict, output: object) -> bool:
        """At the first recorded step: whether entry ``i`` is measured by this output. A
        layer whose probed descendants already ran inside it is a container (a root that
        owns a ``cls_token``: its output is not a layer's); a block candidate is measured
        once a grad-enabled call has shown it is a residual block."""
        if i >= self._n_layers:
            if i not in self._blocks:
                self._blocks[i] = is_block_call(args, kwargs, output)
            if not self._blocks[i]:
                return False
        elif self._owns[i] and any(j in self._first_call for j in self._inside[i]):
            self._containers.add(i)
            return False
        self._note_forward(i)
        return True

    def _on_grad(self, i: int, epoch: int, grad: torch.Tensor | None) -> None:
        # None reaches a hook when the output did not affect the loss (the attention
        # weights nn.MultiheadAttention returns and the model discards)
        if epoch == self._epoch and grad is not None:
            if self._order is None and i not in self._backward:
                # layers sharing one output tensor (a root returning its last layer's
                # output) share one event: forward order places them
                if grad is not self._last_grad:
                    self._last_grad, self._last_event = grad, next(self._clock)
                self._backward[i] = self._last_event
            self._buffer.add_grad(i, grad)

    def _probed_descendants(self) -> list[set[int]]:
        """Per entry, the layer entries whose modules lie inside its module."""
        index = {id(m): j for j, m in enumerate(self._modules[: self._n_layers])}
        return [
            {index[id(sub)] for sub in module.modules() if sub is not module and id(sub) in index}
            for module in self._modules
        ]

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
        started = time.perf_counter()
        self._settle_sentinel()  # the step before's, whose copy has finished by now
        if recorded:
            self._record(loss)
        else:  # the sentinel alone, in a transfer of its own, read at the next step()
            gathered = self._sentinel.gather(loss, self._current_scale())
            scaled = gathered.has_scale and self._grads_still_scaled()
            self._pending, self._pinned = Pending.start(self._step, gathered, scaled, self._pinned)
            _unsettled.add(self)
        now = time.perf_counter()
        if self._step_started is not None:
            sentinel = now - started + self._sentinel.hook_seconds
            self._step_clock.observe(self._step, now - self._step_started, recorded, sentinel)
        self._step_started = now
        self._step += 1
        self._epoch += 1
        self._sentinel.next_step()
        self._buffer = self._fresh_buffer()
        self._begin_step()
        if recorded and self._updates is not None:
            self._updates.step_ended()
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
        weights, _ = add_tensor_norms(
            buffer, [(i, p.detach()) for i, p in trainable], Field.PARAM_NORM
        )
        with_grad = [(i, p.grad) for i, p in trainable if p.grad is not None]
        grads, grad_norms = add_tensor_norms(buffer, with_grad, Field.PARAM_GRAD_NORM)
        gradients = len({id(g) for _, g in with_grad})
        self._check_gradients(gradients, buffer)
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
        attention = self._attention.measure(buffer)
        # the sentinel's gradient norms are the ones just taken (in float64 under
        # torch.distributed, which the sentinel's float32 row does not take)
        known = grad_norms if process_group() is None else None
        sentinel = self._sentinel.gather(loss, scale, known)
        at = None if sentinel.vector is None else buffer.add_extra(sentinel.vector)
        host = buffer.to_host(process_group(), len(self._modules))
        scaled = sentinel.has_scale and params_scaled
        self._keep_sentinel(
            self._step, sentinel, np.zeros(0) if at is None else host.entry(at), scaled
        )
        refine_norms(host, Field.PARAM_NORM, weights)
        refine_norms(host, Field.PARAM_GRAD_NORM, grads)
        gates = {i: entry for (i, _, kind), entry in extras.items() if kind == "gates"}
        stats = host.reduce(len(self._modules), params_scaled, gates)
        if self._order is None:
            self._fix_layer_order()
        assert self._sink is not None and self._layer_info is not None
        series = self._series(stats)
        series.update(self._attention.series(host, attention, self._modules, self._position))
        series["gradients"] = np.array([float(gradients)])
        series.update(self._measured_overheads())
        self._warn_unmeasured()
        series.update({USER_PREFIX + name: host.entry(e) for name, e in scalars.items()})
        profiles = {
            (name, kind): host.entry(entry)
            for (_, name, kind), entry in extras.items()
            if kind != "gates"
        }
        self._sink.append(self._step, series, profiles)
        self._last_recorded = self._step
        for sink in self._extra_sinks:
            sink.append(self._step, series, profiles)
        self._reader = None

    def _keep_sentinel(self, step: int, gathered: Gathered, host: np.ndarray, scaled: bool) -> None:
        """Store the sentinel's row of ``step`` from its host values; ``scaled`` when the
        parameter gradients still carried the loss scale."""
        row = self._sentinel.row(gathered, host, scaled)
        assert self._sink is not None
        self._sink.append_sentinel(step, row)
        self._last_sentinel = (step, row)
        self._reader = None

    def _settle_sentinel(self) -> None:
        """Store the row of the unrecorded step whose values are on their way to the host
        (waiting for the copy if it has not finished)."""
        pending, self._pending = self._pending, None
        _unsettled.discard(self)
        if pending is not None:
            self._keep_sentinel(pending.step, pending.gathered, pending.values(), pending.scaled)

    @property
    def last_sentinel(self) -> tuple[int, np.ndarray] | None:
        """The step that ``step()`` ended last and its sentinel row, as stored (see
        :mod:`~backprobe.store.sentinel`); None before the first ``step()``. What a
        :class:`~backprobe.Guard` judges. Asking waits for the step's values to reach the
        host (see :class:`~backprobe.probe.sentinel.Pending`)."""
        self._settle_sentinel()
        return self._last_sentinel

    def record_event(self, kind: str, detail: dict, step: int | None = None) -> None:
        """Store an event with the run (e.g. a Guard's skipped update): ``kind``, a
        JSON-ready ``detail`` and the step it acted on (default: the one ``step()``
        ended last). Read back with ``events``."""
        if self._sink is None:
            raise ProbeConfigError("Nothing recorded yet: attach the probe and train first.")
        self._sink.add_event(self._step - 1 if step is None else step, kind, detail)
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

    def _check_gradients(self, gradients: int, buffer: StepBuffer) -> None:
        """Warn once when a recorded step saw no gradient at all: ``step()`` before
        ``loss.backward()``, or a loss that does not depend on the probed layers."""
        signals = any(f == Field.SIGNAL_NORM for f in buffer.fields)
        if gradients or signals or self._warned_no_gradient:
            return
        self._warned_no_gradient = True
        warnings.warn(
            f"no gradient reached the probed layers at step {self._step} — call "
            "loss.backward() before probe.step(). The step is recorded with NaN gradients "
            "(its 'gradients' series is 0).",
            UserWarning,
            stacklevel=4,
        )

    def _warn_unmeasured(self) -> None:
        """Warn once per layer that ran at this step only without gradient (under
        ``torch.no_grad()``, or in a reentrant checkpoint whose recompute did not run)."""
        missing = [
            self._names[i]
            for i, state in self._ran.items()
            if state == _RAN_WITHOUT_GRAD and self._position[i] >= 0 and self._measured[i]
        ]
        new = [name for name in missing if name not in self._warned_missing]
        if not new:
            return
        self._warned_missing.update(new)
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        warnings.warn(
            f"backprobe measured no activation or backward-signal statistics of {shown} at "
            f"step {self._step}: their forward ran only without gradient (torch.no_grad(), "
            "or a reentrant checkpoint whose recompute did not run), so those statistics "
            "are NaN; their parameter statistics are recorded.",
            UserWarning,
            stacklevel=4,
        )

    def _roles(self) -> dict[int, str]:
        """Role of each kept entry, from the first recorded step: a layer whose forward
        never ran or that is a container is measured by its parameters ("params"); a
        residual block not inside another one is a "block"; other layers are "layer"."""
        roles: dict[int, str] = {}
        for i, module in enumerate(self._modules[: self._n_layers]):
            ran = i in self._first_call or i in self._containers
            own = owns_parameters(module)
            roles[i] = "params" if own and (i in self._containers or not ran) else "layer"
        blocks = [i for i, is_block in self._blocks.items() if is_block]
        for i in blocks:
            if not any(self._nested(i, j) for j in blocks if j != i):
                roles[i] = "block"
        return roles

    def _nested(self, inner: int, outer: int) -> bool:
        """Whether block candidate ``inner``'s module lies inside ``outer``'s."""
        module, container = self._modules[inner], self._modules[outer]
        return module is not container and any(sub is module for sub in container.modules())

    def _fix_layer_order(self) -> None:
        """Decide each layer's role and the input → output order from the first recorded
        step's graph, then store the layers.

        The order is that of the backward pass, reversed: the layer whose backward event
        came first is nearest the loss, and last. A layer's (and a residual block's)
        backward event is the first gradient reaching its output; a layer measured by its
        parameters (``role="params"``: a module that never ran as a module, such as
        ``nn.MultiheadAttention.out_proj``, or a root owning a ``cls_token``) is placed
        by the first gradient reaching its parameters, where they are used. Layers without
        a backward event (frozen, outputs not needing gradient, never ran) keep their
        place in forward order (when each forward finished; registration order after
        every layer that ran); the others fill the remaining places in backward order.
        """
        self._remove_param_hooks()
        self._last_grad = None
        roles = self._roles()
        kept = list(roles)
        forward = sorted(kept, key=lambda i: (self._first_call.get(i, math.inf), i))

        def event(i: int) -> int | None:
            return (self._param_events if roles[i] == "params" else self._backward).get(i)

        places = [k for k, i in enumerate(forward) if event(i) is not None]
        evented = sorted((forward[k] for k in places), key=lambda i: -(event(i) or 0))
        order = list(forward)
        for place, i in zip(places, evented, strict=True):
            order[place] = i
        self._order = np.asarray(order, np.int64)
        self._measured[:] = False
        for i, role in roles.items():
            self._measured[i] = role != "params"
        self._position[self._order] = np.arange(len(order))
        self._layer_info = self._describe(order, roles)
        for i, is_block in self._blocks.items():  # nested blocks: their outer block
            if is_block and i not in roles:
                outer = next(j for j in roles if roles[j] == "block" and self._nested(i, j))
                self._position[i] = self._position[outer]
        self._hook_layers(False)  # the next recorded step hooks the measured entries only
        assert self._sink is not None
        self._sink.set_layers(self._layer_info)
        for sink in self._extra_sinks:
            sink.set_layers(self._layer_info)

    def _describe(self, order: list[int], roles: dict[int, str]) -> list[LayerInfo]:
        """The LayerInfo of each kept entry, input → output."""
        owners: dict[int, list[int]] = {}
        for i, p in self._params:
            owners.setdefault(id(p), [])
            if i not in owners[id(p)]:
                owners[id(p)].append(i)
        blocks = [i for i in order if roles[i] == "block"]
        infos = []
        for position, i in enumerate(order):
            module = self._modules[i]
            own = list(module.parameters(recurse=False)) if i < self._n_layers else []
            family = self._families[i]
            tied = [j for p in own for j in owners[id(p)] if j != i]
            outer = [b for b in blocks if b != i and i in self._inside[b]]
            role = roles[i]
            ran = i in self._first_call or i in self._containers
            infos.append(
                LayerInfo(
                    index=position,
                    name=self._names[i],
                    type=type(module).__name__,
                    family=family.name if family else "",
                    n_params=sum(p.numel() for p in own if p.requires_grad),
                    frozen=bool(own) and not any(p.requires_grad for p in own),
                    role=role,  # type: ignore[arg-type]  # one of LayerRole, set in _roles
                    ran=i in self._param_events if role == "params" else ran,
                    shared_with=self._names[tied[0]] if tied else "",
                    block=self._names[outer[0]] if outer else "",
                )
            )
        return infos

    def _update_due(self) -> int | None:
        """The recorded step whose update the optimizer's next step makes: the step that
        ``step()`` just ended, if it was recorded (see :mod:`~backprobe.probe.updates`)."""
        last = self._last_recorded
        return last if last is not None and last == self._step - 1 else None

    def _amend(self, step: int, per_entry: PerEntry) -> None:
        """Store statistics measured after step ``step`` was appended, per entry, into its
        row (input → output order, as :meth:`_series` stores it)."""
        assert self._sink is not None and self._order is not None
        self._sink.amend(step, {name: values[self._order] for name, values in per_entry.items()})
        self._reader = None

    def _series(self, stats: StepStats) -> dict[str, np.ndarray]:
        """The step's stored series, per-layer ones in input → output order."""
        order = self._order
        assert order is not None
        layer, phase = stats.first_nonfinite
        first = (int(self._position[layer]), phase) if layer >= 0 else (-1, -1)
        return {
            **{name: values[order] for name, values in stats.per_layer.items()},
            "loss": np.array([stats.loss]),
            "first_nonfinite": np.array(first, dtype=np.float64),
        }

    # -- reading --------------------------------------------------------------------------

    def _view(self) -> RunView:
        if self._sink is None:
            raise ProbeConfigError("Nothing recorded yet: attach the probe and train first.")
        if self._updates is not None:
            self._updates.settle(wait=True)
        self._settle_sentinel()
        if self._reader is None:
            self._reader = self._sink.view()
        return self._reader

    @property
    def overhead(self) -> float:
        """The overhead measured so far: the time recording added, as a fraction of the
        training time without it (NaN before a recorded and an unrecorded step were
        timed; see :mod:`~backprobe.probe.budget`)."""
        return self._step_clock.overhead()

    @property
    def sentinel_overhead(self) -> float:
        """The sentinel's measured overhead so far: its time at every step (loss, gradient
        norms, output-gradient samples), as a fraction of the training time without the
        probe, on top of :attr:`overhead` (NaN before an unrecorded step was timed)."""
        return self._step_clock.sentinel_overhead()

    @property
    def run_id(self) -> int | None:
        """Id of the run in the run database (None before attach or with ``db=None``)."""
        return self._sink.run_id if isinstance(self._sink, RunWriter) else None

    @property
    def layers(self) -> list[str]:
        """Probed layer names, input → output order (registration order until the first
        recorded step has shown the execution order)."""
        if self._layer_info is None:
            return self._names[: self._n_layers]
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
    def sentinel(self) -> SentinelSeries:
        return self._view().sentinel

    @property
    def events(self) -> list[RunEvent]:
        return self._view().events

    @property
    def recurrent_layers(self) -> list[str]:
        return self._view().recurrent_layers

    def __repr__(self) -> str:
        state = "attached" if self.attached else ("closed" if self._closed else "detached")
        return (
            f"Probe({type(unwrap(self.model)).__name__}, layers={len(self.layers)}, "
            f"step={self._step}, {state})"
        )
