"""Reused memory for the large temporaries a measurement makes and drops at once.

On the CPU a fresh tensor of an activation's size (or of an attention block's logits) is
memory the kernel maps anew each time: the allocator gives such blocks back to the
system when they are freed, and every page of the next one faults on first touch. In
the 16x512 tanh MLP of ``benchmarks/overhead.py`` that was 10-20 page faults per hook
and half again the saturation count's time; in a GPT-2 block's attention statistics
(8 sequences, 4 heads, 64 tokens) three times the arithmetic. A :class:`Scratch` keeps
one buffer per dtype, grown to the largest request and kept, and hands out views of
it. Elsewhere the device allocator caches freed blocks, so a fresh tensor is as cheap
and holds no memory between steps.
"""

from __future__ import annotations

import torch


class Scratch:
    """One reusable buffer per dtype on the CPU: :meth:`get` returns a view of it, valid
    until the next :meth:`get` of the same dtype asks for more than the buffer holds (a
    caller uses one view at a time, or one :class:`Scratch` per temporary it keeps)."""

    def __init__(self) -> None:
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        self._views: dict[tuple[torch.dtype, torch.Size], torch.Tensor] = {}

    def get(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` and ``dtype`` on ``device``."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        key = (dtype, shape)
        view = self._views.get(key)  # one view per shape, made once (hooks run often)
        if view is None:
            n = shape.numel()
            buffer = self._buffers.get(dtype)
            if buffer is None or buffer.numel() < n:
                buffer = self._buffers[dtype] = torch.empty(n, dtype=dtype)
                self._views.clear()  # views of the old buffer
            view = self._views[key] = buffer[:n].view(shape)
        return view

    def forget_views(self) -> None:
        """Drop the views kept per shape (shapes change from step to step: a view is
        kept for one step, not for the run)."""
        self._views.clear()
