"""Layers in the order of the graph a recorded step ran, with their roles: modules that
never ran, parameters used outside their owner's call, tied parameters, residual blocks,
and steps where no gradient arrived."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from backprobe.probe.blocks import is_block_call

pytest.importorskip("transformers")

from tests.zoo.architectures import ARCHITECTURES, loss_of


def _one_step(make_probe, model: nn.Module, run) -> object:
    probe = make_probe(model)
    with probe:
        run()
        probe.step()
    return probe


def _zoo_probe(make_probe, name: str):
    arch = ARCHITECTURES[name]
    model = arch.build()
    batch = arch.batch(0)
    probe = _one_step(make_probe, model, lambda: loss_of(model, batch, arch.loss_fn).backward())
    return probe, {layer.name: layer for layer in probe.layer_info}


class ReversedRegistration(nn.Module):
    """Registered head first: registration order is not the graph's order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.mid = nn.Linear(8, 8)
        self.stem = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(torch.tanh(self.stem(x)))))


def test_layers_follow_the_backward_pass_not_registration(make_probe):
    model = ReversedRegistration()
    probe = _one_step(make_probe, model, lambda: model(torch.randn(3, 4)).sum().backward())
    assert probe.layers == ["stem", "mid", "head"]
    assert [layer.role for layer in probe.layer_info] == ["layer"] * 3


def test_out_proj_is_measured_by_its_parameters_where_they_are_used(make_probe):
    """nn.MultiheadAttention uses out_proj's weights functionally: its forward never
    runs, so it is a "params" layer placed by its gradient, before the classifier."""
    probe, layers = _zoo_probe(make_probe, "mha_encoder")
    out_proj = layers["attn.0.out_proj"]
    assert (out_proj.role, out_proj.ran) == ("params", True)
    assert probe.layers[-1] == "classifier"
    assert out_proj.index < layers["attn.0"].index < layers["ffn.0.0"].index
    column = probe.history("signal_norm")[0, out_proj.index]
    assert np.isnan(column) and probe.history("grad_norm")[0, out_proj.index] > 0


def test_a_root_owning_parameters_is_placed_by_its_gradient_not_its_output(make_probe):
    """The ViT root owns cls_token and pos_embed: its output is the logits, so it is not
    a layer; its parameters sit next to the patch embedding, where they are used."""
    probe, layers = _zoo_probe(make_probe, "vit")
    root = layers["ViT"]
    assert (root.role, root.ran) == ("params", True)
    assert root.index < layers["blocks.0"].index
    assert probe.layers[-1] == "head"
    assert np.isnan(probe.history("act_std")[0, root.index])


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.spare = nn.Linear(3, 3)
        self.act = nn.ReLU()
        self.idle = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.used(x))


def test_modules_that_never_ran_are_marked(make_probe):
    model = Unused()
    probe = _one_step(make_probe, model, lambda: model(torch.randn(2, 3)).sum().backward())
    layers = {layer.name: layer for layer in probe.layer_info}
    assert (layers["spare"].role, layers["spare"].ran) == ("params", False)
    assert (layers["idle"].role, layers["idle"].ran) == ("layer", False)
    assert probe.layers[:2] == ["used", "act"]  # those that ran first, in graph order


@pytest.mark.parametrize("name", ["gpt2", "nanogpt", "t5"])
def test_tied_embeddings_name_each_other(make_probe, name):
    _, layers = _zoo_probe(make_probe, name)
    head = layers["lm_head"]
    assert head.shared_with and layers[head.shared_with].shared_with
    assert layers[head.shared_with].shared_with != ""


@pytest.mark.parametrize(
    ("name", "container", "count"),
    [
        ("gpt2", "transformer.h", 4),
        ("bert", "bert.encoder.layer", 4),
        ("t5", "encoder.block", 3),
        ("llama", "model.layers", 4),
        ("nanogpt", "transformer.h", 4),
        ("word_transformer", "encoder.layers", 2),
        ("resnet", "layer1", 2),
    ],
)
def test_residual_blocks_of_real_architectures_are_found(make_probe, name, container, count):
    probe, layers = _zoo_probe(make_probe, name)
    blocks = [n for n, layer in layers.items() if layer.role == "block"]
    assert len([b for b in blocks if b.startswith(container + ".")]) == count
    for block in blocks:
        inside = [layer for layer in probe.layer_info if layer.block == block]
        assert inside and all(layer.index < layers[block].index for layer in inside)
        assert np.isnan(probe.history("grad_norm")[0, layers[block].index])
        assert probe.history("signal_norm")[0, layers[block].index] > 0
    gain = probe.history("gain")[0]
    assert all(np.isnan(gain[layer.index]) for layer in probe.layer_info if layer.block)
    assert all(np.isfinite(gain[layers[b].index]) for b in blocks[1:])


def test_a_block_gain_is_the_streams_between_consecutive_blocks(make_probe):
    probe, layers = _zoo_probe(make_probe, "nanogpt")
    signal, gain = probe.history("signal_norm")[0], probe.history("gain")[0]
    first, second = layers["transformer.h.0"].index, layers["transformer.h.1"].index
    np.testing.assert_allclose(gain[second], signal[first] / signal[second], rtol=1e-12)


def test_nested_residual_sublayers_belong_to_the_outer_block(make_probe):
    """T5's sublayers are residual too: the T5Block is the block, they are inside it."""
    _, layers = _zoo_probe(make_probe, "t5")
    assert "encoder.block.0.layer.0" not in layers
    assert layers["encoder.block.0.layer.0.layer_norm"].block == "encoder.block.0"


def _block_call(block: nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.randn(*shape, requires_grad=True) * 1.0
    return is_block_call((x,), {}, block(x))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_transformer_encoder_layers_are_blocks(norm_first):
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, norm_first=norm_first)
    assert _block_call(layer, (2, 5, 16))


@pytest.mark.parametrize(
    "module",
    [
        nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
        nn.Sequential(nn.ReLU(), nn.Dropout(0.1), nn.LayerNorm(16)),
        nn.Sequential(nn.Linear(16, 8)),
    ],
    ids=["linear-relu", "no-weight-no-skip", "other-shape"],
)
def test_chains_without_a_skip_are_not_blocks(module):
    assert not _block_call(module, (4, 16))


def test_a_plain_mlp_has_no_blocks_and_keeps_its_chain_gain(make_probe):
    model = nn.Sequential(*(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)))
    probe = _one_step(make_probe, model, lambda: model(torch.randn(4, 8)).sum().backward())
    assert all(layer.role == "layer" and not layer.block for layer in probe.layer_info)
    signal, gain = probe.history("signal_norm")[0], probe.history("gain")[0]
    np.testing.assert_allclose(gain[1:], signal[:-1] / signal[1:])


def test_step_before_backward_is_named_and_counted(make_probe):
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    probe = make_probe(model)
    with probe:
        model(torch.randn(2, 3)).sum()
        with pytest.warns(UserWarning, match="call loss.backward\\(\\) before probe.step"):
            probe.step()
        model(torch.randn(2, 3)).sum().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            probe.step()
    np.testing.assert_array_equal(probe.history("gradients"), [[0.0], [4.0]])


def test_discarded_attention_weights_leave_the_signal_measured(make_probe):
    """need_weights=True returns the attention weights; a loss that ignores them sends
    no gradient (None) to them, and the output's signal is still measured."""
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    probe = make_probe(attn)
    x = torch.randn(2, 4, 8)
    with probe:
        out, _ = attn(x, x, x, need_weights=True)
        out.pow(2).sum().backward()
        probe.step()
    col = probe.layers.index("MultiheadAttention")
    expected = (2 * out.detach()).norm().item()
    np.testing.assert_allclose(probe.history("signal_norm")[0, col], expected, rtol=1e-6)


def test_a_none_gradient_reaching_an_output_hook_is_ignored(make_probe):
    model = nn.Linear(2, 2)
    probe = make_probe(model).attach()
    probe._on_grad(0, probe._epoch, None)
    assert not probe._buffer.tensors
