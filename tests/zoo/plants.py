"""Pathologies planted in the zoo's real architectures, each with what the diagnosis must
say about it: the kind, where, and the kinds that follow from the planted cause.

Each :class:`Case` is examined by ``bp.check`` at initialisation (``train is None``) or
by a short seeded training run with a probe (``train`` gives steps, learning rate and
optimiser). A healthy case (``expected is None``) must raise nothing at warning or above
and get a healthy verdict; a planted one must be found with its kind in its place, with
no other kind at warning or above than those in ``also``, and a verdict that names it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .architectures import ARCHITECTURES, AttentionEncoder, WordRNN, WordTransformer


@dataclass(frozen=True)
class Training:
    """A short training run: ``steps`` of ``optimizer`` ("sgd" or "adam") at ``lr``."""

    steps: int = 30
    lr: float = 0.01
    optimizer: str = "sgd"


@dataclass(frozen=True)
class Case:
    """One model of the zoo, healthy or with a planted pathology.

    ``layers``: glob patterns of layer names; each must match a layer named by the
    finding (``where["layers"]``, or ``where["time_layers"]`` for through-time kinds).
    """

    name: str
    architecture: str
    plant: Callable[[nn.Module], nn.Module] | None = None
    expected: str | None = None
    layers: tuple[str, ...] = ()
    also: tuple[str, ...] = ()
    train: Training | None = None
    what: str = ""

    def build(self, seed: int = 0) -> nn.Module:
        model = ARCHITECTURES[self.architecture].build(seed)
        if self.plant is not None:
            with torch.no_grad():
                model = self.plant(model)
        return model

    def in_place(self, named: list[str]) -> bool:
        """Whether every pattern of ``layers`` matches one of the ``named`` layers."""
        return all(any(fnmatch.fnmatchcase(n, p) for n in named) for p in self.layers)


def _scale(pattern: str, factor: float) -> Callable[[nn.Module], nn.Module]:
    """Multiply every parameter whose name matches ``pattern`` by ``factor``."""

    def plant(model: nn.Module) -> nn.Module:
        hit = [p for n, p in model.named_parameters() if fnmatch.fnmatchcase(n, pattern)]
        assert hit, f"no parameter matches {pattern!r}"
        for p in hit:
            p.mul_(factor)
        return model

    return plant


def _sigmoid_ffn(model: nn.Module) -> nn.Module:
    """Llama's SwiGLU with a sigmoid in place of SiLU and a gate projection ×300, so that
    most of the gate's inputs sit on the sigmoid's flat tails (86 % in the first layer)."""
    for layer in model.model.layers:  # type: ignore[union-attr]
        layer.mlp.act_fn = nn.Sigmoid()
        layer.mlp.gate_proj.weight.mul_(300.0)
    return model


def _deep_post_ln(model: nn.Module) -> nn.Module:
    """The word-language Transformer with 12 post-LN layers instead of 2."""
    torch.manual_seed(0)
    return WordTransformer(layers=12)


def _no_residual(model: nn.Module) -> nn.Module:
    """The nn.MultiheadAttention encoder, 48 blocks deep, its residual connections
    removed: x = LN(MHA(x)), x = LN(FFN(x)). (With them, 48 blocks train: the embedding
    gets 0.08 of the classifier's gradient; without, 3e-4.)"""
    torch.manual_seed(0)
    return AttentionEncoder(depth=48, residual=False)


def _relu_rnn(scale: float) -> Callable[[nn.Module], nn.Module]:
    """The word-language model's RNN_RELU variant with W_hh an orthogonal matrix ×scale."""

    def plant(model: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        rnn = WordRNN("RNN", nonlinearity="relu")
        for name, p in rnn.rnn.named_parameters():
            if name.startswith("weight_hh"):
                q, _ = torch.linalg.qr(torch.randn(p.shape))
                p.copy_(scale * q)
        return rnn

    return plant


def _closed_forget_gate(model: nn.Module) -> nn.Module:
    """The LSTM's forget-gate biases at −6: the cell state forgets at every step."""
    for name, p in model.rnn.named_parameters():  # type: ignore[union-attr]
        if name.startswith("bias_"):
            hidden = p.shape[0] // 4
            p[hidden : 2 * hidden] = -3.0  # bias_ih and bias_hh add up to −6
    return model


HEALTHY: tuple[Case, ...] = (
    *(Case(f"{name} at init", name, what="as built, random weights") for name in ARCHITECTURES),
    Case("resnet trained", "resnet", train=Training(steps=20, lr=0.05), what="20 SGD steps"),
    Case("gpt2 trained", "gpt2", train=Training(steps=20, lr=1e-3, optimizer="adam")),
    Case("word_lstm trained", "word_lstm", train=Training(steps=20, lr=1.0)),
)

PLANTED: tuple[Case, ...] = (
    Case(
        "gpt2 blocks starved behind tied embeddings",
        "gpt2",
        _scale("transformer.ln_f.weight", 1e-8),
        "vanishing",
        ("transformer.h.0.*",),
        what="final LayerNorm gain 1e-8: the blocks get 1e-8 of the head's gradient",
    ),
    Case(
        "nanogpt blocks starved behind tied embeddings",
        "nanogpt",
        _scale("transformer.ln_f.weight", 1e-8),
        "vanishing",
        ("transformer.h.0.*",),
        what="final LayerNorm gain 1e-8",
    ),
    Case(
        "t5 decoder starved",
        "t5",
        _scale("decoder.final_layer_norm.weight", 1e-8),
        "vanishing",
        ("decoder.block.0.*",),
        what="the decoder's final RMSNorm gain 1e-8",
    ),
    Case(
        "vit blocks starved",
        "vit",
        _scale("norm.weight", 1e-8),
        "vanishing",
        ("blocks.0.*",),
        what="final LayerNorm gain 1e-8 (the root's cls_token and pos_embed behind it)",
    ),
    Case(
        "llama sigmoid FFN",
        "llama",
        _sigmoid_ffn,
        "saturation",
        ("model.layers.0.mlp.act_fn",),
        what="sigmoid gates on their flat tails",
    ),
    Case(
        "mha encoder without residuals",
        "mha_encoder",
        _no_residual,
        "vanishing",
        ("embed",),
        also=("dead_units",),
        what="48 post-LN blocks with the skip connections removed",
    ),
    Case(
        "deep post-LN transformer without warm-up",
        "word_transformer",
        _deep_post_ln,
        "vanishing",
        ("input_emb",),
        also=("plateau", "learning_rate"),
        train=Training(steps=40, lr=2e-2, optimizer="adam"),
        what="12 post-LN layers, Adam at lr 0.02 from the first step (no warm-up: Xiong et "
        "al. 2020): the lower layers' gradient collapses to ~1e-6 of the head's",
    ),
    Case(
        "vgg init ×10",
        "vgg",
        _scale("*.weight", 10.0),
        "exploding",
        ("features.0",),
        what="every weight ×10 (He init ×10): the backward signal grows ×10 per layer",
    ),
    Case(
        "resnet huge learning rate",
        "resnet",
        None,
        "exploding",
        ("*",),
        also=("nonfinite", "learning_rate"),
        train=Training(steps=30, lr=50.0),
        what="SGD at lr 50",
    ),
    Case(
        "gpt2 huge learning rate",
        "gpt2",
        None,
        "exploding",
        ("*",),
        also=("nonfinite", "learning_rate"),
        train=Training(steps=30, lr=1e3),
        what="SGD at lr 1000",
    ),
    Case(
        "diverging ReLU RNN",
        "word_lstm",
        _relu_rnn(3.0),
        "exploding_through_time",
        ("rnn*",),
        also=("exploding",),
        what="the word model's RNN_RELU with W_hh orthogonal ×3",
    ),
    Case(
        "LSTM with closed forget gates",
        "word_lstm",
        _closed_forget_gate,
        "vanishing_through_time",
        ("rnn*",),
        what="forget-gate bias −6",
    ),
)
