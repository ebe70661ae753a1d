"""Echo state network: a recurrent net whose recurrence is never trained, so no gradient
has to travel through time at all.

Jaeger (2001): a fixed random *reservoir* of N tanh units with leaky integration,

    x_t = (1 − a)·x_{t−1} + a·tanh(W_in u_t + W x_{t−1} + b [+ W_fb y_{t−1}])

and a linear readout y_t = W_out x_t + b_out, the only trained part, fitted in closed form
by ridge regression. The reservoir keeps a fading memory of its inputs when W's spectral
radius is near 1; the vanishing or exploding gradient problem does not arise because
nothing is back-propagated through the recurrence.

Choices, matching ReservoirPy's defaults so that both can be run with the same
hyper-parameters (``benchmarks/esn_vs_reservoirpy.py``):

* W: sparse (each entry non-zero with probability ``connectivity``), N(0, 1) entries,
  rescaled so that its spectral radius (largest |eigenvalue|, computed once in float64) is
  ``spectral_radius``. It is stored dense: for the reservoir sizes an ESN uses (10²–10⁴) a
  dense matmul beats a sparse one on CPU and GPU.
* W_in: entries ±``input_scaling`` (fair coin) with density ``input_connectivity``; b:
  U(±``bias_scaling``) (0 by default); W_fb: U(±``feedback_scaling``) when ``feedback``.
* Readout ridge: W_out = argmin ‖Y − X W_outᵀ − b_out‖² + ridge·‖W_out‖², the bias not
  penalised (centred solution). XᵀX, XᵀY and the sums are accumulated in float64 over
  chunks of time and batch, so a long series neither overflows memory nor loses the
  small eigen-directions to float32 rounding.
* The readout is an ``nn.Linear`` (``self.readout``): it can also be trained by gradient
  on :meth:`states` (teacher-forced), e.g. with a loss other than squared error.
* Layout: time-major [T, B, features] like ``nn.RNN`` (``batch_first=True`` for
  [B, T, features]); unbatched [T, features] is accepted everywhere.
* All tensors are buffers: ``esn.to("cuda")`` moves the reservoir; the generator is a
  seeded ``torch.Generator`` on CPU, so a seed gives the same reservoir on every device.

Example:
    >>> import torch
    >>> from backprobe.remedies import EchoStateNetwork
    >>> t = torch.arange(600, dtype=torch.float32)
    >>> u = torch.sin(0.1 * t).unsqueeze(-1)  # [T, 1], one unbatched series
    >>> esn = EchoStateNetwork(1, 100, 1, spectral_radius=0.9, leak=0.5, seed=0)
    >>> _ = esn.fit(u[:-1], u[1:], warmup=100)  # one-step-ahead forecast
    >>> err = (esn(u[:-1])[100:] - u[1:][100:]).pow(2).mean().sqrt()
    >>> bool(err < 1e-3)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import RemedyError

__all__ = ["EchoStateNetwork"]


def _sparse_normal(rows: int, cols: int, density: float, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return w * (torch.rand(rows, cols, generator=g, dtype=torch.float64) < density)


def _sparse_sign(
    rows: int, cols: int, density: float, scale: float, g: torch.Generator
) -> torch.Tensor:
    sign = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0).double()
    mask = torch.rand(rows, cols, generator=g, dtype=torch.float64) < density
    return scale * sign * mask


class EchoStateNetwork(nn.Module):
    """A leaky tanh reservoir with a ridge (or gradient-trained) linear readout.

    Args:
        input_size: features of u_t.
        reservoir_size: N, the number of reservoir units.
        output_size: features of y_t.
        spectral_radius: the largest |eigenvalue| W is scaled to (memory vs stability).
        leak: a in (0, 1]; 1 is a plain (non-leaky) reservoir.
        input_scaling: magnitude of the W_in entries.
        connectivity: density of W.
        input_connectivity: density of W_in.
        bias_scaling: b ~ U(±bias_scaling).
        feedback: feed y_{t−1} back into the reservoir through W_fb.
        feedback_scaling: W_fb ~ U(±feedback_scaling).
        ridge: the default ridge penalty of :meth:`fit`.
        batch_first: inputs and outputs are [B, T, F] instead of [T, B, F].
        seed: seeds the reservoir draw (``None``: from the global torch RNG).
        dtype: the reservoir's dtype (float32 by default; float64 for a reference).
    """

    W: torch.Tensor
    W_in: torch.Tensor
    bias: torch.Tensor
    W_fb: torch.Tensor

    def __init__(
        self,
        input_size: int,
        reservoir_size: int = 100,
        output_size: int = 1,
        *,
        spectral_radius: float = 1.25,
        leak: float = 0.3,
        input_scaling: float = 1.0,
        connectivity: float = 0.1,
        input_connectivity: float = 0.1,
        bias_scaling: float = 0.0,
        feedback: bool = False,
        feedback_scaling: float = 1.0,
        ridge: float = 1e-6,
        batch_first: bool = False,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if min(input_size, reservoir_size, output_size) < 1:
            raise RemedyError(
                f"Expected positive sizes but got {input_size=}, {reservoir_size=}, {output_size=}."
            )
        if not 0.0 < leak <= 1.0:
            raise RemedyError(f"Expected 0 < leak <= 1 but got {leak!r}.")
        if not (0.0 < connectivity <= 1.0 and 0.0 < input_connectivity <= 1.0):
            raise RemedyError(
                f"Expected densities in (0, 1] but got {connectivity=}, {input_connectivity=}."
            )
        if spectral_radius < 0 or ridge < 0:
            raise RemedyError(
                f"Expected spectral_radius >= 0 and ridge >= 0 but got "
                f"{spectral_radius=}, {ridge=}."
            )
        g = torch.Generator().manual_seed(
            int(seed) if seed is not None else int(torch.randint(2**62, ()).item())
        )
        w = _sparse_normal(reservoir_size, reservoir_size, connectivity, g)
        radius = float(torch.linalg.eigvals(w).abs().max())
        if radius < 1e-12:
            raise RemedyError(
                f"Expected a reservoir with a non-zero spectral radius but the draw with "
                f"connectivity={connectivity} is (nearly) empty; raise connectivity or "
                f"reservoir_size."
            )
        w *= spectral_radius / radius
        w_in = _sparse_sign(reservoir_size, input_size, input_connectivity, input_scaling, g)
        bias = bias_scaling * (2 * torch.rand(reservoir_size, generator=g, dtype=torch.float64) - 1)
        w_fb = feedback_scaling * (
            2 * torch.rand(reservoir_size, output_size, generator=g, dtype=torch.float64) - 1
        )
        self.register_buffer("W", w.to(dtype))
        self.register_buffer("W_in", w_in.to(dtype))
        self.register_buffer("bias", bias.to(dtype))
        self.register_buffer("W_fb", w_fb.to(dtype) if feedback else torch.zeros(0, dtype=dtype))
        self.readout = nn.Linear(reservoir_size, output_size, dtype=dtype)
        self.input_size, self.reservoir_size, self.output_size = (
            input_size,
            reservoir_size,
            output_size,
        )
        self.spectral_radius, self.leak = spectral_radius, leak
        self.feedback, self.ridge, self.batch_first = feedback, ridge, batch_first
        self.last_state: torch.Tensor | None = None  # set by fit()

    # ------------------------------------------------------------------ layout helpers

    def _time_major(self, x: torch.Tensor, name: str, size: int) -> tuple[torch.Tensor, bool]:
        if x.dim() not in (2, 3) or x.shape[-1] != size:
            raise RemedyError(
                f"Expected {name} of shape [T, B, {size}] ([B, T, {size}] with batch_first, or "
                f"[T, {size}] unbatched) but got {tuple(x.shape)}."
            )
        if x.dim() == 2:
            return x.unsqueeze(1), True
        return (x.transpose(0, 1) if self.batch_first else x), False

    def _user_layout(self, y: torch.Tensor, unbatched: bool) -> torch.Tensor:
        if unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y

    # ------------------------------------------------------------------ the reservoir

    @torch.no_grad()
    def _run(
        self,
        u: torch.Tensor,
        state: torch.Tensor | None,
        teacher: torch.Tensor | None,
        y_prev: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """States [T, B, N] from time-major u [T, B, F]; with feedback, the outputs too
        (own outputs if no teacher, else None)."""
        steps, batch = u.shape[0], u.shape[1]
        dtype, n = self.W.dtype, self.reservoir_size
        drive = torch.addmm(self.bias, u.reshape(-1, self.input_size).to(dtype), self.W_in.T)
        drive = drive.view(steps, batch, n)  # W_in u_t + b for every t in one matmul
        if self.feedback and teacher is not None:
            # teacher forcing: y_{t−1} is the target of the previous step
            shifted = torch.cat([_zeros_or(y_prev, batch, self.output_size, u), teacher[:-1]])
            drive = drive + shifted.to(dtype) @ self.W_fb.T
        h = u.new_zeros(batch, n, dtype=dtype) if state is None else state.to(dtype)
        states = u.new_empty(steps, batch, n, dtype=dtype)
        w_t, leak = self.W.T, self.leak
        # the per-step loop is launch-bound for small N: rows are unbound once, not
        # indexed per step, and each step is three kernels (addmm, tanh_, lerp into place)
        if not (self.feedback and teacher is None):
            for d, out in zip(drive.unbind(0), states.unbind(0), strict=True):
                h = torch.lerp(h, torch.addmm(d, h, w_t).tanh_(), leak, out=out)
            return states, None
        # the readout's own outputs are fed back
        outputs = u.new_empty(steps, batch, self.output_size, dtype=dtype)
        y = _zeros_or(y_prev, batch, self.output_size, u)[0].to(dtype)
        w_fb_t = self.W_fb.T
        for d, out, y_out in zip(drive.unbind(0), states.unbind(0), outputs.unbind(0), strict=True):
            h = torch.lerp(h, torch.addmm(d + y @ w_fb_t, h, w_t).tanh_(), leak, out=out)
            y = self.readout(h)
            y_out.copy_(y)
        return states, outputs

    def _run_user_layout(
        self, u: torch.Tensor, state: torch.Tensor | None, teacher: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """:meth:`_run` on input and teacher in the user's layout: the time-major states
        and own outputs, and whether the input was unbatched."""
        x, unbatched = self._time_major(u, "input", self.input_size)
        t = None if teacher is None else self._time_major(teacher, "teacher", self.output_size)[0]
        states, outputs = self._run(x, state, t, None)
        return states, outputs, unbatched

    def states(
        self,
        u: torch.Tensor,
        state: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reservoir states x_t, [T, B, N] (user layout), from the initial ``state`` [B, N]
        (zeros if None). With feedback, ``teacher`` (the targets y_t, same layout as the
        outputs) is fed back, shifted by one step; without it the readout's own outputs
        are. No gradient flows through the reservoir (it is fixed)."""
        states, _, unbatched = self._run_user_layout(u, state, teacher)
        return self._user_layout(states, unbatched)

    def forward(
        self,
        u: torch.Tensor,
        state: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Outputs y_t, [T, B, output_size] (user layout); differentiable in the readout."""
        states, outputs, unbatched = self._run_user_layout(u, state, teacher)
        y = self.readout(states) if outputs is None else outputs
        return self._user_layout(y, unbatched)

    # ------------------------------------------------------------------ closed-form readout

    @torch.no_grad()
    def fit(
        self,
        u: torch.Tensor,
        y: torch.Tensor,
        *,
        warmup: int = 0,
        ridge: float | None = None,
        chunk: int = 4096,
    ) -> EchoStateNetwork:
        """Fit the readout by ridge regression on the states of ``u`` against targets ``y``.

        Args:
            u: inputs, [T, B, input_size] (user layout) or unbatched [T, input_size].
            y: targets y_t for every step, [T, B, output_size] in the same layout.
            warmup: the first ``warmup`` steps of every sequence are run but not fitted
                (the reservoir forgets its zero initial state).
            ridge: penalty on ‖W_out‖² (default ``self.ridge``); the bias is free.
            chunk: time steps whose states are held at once; sums are float64.

        Returns:
            ``self``, with ``readout.weight`` and ``readout.bias`` set, and
            ``self.last_state`` [B, N] the reservoir state after the last step, to continue
            the series: ``esn(u_next, state=esn.last_state)``.
        """
        x, _ = self._time_major(u, "input", self.input_size)
        target, _ = self._time_major(y, "target", self.output_size)
        if target.shape[:2] != x.shape[:2]:
            raise RemedyError(
                f"Expected one target per input step but got inputs {tuple(u.shape)} and "
                f"targets {tuple(y.shape)}."
            )
        if not 0 <= warmup < x.shape[0]:
            raise RemedyError(
                f"Expected 0 <= warmup < T = {x.shape[0]} but got {warmup}; shorten it."
            )
        ridge = self.ridge if ridge is None else ridge
        n, o, f64 = self.reservoir_size, self.output_size, torch.float64
        xtx = x.new_zeros(n, n, dtype=f64)
        xty = x.new_zeros(n, o, dtype=f64)
        sx, sy = x.new_zeros(n, dtype=f64), x.new_zeros(o, dtype=f64)
        count = 0
        state: torch.Tensor | None = None
        for a in range(0, x.shape[0], chunk):
            b = min(a + chunk, x.shape[0])
            teach = target[a:b] if self.feedback else None
            y_prev = target[a - 1] if (self.feedback and a > 0) else None
            states, _ = self._run(x[a:b], state, teach, y_prev)
            state = states[-1].clone()
            keep = max(warmup - a, 0)
            if keep >= b - a:
                continue
            s = states[keep:].reshape(-1, n).to(f64)
            t = target[a + keep : b].reshape(-1, o).to(f64)
            xtx += s.T @ s
            xty += s.T @ t
            sx += s.sum(0)
            sy += t.sum(0)
            count += s.shape[0]
        # centred normal equations: the bias takes the means, the ridge only W_out
        mx, my = sx / count, sy / count
        xtx -= count * torch.outer(mx, mx)
        xty -= count * torch.outer(mx, my)
        xtx.diagonal().add_(ridge)
        w_out = torch.linalg.solve(xtx, xty)  # [N, O]
        self.readout.weight.copy_(w_out.T)
        self.readout.bias.copy_(my - mx @ w_out)
        self.last_state = state
        return self

    def extra_repr(self) -> str:
        return (
            f"{self.input_size} → {self.reservoir_size} → {self.output_size}, "
            f"spectral_radius={self.spectral_radius}, leak={self.leak}, "
            f"feedback={self.feedback}"
        )


def _zeros_or(y: torch.Tensor | None, batch: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """y_{t−1} as [1, B, O] (or [B, O] when used as one row): zeros at the very start."""
    if y is None:
        return like.new_zeros(1, batch, size)
    return y.unsqueeze(0)
