"""The update the optimizer applied after a recorded step, measured around ``opt.step()``.

``bp.Probe(model, optimizer=opt)`` stores two more per-layer statistics with each
recorded step:

``update_to_weight``
    ||Δθ|| / ||θ|| over the layer's own trainable parameters that ``opt`` steps: Δθ the
    change that ``opt.step()`` made, θ the parameters before it. Measured, not estimated:
    whatever the optimizer does (momentum, Adam's moments, weight decay, clipping inside
    a fused kernel) is in Δθ.
``adam_step``
    For ``torch.optim.Adam`` and ``AdamW`` (and their subclasses): Adam's effective step
    size lr / (√v̂ + ε), with v̂ = v / (1 − β₂ᵗ) the bias-corrected second moment after the
    step (AMSGrad: its running maximum), the median over the layer's parameter elements
    (``torch.median``: the lower of the two middle values for an even count). The median
    because the mean is ruled by the elements whose gradient has been zero so far (v̂ = 0,
    a step of lr / ε, 10⁵ · lr at ε = 1e-8); the median is the step of a typical element.
    NaN for other optimizers.

Which step an update belongs to. In the documented loop ``probe.step(loss)`` comes
before ``opt.step()``: the recorded step's row is stored before the optimizer has used its
gradients. The optimizer's step hooks (``register_step_pre_hook`` /
``register_step_post_hook``) therefore measure the first ``opt.step()`` after a recorded
``probe.step()`` (and before the next one) and amend that step's row. A recorded step
after which the optimizer does not step before the next ``probe.step()`` keeps NaN: a
``GradScaler`` that skipped the step for an inf, gradient accumulation that steps later, a
loop that ends or detaches the probe first. A loop whose backward runs inside
``opt.step(closure)`` (Lightning's automatic optimisation, LBFGS-style closures) records
the step between the two hooks, before the update: the probe's ``step()`` then takes the
copy itself (:meth:`UpdateWatch.step_ended`) and the post-hook of that same
``opt.step()`` measures it. Parameters in the optimizer's groups that the
probe does not probe are left alone; a probed layer whose parameters the optimizer does
not step gets NaN.

Cost. Nothing on unrecorded steps: the hooks return at once. After a recorded step, a
copy of the probed parameters that the optimizer steps lives from the pre-hook to the
post-hook (a difference of the parameters is the only measure of the applied update that
holds for every optimizer to the last bit), then one fused norm per device and dtype of
the copies and of the differences (taken in place in the copies); for Adam, one median
per layer. The results stay on the device: a CUDA tensor is copied to the host
asynchronously and stored once the copy has finished (looked at, without waiting, at the
next optimizer step), at the latest when the run is read or the probe detaches; anything
else is stored at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle

from ..errors import ProbeConfigError
from .norms import grouped_norms, local_values

#: Optimizers whose effective step size (``adam_step``) is measured.
ADAM_FAMILY: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW)
#: The statistics this module measures, by stored name.
UPDATE_STATISTICS: tuple[str, ...] = ("update_to_weight", "adam_step")

#: Per probed entry (layer or block, the probe's hook index): each statistic's values.
PerEntry = dict[str, np.ndarray]


def check_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """``optimizer`` if it is a ``torch.optim.Optimizer``; a clear error otherwise."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ProbeConfigError(
            f"Expected optimizer= to be a torch.optim.Optimizer (the one whose step() the "
            f"loop calls), but got {type(optimizer).__name__}. Pass the optimizer itself, "
            "e.g. bp.Probe(model, optimizer=opt)."
        )
    return optimizer


def _to_host(values: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy of ``values`` and, for a CUDA tensor, the event after which it holds
    them (the copy is asynchronous); other devices copy at once."""
    if values.device.type != "cuda":
        return values.cpu(), None
    host = values.to("cpu", non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(values.device))
    return host, event


@dataclass
class _Measured:
    """One optimizer step's measurements on their way to the host. ``pairs`` [k, 2]:
    each stepped (entry, parameter) pair, the parameter as its index among the ``n_params``
    distinct ones; ``pieces``: (what, indices, host tensor), one value per index: the
    norms of θ (``"weight"``) and of Δθ (``"delta"``) by parameter, Adam's step
    (``"adam"``) by entry."""

    step: int
    pairs: np.ndarray
    n_params: int
    pieces: list[tuple[str, np.ndarray, torch.Tensor]] = field(default_factory=list)
    events: list[torch.cuda.Event] = field(default_factory=list)

    def add(self, part: str, indices: Sequence[int], values: torch.Tensor) -> None:
        host, event = _to_host(values)
        self.pieces.append((part, np.asarray(indices, np.int64), host))
        if event is not None:
            self.events.append(event)

    def ready(self) -> bool:
        return all(event.query() for event in self.events)

    def wait(self) -> None:
        for event in self.events:
            event.synchronize()


class _StepHook:
    """An optimizer step hook that calls back into its watch: the pre-hook (``before``)
    or the post-hook. It holds the watch weakly, and a copy or a pickle of the optimizer
    gets an inert hook, like the probe's module hooks."""

    __slots__ = ("_watch", "before")

    def __init__(self, watch: UpdateWatch | None, before: bool) -> None:
        self._watch = None if watch is None else weakref.ref(watch)
        self.before = before

    def __call__(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        watch = None if self._watch is None else self._watch()
        if watch is not None:
            watch.before_step() if self.before else watch.after_step()

    def __deepcopy__(self, memo: dict) -> _StepHook:
        return _StepHook(None, self.before)

    def __reduce__(self) -> tuple:
        return (_StepHook, (None, self.before))


class UpdateWatch:
    """Measures the optimizer's update after each recorded step (see the module docstring).

    Args:
        optimizer: the optimizer whose ``step()`` the training loop calls.
        params: the probe's ``(entry, parameter)`` pairs (a tied parameter once per entry
            holding it).
        n_entries: how many entries the probe has (values are per entry).
        due: the recorded step whose update the next ``opt.step()`` makes, or None (the
            probe's answer: the step just ended, if it was recorded).
        store: receives ``(step, values per entry)`` once they are on the host.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[tuple[int, nn.Parameter]],
        n_entries: int,
        due: Callable[[], int | None],
        store: Callable[[int, PerEntry], None],
    ) -> None:
        self.optimizer = check_optimizer(optimizer)
        self._params = params
        self._n = n_entries
        self._due = due
        self._store = store
        self._last: int | None = None  # the step whose update was measured last
        # between the hooks: the step, the stepped (entry, parameter) pairs, the distinct
        # parameters and their copies
        self._taken: tuple[int, list[tuple[int, nn.Parameter]], list[nn.Parameter], list] | None
        self._taken = None
        self._inside = False  # between the pre-hook and the post-hook of an opt.step()
        self._pending: list[_Measured] = []

    def hooks(self) -> list[RemovableHandle]:
        """Register the optimizer's step hooks; the probe removes them when it detaches."""
        return [
            self.optimizer.register_step_pre_hook(_StepHook(self, before=True)),
            self.optimizer.register_step_post_hook(_StepHook(self, before=False)),
        ]

    def _stepped(self) -> list[tuple[int, nn.Parameter]]:
        """The probed (entry, parameter) pairs whose parameter the optimizer steps."""
        stepped = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return [
            (i, p)
            for i, p in self._params
            if id(p) in stepped and p.requires_grad and not is_lazy(p)
        ]

    def before_step(self) -> None:
        """Pre-hook: copy the parameters if this step's update belongs to a recorded step."""
        self.settle(wait=False)
        self._inside, self._taken = True, None  # a copy whose post-hook never ran is stale
        self._take()

    def step_ended(self) -> None:
        """The probe's ``step()`` just ended a recorded step: inside an ``opt.step()``
        whose closure ran the backward, the update is still to come, so copy now."""
        if self._inside:
            self._take()

    def _take(self) -> None:
        """Copy the stepped parameters for the due recorded step, unless it has its copy
        or its measurement already."""
        step = self._due()
        if step is None or step == self._last or self._taken is not None:
            return
        pairs = self._stepped()
        distinct = list({id(p): p for _, p in pairs}.values())
        if not distinct:
            return
        with torch.no_grad():
            copies = [p.detach().clone() for p in distinct]
        self._taken = (step, pairs, distinct, copies)

    def after_step(self) -> None:
        """Post-hook: the norms of θ (before) and of Δθ, per parameter, and Adam's step
        per entry, on their way to the host."""
        taken, self._taken = self._taken, None
        self._inside = False
        if taken is None:
            return
        step, pairs, distinct, before = taken
        self._last = step
        index = {id(p): k for k, p in enumerate(distinct)}
        measured = _Measured(
            step, np.asarray([(i, index[id(p)]) for i, p in pairs], np.int64), len(distinct)
        )
        with torch.no_grad():
            for positions, norms in grouped_norms([local_values(t)[0] for t in before]):
                measured.add("weight", positions, norms)
            torch._foreach_sub_(before, [p.detach() for p in distinct])  # θ − θ': −Δθ
            for positions, norms in grouped_norms([local_values(t)[0] for t in before]):
                measured.add("delta", positions, norms)
            del before
            if isinstance(self.optimizer, ADAM_FAMILY):
                for entries, medians in self._adam_steps(pairs):
                    measured.add("adam", entries, medians)
        self._pending.append(measured)
        self.settle(wait=False)

    def _adam_steps(
        self, pairs: list[tuple[int, nn.Parameter]]
    ) -> list[tuple[list[int], torch.Tensor]]:
        """Per device: the entries with Adam state and their median lr / (√v̂ + ε) [k]."""
        group_of = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        per_entry: dict[int, list[torch.Tensor]] = {}
        for i, p in pairs:
            state = self.optimizer.state.get(p, {})
            group = group_of[id(p)]
            second = state.get("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq")
            if second is None or "step" not in state:
                continue
            beta2, eps, lr = group["betas"][1], group["eps"], group["lr"]
            corrected = second.float() / (1 - beta2 ** state["step"])
            per_entry.setdefault(i, []).append((lr / (corrected.sqrt() + eps)).flatten())
        by_device: dict[torch.device, tuple[list[int], list[torch.Tensor]]] = {}
        for i, steps in per_entry.items():
            values = steps[0] if len(steps) == 1 else torch.cat(steps)
            entries, medians = by_device.setdefault(values.device, ([], []))
            entries.append(i)
            medians.append(values.median())
        return [(entries, torch.stack(medians)) for entries, medians in by_device.values()]

    def settle(self, wait: bool) -> None:
        """Store every measurement whose host copy has arrived; with ``wait``, all of them
        (waiting for the copies)."""
        while self._pending:
            measured = self._pending[0]
            if wait:
                measured.wait()
            elif not measured.ready():
                return
            self._pending.pop(0)
            self._store(measured.step, self._per_entry(measured))

    def _per_entry(self, measured: _Measured) -> PerEntry:
        """The step's statistics per entry (NaN where not measured)."""
        norms = {"weight": np.zeros(measured.n_params), "delta": np.zeros(measured.n_params)}
        adam = np.full(self._n, np.nan)
        for part, indices, host in measured.pieces:
            (adam if part == "adam" else norms[part])[indices] = host.double().numpy()
        entries, params = measured.pairs[:, 0], measured.pairs[:, 1]
        squares = {
            part: np.bincount(entries, values[params] ** 2, minlength=self._n)
            for part, values in norms.items()
        }
        stepped = np.bincount(entries, minlength=self._n) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.sqrt(squares["delta"]) / np.sqrt(squares["weight"])
        return {"update_to_weight": np.where(stepped, ratio, np.nan), "adam_step": adam}
