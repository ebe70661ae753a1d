"""Attention logits and entropy, and the model output's scale, at recorded steps.

Per attention layer, over the calls of a recorded step (stored per layer, see below):

``attn_logit_max``
    The largest attention logit q·k·s over the query-key pairs the mask lets through
    (s = 1/√d unless the call passes another scale), heads and queries included: what
    grows when attention logits run away (Dehghani et al. 2023; Wortsman et al. 2023).
``attn_entropy``
    The entropy (nats) of each query's attention distribution softmax(q·k·s + mask),
    averaged over heads and queries: what collapses toward 0 when attention turns
    one-hot (Zhai et al. 2023). A query with n keys to attend to has at most log n.
``attn_entropy_min``
    The lowest of the heads' average entropies (over a call; the lowest over the step's
    calls): one collapsed head among healthy ones.

Per recorded step, of the model's output y (a Hugging Face output's ``logits``, else the
first floating-point tensor it returns): ``output_max`` = max |y| and ``output_rms`` = the
root-mean-square of y, the output-logit scale of a classifier or language model.

Where attention is found:

* ``nn.MultiheadAttention`` (so also ``nn.TransformerEncoderLayer`` /
  ``DecoderLayer`` and ``nn.Transformer``, which call it while training): a forward hook
  recomputes q and k from the module's input projection and the call's inputs, with its
  ``attn_mask`` and ``key_padding_mask`` (a bool mask there marks what is *not* attended);
  ``bias_k`` and ``add_zero_attn`` are honoured.
* ``F.scaled_dot_product_attention`` called anywhere inside the model (user code,
  Hugging Face ``attn_implementation="sdpa"``): q, k, ``attn_mask`` (bool: what *is*
  attended; float: added), ``is_causal``, ``scale`` and grouped-query heads
  (``enable_gqa``, or fewer key heads) from the call itself, after any rotary embedding.
* A softmax over the last dimension of a tensor of 3 or more dimensions inside a module
  whose class name says attention (``Attention``/``Attn``: Hugging Face ``"eager"``
  attention such as ``GPT2Attention``, ``LlamaAttention``, ``BertSelfAttention``): its
  input is the logits with the mask added; entries at or below half the dtype's lowest
  value count as masked, and an additive bias (ALiBi) is part of the logit there.

The calls are seen through a ``torch.overrides.TorchFunctionMode``. The first recorded
step runs the model's whole forward under it and notes the modules that call attention
(the innermost module of the model on the Python call stack); later recorded steps enter
it only inside those modules. Unrecorded steps carry no hook at all: the hooks are
registered when a recorded step begins and removed when it ends. Forwards without
gradient (evaluation) and recomputations inside the backward pass (checkpointing) are
not measured.

Which layer's row: the attention module's own entry if the probe probes it
(``nn.MultiheadAttention``), else its nearest probed ancestor (the residual block of a
Transformer layer: ``transformer.h.3`` for GPT-2's ``transformer.h.3.attn``), else its
last probed descendant; attention modules sharing a row are combined (largest logit,
mean entropy weighted by queries, lowest head).

Cost, on recorded steps only: the logits of the first :data:`ATTENTION_SAMPLES`
sequences in float32, in chunks of at most :data:`CHUNK` logits, one exponential and a
few reductions each, in two block-sized buffers reused from call to call
(:class:`Workspace`); the TorchFunctionMode's Python dispatch of every torch call inside
the attention modules (all of the forward at the first recorded step). The training
computation is untouched: everything is computed from detached tensors without gradient,
and the intercepted functions run with their own arguments.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from .compiled import tracing
from .norms import stacked_norms
from .outputs import floating_tensors
from .scratch import Scratch
from .stats import HostStep, StepBuffer

#: Sequences of a call's batch whose attention is measured (the first ones).
ATTENTION_SAMPLES = 8
#: Logits computed at once; longer sequences are measured in blocks of queries.
CHUNK = 1 << 21
#: Class names of modules whose softmax over the last dimension is attention.
ATTENTION_NAME = re.compile("attn|attention", re.IGNORECASE)
#: Stored per-layer statistics of this module, and per-step ones.
ATTENTION_STATISTICS: tuple[str, ...] = ("attn_logit_max", "attn_entropy", "attn_entropy_min")
OUTPUT_STATISTICS: tuple[str, ...] = ("output_max", "output_rms")
#: Python frames searched for the module that called attention.
FRAME_LIMIT = 64

_SOFTMAX = (F.softmax, torch.softmax, torch.Tensor.softmax)
_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def _measured_now() -> bool:
    """Whether a forward running now is a training forward to measure."""
    return torch.is_grad_enabled() and not _in_backward() and not tracing()


# -- the statistics of one call ---------------------------------------------------------

#: One call's statistics on the device: the largest logit (0-d), and per head the
#: entropy summed over the queries that attend to a key and their count ([H] float64).
CallStats = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _blocks(n: int, heads: int, queries: int, keys: int) -> list[tuple[slice, slice]]:
    """(samples, queries) blocks of at most :data:`CHUNK` logits (one query at least)."""
    if n * heads * queries * keys <= CHUNK:
        return [(slice(0, n), slice(0, queries))]
    rows = max(1, CHUNK // max(heads * keys, 1))
    return [
        (slice(i, i + 1), slice(start, min(queries, start + rows)))
        for i in range(n)
        for start in range(0, queries, rows)
    ]


def _four_d(t: torch.Tensor) -> torch.Tensor:
    """``[..., L, X]`` as ``[N, H, L, X]``: a 2-D tensor is one sequence of one head, a 3-D
    one N sequences of one head, a 4-D one ``[N, H, …]``; more leading dimensions are
    flattened into N."""
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t[:, None]
    return t if t.dim() == 4 else t.reshape(-1, *t.shape[-3:])


def _part(mask: torch.Tensor, samples: slice, queries: slice) -> torch.Tensor:
    """A block of a 4-D mask broadcastable to ``[N, H, L, S]`` (size-1 dimensions kept)."""
    return mask[
        samples if mask.shape[0] > 1 else slice(None),
        :,
        queries if mask.shape[2] > 1 else slice(None),
    ]


def _masked_below(t: torch.Tensor) -> float:
    """Values at or below this count as masked: half the dtype's lowest value (a mask
    filled with ``finfo.min``, and −inf)."""
    return torch.finfo(t.dtype).min / 2


#: What a query-key pair a mask shuts adds to its logit (float32): finite, so that its
#: exponential is 0 and 0 x logit is 0; an eighth of the lowest float32, so that the
#: most a call's masks add (a bool mask, a float mask's flag and its clamped −inf, the
#: causal mask) stays finite.
_CLOSED = torch.finfo(torch.float32).min / 8


#: The least t whose exponential is taken: e^-80 is a normal float32 (1.8e-35), while
#: below -87 the result is subnormal or 0, which a CPU's vectorised exp computes 20 to
#: 50 times slower (-inf too: 6 times), and closed pairs are half of a causal block.
_LOWEST_EXPONENT = -80.0


class Workspace:
    """Reused memory for the statistics of a step's attention calls: the two block-sized
    temporaries, the logits and their exponentials (:class:`~backprobe.probe.scratch.Scratch`:
    on the CPU a fresh block of a GPT-2's logits costs more in page faults than in
    arithmetic), and the causal masks' closed pairs, made once per step and block shape
    instead of once per call."""

    __slots__ = ("_causal", "exps", "logits")

    def __init__(self) -> None:
        self.logits, self.exps = Scratch(), Scratch()
        self._causal: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}

    def causal(self, queries: slice, keys: int, device: torch.device) -> torch.Tensor:
        """[queries, keys] float32: :data:`_CLOSED` where the key follows the query."""
        key = (queries.start, queries.stop, keys, device)
        closed = self._causal.get(key)
        if closed is None:
            rows = torch.arange(queries.start, queries.stop, device=device)
            after = rows[:, None] < torch.arange(keys, device=device)
            closed = self._causal[key] = _closed_where(after)
        return closed

    def new_step(self) -> None:
        """Forget the views and masks of the step before (shapes may change)."""
        self.logits.forget_views()
        self.exps.forget_views()
        self._causal.clear()


class Masks:
    """What a call lets attend: 4-D masks broadcastable to ``[N, H, L, S]`` (not
    materialised), each boolean (``attends``: whether True marks a pair attended, as in
    SDPA, or masked, as in ``nn.MultiheadAttention``) or float (added to the logits;
    −inf and values at or below half the dtype's lowest value mask), and a causal mask
    aligned at the top left (query i attends to keys 0…i)."""

    def __init__(
        self, masks: list[tuple[torch.Tensor, bool]] | None = None, causal: bool = False
    ) -> None:
        self.masks = masks or []
        self.causal = causal

    def block(
        self, samples: slice, queries: slice, keys: int, device: torch.device, work: Workspace
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(closed, bias) of one block, float32 and broadcastable to it, or None for
        none: ``closed`` is :data:`_CLOSED` at each pair a mask shuts (once per mask that
        shuts it) and 0 elsewhere, ``bias`` the float masks' sum."""
        closed: torch.Tensor | None = None
        bias: torch.Tensor | None = None

        def plus(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
            return term if total is None else total + term

        for mask, attends in self.masks:
            part = _part(mask, samples, queries)
            if part.dtype == torch.bool:
                closed = plus(closed, _closed_where(~part if attends else part))
            else:
                closed = plus(closed, _closed_where(part <= _masked_below(part)))
                bias = plus(bias, part.float())
        if self.causal:
            closed = plus(closed, work.causal(queries, keys, device))
        return closed, bias


def _closed_where(shut: torch.Tensor) -> torch.Tensor:
    """float32 :data:`_CLOSED` where ``shut``, 0 elsewhere (at ``shut``'s own size)."""
    return torch.zeros_like(shut, dtype=torch.float32).masked_fill_(shut, _CLOSED)


def _block_stats(
    logits: torch.Tensor,
    closed: torch.Tensor | None,
    bias: torch.Tensor | None,
    work: Workspace,
) -> CallStats:
    """Statistics of one block of ``logits`` [n, H, l, S] (float32, q·k·s without the
    additive ``bias``; overwritten); ``closed`` the masks' :data:`_CLOSED` at the pairs
    they shut (broadcastable, None: all open), as :meth:`Masks.block` gives them.

    With t = logit − the query's largest and e = exp(t), Z = Σ e, the entropy of the
    softmax is log Z − Σ e·t / Z: two terms that are never negative (no cancellation, so
    near one-hot rows keep their small entropies), from one exponential and two sums
    per query, where a softmax and a log-softmax took four passes more. A closed pair's
    e and e·t are 0, and every t is raised to :data:`_LOWEST_EXPONENT` at least (e·t
    there is below 1e-33, against a Z of 1 at least). A query with no key to attend to
    (its largest logit is a closed one) is left out: its entropy is not defined; so is
    one whose logits are not finite (the largest logit, kept, says so).
    """
    if closed is not None:
        logits.add_(closed)
    largest = logits.amax(dim=-1, keepdim=True)  # [n, H, l, 1]: before the bias
    top = largest
    if bias is not None:
        logits.add_(bias.clamp(min=_CLOSED))  # −inf in a float mask: closed
        top = logits.amax(dim=-1, keepdim=True)
    t = logits.sub_(top).clamp_(min=_LOWEST_EXPONENT)
    e = torch.exp(t, out=work.exps.get(t.shape, t.dtype, t.device))
    z = e.sum(dim=-1)
    entropy = torch.log(z) - e.mul_(t).sum(dim=-1) / z  # [n, H, l], NaN if not finite
    peaks = largest.squeeze(-1)
    shut = peaks <= _CLOSED  # no key open (a closed logit absorbs any plausible q·k)
    valid = ~(torch.isnan(entropy) | shut)
    sums = torch.where(valid, entropy, 0.0).sum(dim=(0, 2), dtype=torch.float64)
    peak = torch.where(shut, -math.inf, peaks).amax()
    return peak, sums, valid.sum(dim=(0, 2), dtype=torch.float64)


def _combine(parts: list[CallStats]) -> CallStats:
    peak, sums, counts = parts[0]
    for p, s, c in parts[1:]:
        peak, sums, counts = torch.maximum(peak, p), sums + s, counts + c
    return peak, sums, counts


def logit_stats(
    q: torch.Tensor, k: torch.Tensor, scale: float, masks: Masks, work: Workspace | None = None
) -> CallStats:
    """Statistics of attention with queries ``q`` [N, H, L, E] and keys ``k`` [N, H, S, E]
    (heads matched), logits q·k·``scale``, over the pairs ``masks`` let attend."""
    work = work or Workspace()
    n, heads, length, _ = q.shape
    keys = k.shape[2]
    parts = []
    for samples, queries in _blocks(n, heads, length, keys):
        block = q[samples, :, queries]
        shape = torch.Size((*block.shape[:-1], keys))
        logits = work.logits.get(shape, torch.float32, q.device)
        torch.matmul(block.float(), k[samples].float().transpose(-1, -2), out=logits)
        closed, bias = masks.block(samples, queries, keys, q.device, work)
        parts.append(_block_stats(logits.mul_(scale), closed, bias, work))
    return _combine(parts)


def score_stats(scores: torch.Tensor, work: Workspace | None = None) -> CallStats:
    """Statistics of a softmax input ``scores`` [N, H, L, S] (logits with the mask
    added: entries at or below half the dtype's lowest value are masked)."""
    work = work or Workspace()
    n, heads, length, keys = scores.shape
    below = _masked_below(scores)
    parts = []
    for samples, queries in _blocks(n, heads, length, keys):
        block = scores[samples, :, queries]
        logits = work.logits.get(block.shape, torch.float32, scores.device).copy_(block)
        logits.masked_fill_(logits <= below, _CLOSED)
        parts.append(_block_stats(logits, None, None, work))
    return _combine(parts)


def _sdpa_arguments(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool, float | None]:
    """``F.scaled_dot_product_attention``'s arguments this module reads."""
    return query, key, attn_mask, is_causal, scale


def sdpa_stats(
    args: tuple, kwargs: Mapping[str, object], samples: int, work: Workspace | None = None
) -> CallStats:
    """Statistics of one ``F.scaled_dot_product_attention(*args, **kwargs)`` call, over
    its first ``samples`` sequences."""
    query, key, attn_mask, causal, scale = _sdpa_arguments(*args, **kwargs)  # type: ignore[arg-type]
    q, k = _four_d(query.detach())[:samples], _four_d(key.detach())[:samples]
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves a group
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    masks = []
    if attn_mask is not None:
        full = torch.broadcast_to(attn_mask.detach(), (*query.shape[:-1], key.shape[-2]))
        masks.append((_four_d(full)[:samples], True))
    return logit_stats(q, k, scale or 1 / math.sqrt(query.shape[-1]), Masks(masks, causal), work)


def _softmax_arguments(
    input: torch.Tensor, dim: int | None = None, *rest: object, **kwargs: object
) -> tuple[torch.Tensor, int | None]:
    return input, dim


def mha_stats(
    module: nn.MultiheadAttention,
    args: tuple,
    kwargs: Mapping[str, object],
    samples: int,
    work: Workspace | None = None,
) -> CallStats:
    """Statistics of one ``nn.MultiheadAttention`` call, from its input projection and
    the call's inputs and masks, over its first ``samples`` sequences."""
    call = _MHA_SIGNATURE.bind(module, *args, **kwargs)
    call.apply_defaults()
    query, key = call.arguments["query"].detach(), call.arguments["key"].detach()
    attn_mask, padding = call.arguments["attn_mask"], call.arguments["key_padding_mask"]
    if query.dim() == 2:  # unbatched: [L, E]
        query, key = query[:, None], key[:, None]
        padding = None if padding is None else padding[None]
    elif module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    batch, embed, heads = query.shape[1], module.embed_dim, module.num_heads
    n = min(samples, batch)
    if module._qkv_same_embed_dim:
        w_q, w_k = module.in_proj_weight[:embed], module.in_proj_weight[embed : 2 * embed]
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    bias = module.in_proj_bias
    b_q, b_k = (None, None) if bias is None else (bias[:embed], bias[embed : 2 * embed])
    q = F.linear(query[:, :n], w_q, b_q)  # [L, n, E]
    k = F.linear(key[:, :n], w_k, b_k)  # [S, n, E]
    extra = 0  # key positions added by bias_k and add_zero_attn: attended by every query
    if module.bias_k is not None:
        k = torch.cat([k, module.bias_k.expand(1, n, embed)])
        extra += 1
    q = q.reshape(q.shape[0], n, heads, -1).permute(1, 2, 0, 3)
    k = k.reshape(k.shape[0], n, heads, -1).permute(1, 2, 0, 3)
    if module.add_zero_attn:
        k = torch.cat([k, k.new_zeros(n, heads, 1, k.shape[-1])], dim=2)
        extra += 1
    masks: list[tuple[torch.Tensor, bool]] = []
    if attn_mask is not None:
        mask = attn_mask.detach()
        mask = mask[None, None] if mask.dim() == 2 else mask.reshape(batch, heads, *mask.shape[1:])
        masks.append((F.pad(mask, (0, extra)) if extra else mask, False))
    if padding is not None:
        mask = padding.detach()[:n, None, None, :]
        masks.append((F.pad(mask, (0, extra)) if extra else mask, False))
    masks = [(m[:n] if m.shape[0] > 1 else m, attends) for m, attends in masks]
    return logit_stats(q, k, 1 / math.sqrt(q.shape[-1]), Masks(masks), work)


# -- where attention is: hooks and the function mode ----------------------------------


class Tally:
    """One attention module's statistics over a step's calls, on the device."""

    __slots__ = ("entropy", "lowest", "peak", "queries")

    def __init__(self, stats: CallStats) -> None:
        self.peak, sums, counts = stats
        self.entropy, self.queries = sums.sum(), counts.sum()
        self.lowest = self._lowest(sums, counts)

    @staticmethod
    def _lowest(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The lowest head's mean entropy (+inf when no head attended)."""
        return torch.where(counts > 0, sums / counts.clamp(min=1), math.inf).amin()

    def add(self, stats: CallStats) -> None:
        peak, sums, counts = stats
        self.peak = torch.maximum(self.peak, peak)
        self.entropy = self.entropy + sums.sum()
        self.queries = self.queries + counts.sum()
        self.lowest = torch.minimum(self.lowest, self._lowest(sums, counts))

    def vector(self) -> torch.Tensor:
        """[4] float64: largest logit, entropy sum, queries, lowest head's mean entropy."""
        parts = (self.peak, self.entropy, self.queries, self.lowest)
        return torch.stack([t.to(torch.float64) for t in parts])


class _Mode(TorchFunctionMode):
    """Sees the attention calls made while it is active, for its watch."""

    def __init__(self, watch: AttentionWatch) -> None:
        super().__init__()
        self._watch = weakref.ref(watch)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        watch = self._watch()
        if watch is not None and (func is F.scaled_dot_product_attention or func in _SOFTMAX):
            watch.on_call(func, args, kwargs)
        return func(*args, **kwargs)


class _Hook:
    """A module hook of the watch (``what``: enter, leave, mha or output). Weak and inert
    in copies of the model, like the probe's own hooks."""

    __slots__ = ("_watch", "what")

    def __init__(self, watch: AttentionWatch | None, what: str) -> None:
        self._watch = None if watch is None else weakref.ref(watch)
        self.what = what

    def __call__(self, module: nn.Module, args: tuple, *rest: object) -> None:
        watch = None if self._watch is None else self._watch()
        if watch is None:
            return
        if self.what == "enter":
            watch.enter()
        elif self.what == "leave":
            watch.leave()
        elif self.what == "mha":
            kwargs = rest[0] if isinstance(rest[0], dict) else {}
            watch.on_mha(module, args, kwargs)  # type: ignore[arg-type]
        else:
            watch.on_output(rest[-1])

    def __deepcopy__(self, memo: dict) -> _Hook:
        return _Hook(None, self.what)

    def __reduce__(self) -> tuple:
        return (_Hook, (None, self.what))


def _logits(output: object) -> torch.Tensor | None:
    """The model output's logits: a Hugging Face output's ``logits``, else its first
    floating-point tensor with a dimension."""
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    return next((t for t in floating_tensors(output) if t.dim() > 0 and t.numel()), None)


@dataclass(frozen=True)
class Measured:
    """Where a step's values went in its transfer: (attention module, entry) pairs and the
    output's entry (None when the output gave no tensor)."""

    entries: list[tuple[nn.Module, int]]
    output: int | None


class AttentionWatch:
    """The attention statistics of one model at recorded steps (see the module docstring).

    ``start(recording)`` at the beginning of every step registers the hooks for a recorded
    one (and removes them otherwise); ``measure(buffer)`` at ``step()`` adds the step's
    values to the step's transfer; ``series`` turns the host values into stored series.
    """

    def __init__(self, model: nn.Module, samples: int | None = None) -> None:
        self.root = model
        self.samples = ATTENTION_SAMPLES if samples is None else samples
        named = list(model.named_modules())
        self._in_model = {id(m) for _, m in named}
        self._parents = {id(child): parent for _, parent in named for child in parent.children()}
        self._mha = [m for _, m in named if isinstance(m, nn.MultiheadAttention)]
        self._sites: list[nn.Module] | None = None  # modules calling attention
        self._found: dict[int, nn.Module] = {}
        self._tallies: dict[int, tuple[nn.Module, Tally]] = {}
        self._output: list[torch.Tensor] | None = None  # largest |y|, Σy², elements
        self._handles: list[RemovableHandle] = []
        self._mode = _Mode(self)
        self._entered: list[bool] = []  # per module inside: whether it entered the mode
        self._depth = 0
        self._measured = False  # a training forward ran under the mode this step
        self._rows: dict[int, int] = {}
        self._work = Workspace()

    # -- hooks --

    def start(self, recording: bool) -> None:
        """A step begins: hooks for a recorded one, none otherwise."""
        self._remove()
        self._tallies, self._output, self._measured = {}, None, False
        self._work.new_step()
        if not recording:
            return
        for mha in self._mha:
            hook = _Hook(self, "mha")
            self._handles.append(mha.register_forward_hook(hook, with_kwargs=True))
        for site in [self.root] if self._sites is None else self._sites:
            self._handles.append(site.register_forward_pre_hook(_Hook(self, "enter")))
            leave = _Hook(self, "leave")
            self._handles.append(site.register_forward_hook(leave, always_call=True))
        self._handles.append(self.root.register_forward_hook(_Hook(self, "output")))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._depth:  # a forward that never came back through its hooks
            self._mode.__exit__(None, None, None)
        self._depth = 0
        self._entered.clear()

    def enter(self) -> None:
        measured = _measured_now()
        self._entered.append(measured)
        if measured:
            if not self._depth:
                self._mode.__enter__()
            self._depth += 1
            self._measured = True

    def leave(self) -> None:
        if self._entered and self._entered.pop():
            self._depth -= 1
            if not self._depth:
                self._mode.__exit__(None, None, None)

    def _caller(self) -> nn.Module | None:
        """The innermost module of the model on the Python call stack."""
        frame: FrameType | None = sys._getframe(2)
        for _ in range(FRAME_LIMIT):
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if id(owner) in self._in_model and isinstance(owner, nn.Module):
                return owner
            frame = frame.f_back
        return None

    def on_call(self, func: object, args: tuple, kwargs: dict) -> None:
        """An attention function call inside the mode."""
        site = self._caller()
        if site is None:
            return
        with torch.no_grad():
            if func is F.scaled_dot_product_attention:
                stats = sdpa_stats(args, kwargs, self.samples, self._work)
            else:
                scores, dim = _softmax_arguments(*args, **kwargs)
                last = (-1, scores.dim() - 1)
                if not ATTENTION_NAME.search(type(site).__name__) or scores.dim() < 3:
                    return
                if dim not in last:
                    return
                stats = score_stats(_four_d(scores.detach())[: self.samples], self._work)
        self._found[id(site)] = site
        self._add(site, stats)

    def on_mha(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
        if _measured_now():
            with torch.no_grad():
                self._add(module, mha_stats(module, args, kwargs, self.samples, self._work))

    def on_output(self, output: object) -> None:
        logits = _logits(output) if _measured_now() else None
        if logits is None:
            return
        with torch.no_grad():
            low, high = torch.aminmax(logits.detach())
            # The norm in float32 at least, not float64: that cost 6.7 ms on a GPT-2's
            # [8, 64, 4096] logits on a CPU core, 25 times the float32 norm (a BLAS dot
            # there, half the time of vector_norm). float32 overflows only when the RMS
            # passes 1.8e19 / √numel (1e16 there), long after the largest logit (exact,
            # beside it) says the run has diverged.
            wide = logits.dtype if logits.dtype.itemsize >= 4 else torch.float32
            values = [
                torch.maximum(low.abs(), high.abs()).double(),
                stacked_norms([logits.detach()], wide)[0].double().square(),
                torch.tensor(float(logits.numel()), dtype=torch.float64, device=logits.device),
            ]
        if self._output is None:
            self._output = values
        else:
            self._output = [
                torch.maximum(self._output[0], values[0]),
                self._output[1] + values[1],
                self._output[2] + values[2],
            ]

    def _add(self, module: nn.Module, stats: CallStats) -> None:
        known = self._tallies.get(id(module))
        if known is None:
            self._tallies[id(module)] = (module, Tally(stats))
        else:
            known[1].add(stats)

    # -- the step's values --

    def measure(self, buffer: StepBuffer) -> Measured:
        """Add the step's values to ``buffer`` (its one transfer); the first recorded step
        whose forward ran under the mode fixes the modules that call attention."""
        if self._sites is None and self._measured:
            self._sites = list(self._found.values())
        entries = [(m, buffer.add_extra(t.vector())) for m, t in self._tallies.values()]
        output = None if self._output is None else buffer.add_extra(torch.stack(self._output))
        return Measured(entries, output)

    def _row(self, module: nn.Module, modules: list[nn.Module], position: np.ndarray) -> int:
        """The stored row of an attention module (see the module docstring), or -1."""
        if id(module) not in self._rows:
            entry = {id(m): i for i, m in enumerate(modules)}

            def row(m: nn.Module) -> int:
                i = entry.get(id(m))
                return -1 if i is None else int(position[i])

            found = -1
            up: nn.Module | None = module
            while found < 0 and up is not None:
                found, up = row(up), self._parents.get(id(up))
            if found < 0:
                found = max((row(sub) for sub in module.modules()), default=-1)
            self._rows[id(module)] = found
        return self._rows[id(module)]

    def series(
        self, host: HostStep, measured: Measured, modules: list[nn.Module], position: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The stored series of the step: the attention statistics per stored layer row
        (``position``: each of the probe's entries' row, -1 if not stored) and the output's
        scale."""
        n_rows = int(position.max(initial=-1)) + 1
        peak = np.full(n_rows, -np.inf)
        entropy, queries = np.zeros(n_rows), np.zeros(n_rows)
        lowest = np.full(n_rows, np.inf)
        for module, entry in measured.entries:
            row = self._row(module, modules, position)
            if row >= 0:
                values = host.entry(entry)
                peak[row] = np.maximum(peak[row], values[0])
                entropy[row] += values[1]
                queries[row] += values[2]
                lowest[row] = np.minimum(lowest[row], values[3])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(queries > 0, entropy / queries, np.nan)
        series = {
            "attn_logit_max": np.where(np.isneginf(peak) & (queries == 0), np.nan, peak),
            "attn_entropy": mean,
            "attn_entropy_min": np.where(np.isposinf(lowest), np.nan, lowest),
            "output_max": np.array([np.nan]),
            "output_rms": np.array([np.nan]),
        }
        if measured.output is not None:
            largest, squares, count = host.entry(measured.output)
            series["output_max"] = np.array([largest])
            series["output_rms"] = np.array([math.sqrt(squares / count)])
        return series
