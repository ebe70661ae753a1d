"""The unrolled twin of nn.RNN / nn.LSTM / nn.GRU: same outputs, final states and gradients
as the fused module, per-step states that carry the total dL/dh_t, packed input, and the
errors it raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from backprobe.errors import BackprobeError, RecurrentInputError
from backprobe.probe.recurrent import UnrolledResult, cell_step, layer_params, unrolled_forward

T, B, H_IN, H = 5, 3, 4, 6
MODES = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def make(mode: str, dtype=torch.float64, **kw) -> nn.RNNBase:
    """A small recurrent module of ``mode`` in ``dtype``."""
    if mode.startswith("rnn"):
        module = nn.RNN(H_IN, H, nonlinearity=mode[4:], **kw)
    else:
        module = {"lstm": nn.LSTM, "gru": nn.GRU}[mode](H_IN, H, **kw)
    return module.to(dtype)


def initial_state(module: nn.RNNBase, batch: int | None, dtype=torch.float64):
    """Random h_0 (and c_0 for an LSTM) of the module's shapes; no batch dim if ``batch``
    is None. They require grad, so the tests compare dL/dh_0 too."""
    n = module.num_layers * (2 if module.bidirectional else 1)
    lead = (n,) if batch is None else (n, batch)
    h0 = torch.randn(*lead, module.proj_size or H, dtype=dtype, requires_grad=True)
    if isinstance(module, nn.LSTM):
        return h0, torch.randn(*lead, H, dtype=dtype, requires_grad=True)
    return h0


def flat(hx) -> list[torch.Tensor]:
    """The tensors of an hx (None, a tensor, or a tuple)."""
    if hx is None:
        return []
    return list(hx) if isinstance(hx, tuple) else [hx]


def split_fused(module: nn.RNNBase, result) -> tuple[object, torch.Tensor, torch.Tensor | None]:
    """(output, h_n, c_n) from what a fused module returns."""
    out, state = result
    if isinstance(module, nn.LSTM):
        return out, state[0], state[1]
    return out, state, None


def loss_of(output, h_n: torch.Tensor, c_n: torch.Tensor | None, weights) -> torch.Tensor:
    """A loss that depends on every output and final state, with fixed random weights."""
    data = output.data if isinstance(output, PackedSequence) else output
    loss = (weights[0] * data).sum() + (weights[1] * h_n).sum()
    if c_n is not None:
        loss = loss + (weights[2] * c_n).sum()
    return loss


def compare(
    module: nn.RNNBase, x, hx, atol: float = 1e-10, rtol: float = 1e-5, grad_atol: float = 1e-12
) -> UnrolledResult:
    """Assert the unrolled pass equals the fused one in outputs and final states (within
    ``atol``) and in the gradients of one loss w.r.t. every parameter, the input and hx
    (within ``rtol``, plus ``grad_atol`` for entries near zero); return the result."""
    leaves = [*module.parameters(), *flat(hx)]
    data = x.data if isinstance(x, PackedSequence) else x
    if data.requires_grad:
        leaves.append(data)
    out, h_n, c_n = split_fused(module, module(x, hx))
    result = unrolled_forward(module, x, hx)
    got = result.output.data if isinstance(x, PackedSequence) else result.output
    want = out.data if isinstance(x, PackedSequence) else out
    assert type(result.output) is type(out)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    torch.testing.assert_close(result.h_n, h_n, atol=atol, rtol=0)
    if c_n is None:
        assert result.c_n is None and result.cells is None
    else:
        torch.testing.assert_close(result.c_n, c_n, atol=atol, rtol=0)

    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (want, h_n)]
    weights.append(None if c_n is None else torch.randn(c_n.shape, generator=g, dtype=c_n.dtype))
    fused_grads = torch.autograd.grad(loss_of(out, h_n, c_n, weights), leaves)
    twin_grads = torch.autograd.grad(
        loss_of(result.output, result.h_n, result.c_n, weights), leaves
    )
    for fused, twin in zip(fused_grads, twin_grads, strict=True):
        torch.testing.assert_close(twin, fused, rtol=rtol, atol=grad_atol)
    return result


@pytest.mark.parametrize("given_hx", [False, True], ids=["zero_hx", "given_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_matches_fused_module(mode, num_layers, bidirectional, batch_first, bias, given_hx):
    module = make(
        mode,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        bias=bias,
    )
    shape = (B, T, H_IN) if batch_first else (T, B, H_IN)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    hx = initial_state(module, B) if given_hx else None
    result = compare(module, x, hx)

    n_dirs = 2 if bidirectional else 1
    assert len(result.states) == num_layers
    assert all(len(layer) == n_dirs for layer in result.states)
    assert all(h.shape == (B, H) for layer in result.states for d in layer for h in d)
    assert all(len(d) == T for layer in result.states for d in layer)
    # the last layer's states are the output, in time order for both directions
    last = torch.cat([torch.stack(d) for d in result.states[-1]], dim=-1)
    output = result.output.transpose(0, 1) if batch_first else result.output
    torch.testing.assert_close(last, output, atol=0, rtol=0)


@pytest.mark.parametrize("given_hx", [False, True], ids=["zero_hx", "given_hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_with_projection(num_layers, bidirectional, given_hx):
    module = make("lstm", num_layers=num_layers, bidirectional=bidirectional, proj_size=2)
    x = torch.randn(T, B, H_IN, dtype=torch.float64, requires_grad=True)
    hx = initial_state(module, B) if given_hx else None
    result = compare(module, x, hx)
    assert all(h.shape == (B, 2) for layer in result.states for d in layer for h in d)
    assert all(c.shape == (B, H) for layer in result.cells for d in layer for c in d)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("mode", [*MODES, "lstm_proj"])
def test_float32_within_1e_6(mode):
    kw = {"proj_size": 3} if mode == "lstm_proj" else {}
    module = make(mode.removesuffix("_proj"), dtype=torch.float32, num_layers=2, **kw)
    x = torch.randn(T, B, H_IN, requires_grad=True)
    hx = initial_state(module, B, torch.float32)
    compare(module, x, hx, atol=1e-6, rtol=1e-5, grad_atol=1e-6)


@pytest.mark.parametrize("given_hx", [False, True], ids=["zero_hx", "given_hx"])
@pytest.mark.parametrize("mode", MODES)
def test_unbatched_input(mode, given_hx):
    module = make(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, H_IN, dtype=torch.float64, requires_grad=True)
    hx = initial_state(module, None) if given_hx else None
    result = compare(module, x, hx)
    assert result.output.shape == (T, 2 * H)
    assert result.h_n.shape == (4, H)
    # states keep a batch dimension of one
    assert all(h.shape == (1, H) for layer in result.states for d in layer for h in d)


def test_state_gradients_equal_hand_unrolled_rnn():
    """dL/dh_t of a 1-layer tanh RNN, written out by hand:

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), L = Σ_t c_t · h_t, so
    dL/dh_{T-1} = c_{T-1} and dL/dh_t = c_t + W_hhᵀ ((1 − h_{t+1}²) ⊙ dL/dh_{t+1}).
    """
    module = make("rnn_tanh")
    x = torch.randn(T, B, H_IN, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    c = torch.randn(T, B, H, dtype=torch.float64)

    w_ih, w_hh = module.weight_ih_l0.detach(), module.weight_hh_l0.detach()
    b = (module.bias_ih_l0 + module.bias_hh_l0).detach()
    hs, h = [], h0[0]
    for t in range(T):
        h = torch.tanh(x[t] @ w_ih.T + h @ w_hh.T + b)  # rows are samples: h Wᵀ = (W h)ᵀ
        hs.append(h)
    grads = [c[T - 1]]
    for t in range(T - 2, -1, -1):
        grads.insert(0, c[t] + ((1 - hs[t + 1] ** 2) * grads[0]) @ w_hh)
    expected = torch.stack([g.norm(dim=-1) for g in grads])  # [T, B]

    result = unrolled_forward(module, x, h0)
    torch.testing.assert_close(
        torch.stack(result.states[0][0]), torch.stack(hs), atol=1e-12, rtol=0
    )
    result.retain_state_grads()
    hooked: dict[int, torch.Tensor] = {}
    for t, state in enumerate(result.states[0][0]):
        state.register_hook(lambda g, t=t: hooked.__setitem__(t, g))
    (c * result.output).sum().backward()

    norms = result.state_grad_norms()
    assert norms.shape == (1, 1, T, B) and norms.dtype == torch.float64
    torch.testing.assert_close(norms[0, 0], expected, rtol=1e-10, atol=0)
    for t in range(T):
        torch.testing.assert_close(hooked[t], grads[t], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_state_gradients_include_the_path_through_later_steps(mode):
    """With a loss on the last output only, the fused output's gradient at t < T−1 is
    zero, but dL/dh_t is not: it flows back through the recurrence."""
    module = make(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, H_IN, dtype=torch.float64)
    result = unrolled_forward(module, x)
    result.retain_state_grads()
    result.output[-1].sum().backward()
    norms = result.state_grad_norms()  # [L, D, T, B]
    assert norms.shape == (2, 2, T, B)
    assert (norms[0] > 0).all()  # the first layer feeds the last step in both directions
    assert (norms[1, 0] > 0).all()  # forward: every step reaches the last one
    assert (norms[1, 1, :-1] == 0).all() and (norms[1, 1, -1] > 0).all()  # reverse: only t=T−1


def test_state_grad_norms_needs_retained_gradients():
    module = make("gru")
    result = unrolled_forward(module, torch.randn(T, B, H_IN, dtype=torch.float64))
    result.output.sum().backward()
    with pytest.raises(RecurrentInputError, match="retain_state_grads"):
        result.state_grad_norms()


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("given_hx", [False, True], ids=["zero_hx", "given_hx"])
@pytest.mark.parametrize("mode", [*MODES, "lstm_proj"])
def test_packed_sequence(mode, given_hx, enforce_sorted):
    kw = {"proj_size": 2} if mode == "lstm_proj" else {}
    module = make(mode.removesuffix("_proj"), num_layers=2, bidirectional=True, **kw)
    lengths = torch.tensor([T, T - 2, 3, 1])
    if not enforce_sorted:
        lengths = lengths[[2, 0, 3, 1]]
    x = torch.randn(T, len(lengths), H_IN, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    packed.data.requires_grad_(True)
    hx = initial_state(module, len(lengths)) if given_hx else None
    result = compare(module, packed, hx)
    torch.testing.assert_close(result.output.batch_sizes, packed.batch_sizes)
    if enforce_sorted:
        assert result.output.sorted_indices is None
    else:
        assert torch.equal(result.output.sorted_indices, packed.sorted_indices)


def test_dropout_refused_while_training_and_ignored_in_eval():
    module = make("lstm", num_layers=2, dropout=0.5)
    x = torch.randn(T, B, H_IN, dtype=torch.float64)
    with pytest.raises(RecurrentInputError, match=r"module\.eval\(\)") as info:
        unrolled_forward(module, x)
    assert isinstance(info.value, BackprobeError) and isinstance(info.value, ValueError)
    compare(module.eval(), x.requires_grad_(), None)


def test_dropout_with_one_layer_is_accepted_while_training():
    with pytest.warns(UserWarning, match="dropout"):
        module = make("gru", num_layers=1, dropout=0.5)
    assert module.training
    compare(module, torch.randn(T, B, H_IN, dtype=torch.float64, requires_grad=True), None)


@pytest.mark.parametrize("cell", [nn.RNNCell, nn.LSTMCell, nn.GRUCell])
def test_cells_are_refused_with_advice(cell):
    with pytest.raises(RecurrentInputError, match="no unrolled twin is needed"):
        unrolled_forward(cell(H_IN, H), torch.randn(B, H_IN))


def test_other_modules_are_refused():
    with pytest.raises(RecurrentInputError, match=r"nn\.RNN, nn\.LSTM or nn\.GRU"):
        unrolled_forward(nn.Linear(H_IN, H), torch.randn(T, B, H_IN))


def test_an_lstm_step_without_its_cell_state_is_refused():
    lstm = make("lstm")
    p = layer_params(lstm, 0, False)
    h = torch.zeros(B, H, dtype=torch.float64)
    gi = torch.zeros(B, 4 * H, dtype=torch.float64)
    (h1, c1), forget = cell_step("LSTM", gi, (h, torch.zeros_like(h)), p)
    assert c1 is not None and forget is not None and h1.shape == (B, H)
    with pytest.raises(RecurrentInputError, match=r"LSTM state \(h, c\) but got c=None"):
        cell_step("LSTM", gi, (h, None), p)


@pytest.mark.parametrize(
    ("mode", "x_shape", "hx_shape", "match"),
    [
        ("gru", (T, B, 2, H_IN), None, "3-D input"),
        ("gru", (T, B, H_IN + 1), None, "input_size=4"),
        ("rnn_tanh", (T, B, H_IN), (2, B, H), r"h_0 of shape \[1, 3, 6\]"),
        ("rnn_tanh", (T, H_IN), (1, B, H), r"h_0 of shape \[1, 6\]"),
        ("lstm", (T, B, H_IN), (1, B, H), r"tuple \(h_0, c_0\)"),
        ("gru", (T, B, H_IN), "tuple", "one tensor h_0"),
    ],
)
def test_bad_inputs_and_states(mode, x_shape, hx_shape, match):
    module = make(mode)
    x = torch.randn(x_shape, dtype=torch.float64)
    if hx_shape == "tuple":
        hx = (torch.zeros(1, B, H), torch.zeros(1, B, H))
    else:
        hx = None if hx_shape is None else torch.zeros(hx_shape, dtype=torch.float64)
    with pytest.raises(RecurrentInputError, match=match):
        unrolled_forward(module, x, hx)


def test_lstm_c0_shape_checked():
    module = make("lstm", proj_size=2)
    hx = (torch.zeros(1, B, 2, dtype=torch.float64), torch.zeros(1, B, 2, dtype=torch.float64))
    with pytest.raises(RecurrentInputError, match=r"c_0 of shape \[1, 3, 6\]"):
        unrolled_forward(module, torch.randn(T, B, H_IN, dtype=torch.float64), hx)


def test_non_tensor_input_refused():
    with pytest.raises(RecurrentInputError, match="PackedSequence"):
        unrolled_forward(make("gru"), [[0.0] * H_IN])
