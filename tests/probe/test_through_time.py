"""Time profiles of recurrent layers: ||dL/dh_t||, ||dh_T/dh_k||, gates and theory, checked
against hand-unrolled references built from PyTorch's cells and brute-force Jacobians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import backprobe as bp
from backprobe.errors import BackprobeError, ProbeConfigError
from backprobe.probe.through_time import CellWatch, FusedWatch, TimeSettings, make_watch
from backprobe.theory.bounds import hochreiter_bound

KINDS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELL_OF = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}


class SeqClassifier(nn.Module):
    """Reads a sequence, predicts from the last output (and from h_n, so that both paths
    carry gradient)."""

    def __init__(self, kind: str, hidden: int = 6, n_in: int = 3, **kw) -> None:
        super().__init__()
        self.rnn = KINDS[kind](n_in, hidden, batch_first=True, **kw)
        width = hidden * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out[:, -1]) + 0.1 * h_n[-1].sum(-1, keepdim=True)


def _train(model, x, y, steps=2, lr=0.05, **probe_kw):
    """Train with the probe; ``lr=0`` keeps the weights that references must use."""
    probe = bp.Probe(model, db=None, **probe_kw)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with probe:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    return probe


def _reference_profile(model: SeqClassifier, kind: str, x, y, batch: int) -> np.ndarray:
    """||dL/dh_t|| over the first ``batch`` sequences, from a loop over a cell that
    shares the one-layer module's weights."""
    rnn = model.rnn
    cell = CELL_OF[kind](rnn.input_size, rnn.hidden_size, **_cell_kw(rnn))
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, name + "_l0"))
    h = torch.zeros(x.shape[0], rnn.hidden_size)
    c = torch.zeros_like(h)
    hs = []
    for t in range(x.shape[1]):
        if kind == "lstm":
            h, c = cell(x[:, t], (h, c))
        else:
            h = cell(x[:, t], h)
        h.retain_grad()
        hs.append(h)
    logits = model.head(h) + 0.1 * h.sum(-1, keepdim=True)
    nn.functional.cross_entropy(logits, y).backward()
    return np.array([h.grad[:batch].double().norm().item() for h in hs])


def _cell_kw(rnn: nn.RNNBase) -> dict:
    return {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}


def _data(n=10, T=12, n_in=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T, n_in, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_signal_equals_a_hand_unrolled_cell_loop(kind):
    torch.manual_seed(1)
    model = SeqClassifier(kind)
    x, y = _data()
    probe = _train(model, x, y, steps=1, lr=0.0, time_batch=4)
    reference = _reference_profile(model, kind, x, y, batch=4)
    measured = probe.time_profile("rnn")
    assert measured.shape == (1, x.shape[1])
    assert_allclose(measured[0], reference, rtol=1e-5)
    # the gradient reaches the first step only through the recurrence: far smaller
    assert measured[0, 0] < measured[0, -1]


def _brute_decay(model: SeqClassifier, x: torch.Tensor) -> np.ndarray:
    """||dh_T/dh_k||₂ of the first sequence by torch.autograd.functional.jacobian."""
    rnn = model.rnn
    cell = CELL_OF["rnn"](rnn.input_size, rnn.hidden_size, **_cell_kw(rnn)).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, name + "_l0"))
    xs = x[0].double()
    T = xs.shape[0]
    states = [torch.zeros(rnn.hidden_size, dtype=torch.float64)]
    for t in range(T):
        states.append(cell(xs[t], states[-1]).detach())

    def run_from(k: int):
        def f(h):
            for t in range(k + 1, T):
                h = cell(xs[t], h)
            return h

        return f

    norms = []
    for lag in range(T):
        k = T - 1 - lag
        J = torch.autograd.functional.jacobian(run_from(k), states[k + 1])
        norms.append(torch.linalg.matrix_norm(J, ord=2).item())
    return np.array(norms)


def test_jacobian_decay_equals_brute_force_and_stays_under_pascanus_bound():
    torch.manual_seed(2)
    model = SeqClassifier("rnn", hidden=5)
    x, y = _data(T=15)
    probe = _train(model, x, y, steps=1, lr=0.0)
    decay = probe.jacobian_decay("rnn")[0]
    assert_allclose(decay, _brute_decay(model, x), rtol=1e-4, atol=1e-12)
    lam, gamma = probe.recurrent_theory("rnn")[0]
    W = model.rnn.weight_hh_l0.detach()
    assert lam == pytest.approx(torch.linalg.matrix_norm(W.double(), 2).item(), rel=1e-5)
    assert gamma == 1.0
    bound = hochreiter_bound(W, gamma, np.arange(decay.size))
    assert np.all(decay <= bound * (1 + 1e-5))


@pytest.mark.parametrize("seed", range(6))
def test_measured_decay_never_exceeds_the_bound_when_lambda1_is_small(seed):
    """Property: λ1 < 1/γ ⇒ ||dh_T/dh_(T−q)|| ≤ (γλ1)^q, lags up to 100, any sizes."""
    g = torch.Generator().manual_seed(seed)
    hidden = int(torch.randint(2, 20, (1,), generator=g))
    rnn = nn.RNN(3, hidden, batch_first=True)
    with torch.no_grad():
        W = torch.randn(hidden, hidden, generator=g)
        target = 0.3 + 0.65 * torch.rand(1, generator=g).item()  # λ1 in [0.3, 0.95)
        rnn.weight_hh_l0.copy_(W * target / torch.linalg.matrix_norm(W, 2))
    model = SeqClassifier("rnn", hidden=hidden)
    model.rnn = rnn
    x, y = _data(n=4, T=101, seed=seed)
    probe = _train(model, x, y, steps=1, lr=0.0, time_batch=2)
    decay = probe.jacobian_decay("rnn")[0]
    lam, gamma = probe.recurrent_theory("rnn")[0]
    bound = np.power(gamma * lam, np.arange(decay.size))
    assert lam < 1 / gamma
    assert np.all(decay <= bound * (1 + 1e-4) + 1e-30)
    assert np.isfinite(probe.memory_horizon("rnn")[0])


def test_large_recurrent_weights_make_the_gradient_grow_through_time():
    torch.manual_seed(3)
    model = SeqClassifier("rnn", hidden=8, nonlinearity="relu")
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(3.0 * torch.eye(8))
        model.rnn.bias_hh_l0.fill_(1.0)
    x, y = _data(T=10)
    probe = _train(model, x.abs(), y, steps=1)
    decay = probe.jacobian_decay("rnn")[0]
    assert decay[5] > 100 * decay[0]
    assert probe.memory_horizon("rnn")[0] == np.inf
    profile = probe.time_profile("rnn")[0]
    assert profile[0] > 100 * profile[-1]  # grows toward the first step


def test_stacked_bidirectional_names_profiles_and_clear_errors():
    torch.manual_seed(4)
    model = SeqClassifier("gru", num_layers=2, bidirectional=True)
    x, y = _data()
    probe = _train(model, x, y, steps=3, time_every=2)
    names = ["rnn[l0]", "rnn[l0_reverse]", "rnn[l1]", "rnn[l1_reverse]"]
    assert probe.recurrent_layers == names
    for name in names:
        profile = probe.time_profile(name)
        assert profile.shape == (3, x.shape[1])
        assert np.isnan(profile[1]).all()  # step 1 is not a time-profile step
        assert np.isfinite(profile[[0, 2]]).all()
    # the forward direction's last output and the reverse direction's first step feed the
    # head: the reverse direction's gradient concentrates at t = T−1, processed first
    reverse = probe.time_profile("rnn[l1_reverse]")[0]
    assert reverse[-1] > 0 and reverse[0] < reverse[-1]
    with pytest.raises(BackprobeError, match=r"rnn\[l0\], rnn\[l0_reverse\]"):
        probe.time_profile("rnn")
    with pytest.raises(BackprobeError, match="No time profile for 'head'"):
        probe.time_profile("head")


def test_gate_statistics_of_an_lstm_are_its_forget_gate_on_the_sub_batch():
    torch.manual_seed(5)
    model = SeqClassifier("lstm")
    with torch.no_grad():
        model.rnn.bias_hh_l0[6:12].fill_(4.0)  # forget gate rows: open
    x, y = _data()
    probe = _train(model, x, y, steps=1, lr=0.0, time_batch=3)
    rnn = model.rnn
    with torch.no_grad():
        h = torch.zeros(3, 6)
        c = torch.zeros(3, 6)
        forgets = []
        for t in range(x.shape[1]):
            gates = x[:3, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T
            gates = gates + rnn.bias_hh_l0
            i, f, g, o = gates.chunk(4, dim=-1)
            forgets.append(torch.sigmoid(f))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        forget = torch.stack(forgets)
    column = probe.layers.index("rnn")
    assert probe.history("gate_mean")[0, column] == pytest.approx(forget.mean().item(), rel=1e-5)
    assert probe.history("gate_open")[0, column] == pytest.approx(
        forget.gt(0.9).float().mean().item(), rel=1e-5
    )
    assert np.isnan(probe.history("gate_mean")[0, probe.layers.index("head")])
    assert np.isnan(probe.recurrent_theory("rnn")).all()  # gated: no single λ1 bound


def test_cells_in_a_user_loop_give_the_per_call_gradient():
    torch.manual_seed(6)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            h = torch.zeros(x.shape[0], 5)
            self.hs = []
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
                h.retain_grad()
                self.hs.append(h)
            return self.head(h)

    model = Loop()
    x, y = _data(T=7)
    probe = _train(model, x, y, steps=1, time_batch=4)
    expected = [h.grad[:4].double().norm().item() for h in model.hs]
    assert probe.recurrent_layers == ["cell"]
    assert_allclose(probe.time_profile("cell")[0], expected, rtol=1e-6)


def test_packed_sequences_are_replayed_on_the_sub_batch():
    torch.manual_seed(7)
    rnn = nn.LSTM(3, 4, batch_first=True)
    head = nn.Linear(4, 2)
    x, y = _data(n=6, T=9)
    lengths = torch.tensor([9, 4, 7, 2, 9, 5])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    probe = bp.Probe(model, db=None, time_batch=3)
    with probe:
        _, (h_n, _) = rnn(packed)
        loss = nn.functional.cross_entropy(head(h_n[-1]), y)
        loss.backward()
        probe.step(loss)
    # reference: each of the first 3 sequences alone, unpadded, through a cell loop
    cell = nn.LSTMCell(3, 4)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, name + "_l0"))
    h = torch.zeros(6, 4)
    c = torch.zeros(6, 4)
    hs = []
    for t in range(9):
        live = (t < lengths).unsqueeze(1)
        h_new, c_new = cell(x[:, t], (h, c))
        h, c = torch.where(live, h_new, h), torch.where(live, c_new, c)
        h.retain_grad()
        hs.append(h)
    nn.functional.cross_entropy(head(h), y).backward()
    expected = [s.grad[:3].double().norm().item() for s in hs]
    assert_allclose(probe.time_profile("rnn")[0], expected, rtol=1e-5)


def test_time_profiles_do_not_change_training():
    x, y = _data()
    results = []
    for probed in (False, True):
        torch.manual_seed(8)
        model = SeqClassifier("lstm", num_layers=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        probe = bp.Probe(model, db=None) if probed else None
        losses = []
        if probe:
            probe.attach()
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if probe:
                probe.step(loss)
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


def test_time_profiles_are_stored_and_read_back(tmp_path):
    torch.manual_seed(9)
    model = SeqClassifier("rnn", num_layers=2)
    x, y = _data()
    db = tmp_path / "runs.db"
    probe = bp.Probe(model, db=db, name="rec")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with probe:
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
        live = {n: probe.time_profile(n) for n in probe.recurrent_layers}
    run = bp.open_run(db, "rec")
    assert run.recurrent_layers == ["rnn[l0]", "rnn[l1]"]
    for name, values in live.items():
        assert_allclose(run.time_profile(name), values, rtol=1e-6)
        assert_allclose(run.memory_horizon(name), probe.memory_horizon(name))
        assert run.recurrent_theory(name).shape == (2, 2)


def test_time_batch_is_checked():
    with pytest.raises(ProbeConfigError, match="time_batch to be a positive integer"):
        bp.Probe(SeqClassifier("rnn"), db=None, time_batch=0)


def test_wide_layers_get_a_random_projection_estimate_below_the_exact_norm():
    """Above 64 units the decay is ||Qᵀ·J||₂ for 16 random orthonormal rows Q: a lower
    bound on the spectral norm (measured 0.40–0.55 of it over seeds)."""
    torch.manual_seed(10)
    model = SeqClassifier("rnn", hidden=80)
    x, y = _data(T=8)
    probe = _train(model, x, y, steps=1, lr=0.0)
    estimate = probe.jacobian_decay("rnn")[0]
    exact = _brute_decay(model, x)
    assert estimate[0] == pytest.approx(1.0)
    assert np.all(estimate <= exact * (1 + 1e-5))
    assert np.all(estimate >= 0.3 * exact)


def test_unbatched_input_and_packed_first_sequence_lengths():
    torch.manual_seed(11)
    rnn = nn.GRU(3, 4)
    head = nn.Linear(4, 2)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    probe = bp.Probe(model, db=None)
    x = torch.randn(9, 3)  # unbatched [T, H_in]
    with probe:
        out, _ = rnn(x)
        loss = head(out[-1]).pow(2).sum()
        loss.backward()
        probe.step(loss)
        lengths = torch.tensor([5, 9])
        packed = pack_padded_sequence(torch.randn(9, 2, 3), lengths, enforce_sorted=False)
        _, h_n = rnn(packed)
        loss = head(h_n[-1]).pow(2).sum()
        loss.backward()
        probe.step(loss)
    decay = probe.jacobian_decay("rnn")
    assert np.isfinite(decay[0]).all() and decay.shape[1] == 9
    assert np.isfinite(decay[1, :5]).all() and np.isnan(decay[1, 5:]).all()  # 5 real steps
    assert np.isfinite(probe.time_profile("rnn")).all()


def test_training_dropout_between_layers_skips_the_profile_with_one_warning():
    torch.manual_seed(12)
    model = SeqClassifier("lstm", num_layers=2, dropout=0.3)
    x, y = _data()
    probe = bp.Probe(model, db=None).attach()
    with pytest.warns(UserWarning, match="dropout=0.3 between layers cannot be replayed"):
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            probe.step(loss)
            model.zero_grad()
    assert probe.steps.tolist() == [0, 1, 2]  # the other statistics are recorded
    assert probe.recurrent_layers == []
    model.eval()  # no dropout: the replay is the forward the loss came from
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    probe.step(loss)
    probe.close()
    assert np.isnan(probe.time_profile("rnn[l0]")[:3]).all()
    assert np.isfinite(probe.time_profile("rnn[l0]")[3]).all()


def test_a_diverging_model_records_non_finite_profiles_without_failing_the_step():
    torch.manual_seed(13)
    model = SeqClassifier("rnn", nonlinearity="relu")
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1e30 * torch.eye(6))
    x, y = _data(T=12)
    probe = _train(model, x.abs() + 1, y, steps=1, lr=0.0)
    decay = probe.jacobian_decay("rnn")[0]
    assert not np.isfinite(decay).all()  # the SVD alone would have refused these
    assert probe.steps.tolist() == [0]


class CellLoop(nn.Module):
    """A user's loop over a cell; ``edit_state`` breaks the recurrence between calls."""

    def __init__(self, cell: nn.Module, edit_state: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(cell.hidden_size, 2)
        self.edit_state = edit_state

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            if self.edit_state:
                state = state * 1.0
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h)


def _output_gate(cell: nn.LSTMCell, x: torch.Tensor, state) -> torch.Tensor:
    h = torch.zeros(1, cell.hidden_size, dtype=x.dtype) if state is None else state[0]
    gates = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    return torch.sigmoid(gates.chunk(4, dim=-1)[3])


def _cell_brute_decay(cell: nn.Module, x: torch.Tensor) -> np.ndarray:
    """||ds_T/ds_k||₂ of the first sequence (s = h, or for an LSTMCell its c, with h_k
    following c_k through the output gate), by torch.autograd.functional.jacobian over
    the cell's own calls."""
    xs = x[0:1].double()
    cell = cell.double()
    lstm = isinstance(cell, nn.LSTMCell)
    states = [None]
    for t in range(xs.shape[1]):
        states.append(
            tuple(s.detach() for s in cell(xs[:, t], states[-1]))
            if lstm
            else cell(xs[:, t], states[-1]).detach()
        )
    T = xs.shape[1]
    norms = []
    for lag in range(T):
        k = T - 1 - lag
        if lstm:
            o_k = _output_gate(cell, xs[:, k], states[k])

            def f(c, k=k, o_k=o_k):
                s = (o_k * torch.tanh(c), c)  # h_k follows c_k through the output gate
                for t in range(k + 1, T):
                    s = cell(xs[:, t], s)
                return s[1]

            J = torch.autograd.functional.jacobian(f, states[k + 1][1])[0, :, 0, :]
        else:

            def f(h, k=k):
                for t in range(k + 1, T):
                    h = cell(xs[:, t], h)
                return h

            J = torch.autograd.functional.jacobian(f, states[k + 1])[0, :, 0, :]
        norms.append(torch.linalg.matrix_norm(J, ord=2).item())
    cell.float()
    return np.array(norms)


@pytest.mark.parametrize("cell", [nn.RNNCell(3, 5), nn.GRUCell(3, 5)])
def test_cell_loops_get_the_decay_of_their_replayed_calls(cell):
    torch.manual_seed(14)
    model = CellLoop(cell)
    x, y = _data(T=9)
    probe = _train(model, x, y, steps=1, lr=0.0)
    assert_allclose(probe.jacobian_decay("cell")[0], _cell_brute_decay(cell, x), rtol=1e-4)


def test_an_lstm_cell_decay_is_that_of_its_cell_state():
    torch.manual_seed(15)
    cell = nn.LSTMCell(3, 5)
    model = CellLoop(cell)
    x, y = _data(T=6)
    probe = _train(model, x, y, steps=1, lr=0.0)
    assert_allclose(probe.jacobian_decay("cell")[0], _cell_brute_decay(cell, x), rtol=1e-4)


def test_a_loop_that_edits_the_state_between_calls_gets_no_decay():
    torch.manual_seed(16)
    model = CellLoop(nn.RNNCell(3, 5), edit_state=True)
    x, y = _data(T=5)
    probe = _train(model, x, y, steps=1, lr=0.0)
    assert np.isfinite(probe.time_profile("cell")[0]).all()
    assert probe.jacobian_decay("cell").size == 0 or np.isnan(probe.jacobian_decay("cell")).all()


def test_a_fused_lstm_decay_is_its_cell_states_as_for_the_cell():
    torch.manual_seed(17)
    model = SeqClassifier("lstm", hidden=5)
    x, y = _data(T=7)
    probe = _train(model, x, y, steps=1, lr=0.0)
    cell = nn.LSTMCell(3, 5)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(model.rnn, name + "_l0"))
    assert_allclose(probe.jacobian_decay("rnn")[0], _cell_brute_decay(cell, x), rtol=1e-4)


STACKS = {
    "tanh": lambda: nn.RNN(3, 5, num_layers=2, bidirectional=True),
    "relu": lambda: nn.RNN(3, 5, num_layers=3, nonlinearity="relu"),
    "lstm": lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True),
    "lstm-proj": lambda: nn.LSTM(3, 5, num_layers=3, bidirectional=True, proj_size=2),
    "gru": lambda: nn.GRU(3, 5, num_layers=2, bidirectional=True),
}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", list(STACKS))
def test_signals_of_stacked_layers_equal_autograd_through_the_unrolled_twin(kind, packed):
    """Every sub-layer's ||dL/dh_t|| (the written-out backward of the probe) against
    autograd on the unrolled twin, with a loss on the output at every step, on h_n and
    on c_n: stacks, both directions, projections, packed sequences of several lengths
    (to the float32 the profiles are stored in)."""
    from backprobe.probe.recurrent import unrolled_forward

    torch.manual_seed(11)
    module = STACKS[kind]().double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, 3, generator=g, dtype=torch.float64)  # [T, B, H_in]
    lengths = torch.tensor([9, 4, 7, 2, 9, 5])
    weights = {}

    def loss_of(out, state):
        if packed:
            out = pad_packed_sequence(out)[0]
        parts = [out, *(state if isinstance(state, tuple) else (state,))]
        for i, part in enumerate(parts):
            weights.setdefault(i, torch.randn(part.shape, generator=g, dtype=torch.float64))
        return sum((w * part).sum() for w, part in zip(weights.values(), parts, strict=True))

    def inputs():
        return pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x

    probe = bp.Probe(nn.ModuleDict({"rnn": module}), db=None, time_batch=4)
    with probe:
        loss = loss_of(*module(inputs()))
        loss.backward()
        probe.step(loss)
    twin = unrolled_forward(module, inputs())
    twin.retain_state_grads()
    state = twin.h_n if twin.c_n is None else (twin.h_n, twin.c_n)
    loss_of(twin.output, state).backward()
    chains = [chain for layer in twin.states for chain in layer]
    assert len(probe.recurrent_layers) == len(chains) > 1
    for name, chain in zip(probe.recurrent_layers, chains, strict=True):
        expected = [h.grad[:4].norm().item() for h in chain]
        assert_allclose(probe.time_profile(name)[0], expected, rtol=1e-6, err_msg=name)


def test_a_watch_is_made_only_for_a_recurrent_module():
    settings = TimeSettings()
    assert isinstance(make_watch("rnn", nn.GRU(3, 4), settings), FusedWatch)
    assert isinstance(make_watch("cell", nn.LSTMCell(3, 4), settings), CellWatch)
    with pytest.raises(ProbeConfigError, match=r"recurrent module .* 'fc' but got Linear"):
        make_watch("fc", nn.Linear(3, 4), settings)
