"""RecurrentModel: shapes, the core the probe sees, the IRNN init, W_rec scaling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.lab.models import CELLS, RecurrentModel


@pytest.mark.parametrize("cell", CELLS)
def test_token_and_feature_input_shapes(cell: str) -> None:
    torch.manual_seed(0)
    # An echo state network: one sparse reservoir, large enough not to be all zeros.
    hidden, layers = (32, 1) if cell == "esn" else (8, 2)
    tokens = RecurrentModel(11, hidden, 3, cell=cell, embed=5)  # type: ignore[arg-type]
    assert tokens(torch.randint(0, 11, (4, 6))).shape == (4, 3)
    feats = RecurrentModel(2, hidden, 1, cell=cell, layers=layers, readout="all")  # type: ignore[arg-type]
    assert feats(torch.randn(4, 6, 2)).shape == (4, 6, 1)
    if cell != "esn":
        assert isinstance(feats.rnn, nn.RNNBase) and feats.rnn.num_layers == 2


def test_last_readout_is_the_top_state_at_the_end() -> None:
    torch.manual_seed(0)
    model = RecurrentModel(3, 6, 2, cell="gru", layers=2)
    x = torch.randn(5, 7, 3)
    h, _ = model.rnn(x)
    assert torch.allclose(model(x), model.out(h[:, -1]))


def test_irnn_is_identity_relu_with_zero_bias() -> None:
    model = RecurrentModel(2, 16, 1, cell="irnn", layers=2)
    assert model.rnn.nonlinearity == "relu"
    for name, p in model.rnn.named_parameters():
        if name.startswith("weight_hh"):
            assert torch.equal(p, torch.eye(16))
        elif name.startswith("bias"):
            assert torch.all(p == 0)
        else:  # Glorot-uniform with ReLU's gain: U(±√2·√(6 / (fan_in + fan_out)))
            bound = 2**0.5 * (6 / (p.shape[0] + p.shape[1])) ** 0.5
            assert 0 < float(p.detach().abs().max()) <= bound
    # With zero input a one-layer IRNN carries its state unchanged: h_t = relu(h_{t-1}).
    one = RecurrentModel(2, 16, 1, cell="irnn")
    h0 = torch.rand(1, 1, 16)
    with torch.no_grad():
        out, _ = one.rnn(torch.zeros(1, 9, 2), h0)
    assert torch.allclose(out[0, -1], h0[0, 0])


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_recurrent_norm_sets_largest_singular_value(cell: str) -> None:
    model = RecurrentModel(2, 12, 1, cell=cell, recurrent_norm=1.7)  # type: ignore[arg-type]
    for block in model.rnn.weight_hh_l0.split(12):
        sigma = float(torch.linalg.matrix_norm(block.detach(), ord=2))
        assert sigma == pytest.approx(1.7, rel=1e-5)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="cell"):
        RecurrentModel(2, 4, 1, cell="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="readout"):
        RecurrentModel(2, 4, 1, readout="first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        RecurrentModel(2, 0, 1)


@pytest.mark.parametrize(
    ("cell", "layers", "names"), [("lstm", 1, ["rnn"]), ("gru", 2, ["rnn[l0]", "rnn[l1]"])]
)
def test_the_probe_finds_the_recurrent_core(cell: str, layers: int, names: list[str]) -> None:
    from backprobe.lab.tasks import autocomplete_task
    from backprobe.probe import Probe

    torch.manual_seed(0)
    task = autocomplete_task(16, 6, seed=0)
    model = RecurrentModel(task.vocab_size, 8, 2, cell=cell, layers=layers, embed=4)  # type: ignore[arg-type]
    with Probe(model, db=None, time_every=1) as probe:
        loss = nn.functional.cross_entropy(model(task.x), task.y)
        loss.backward()
        probe.step(loss)
    assert probe.recurrent_layers == names
    profile = probe.time_profile(names[-1])
    assert profile.shape == (1, task.length) and (profile > 0).all()


def test_esn_cell_reads_out_the_reservoir() -> None:
    torch.manual_seed(0)
    model = RecurrentModel(2, 30, 1, cell="esn", readout="all")
    assert model.out is model.rnn.readout
    assert [n for n, p in model.named_parameters()] == ["rnn.readout.weight", "rnn.readout.bias"]
    x = torch.randn(4, 12, 2)
    assert torch.allclose(model(x), model.rnn(x))  # the ESN's own output, [B, T, 1]
    with pytest.raises(ValueError, match="layers=1"):
        RecurrentModel(2, 30, 1, cell="esn", layers=2)
