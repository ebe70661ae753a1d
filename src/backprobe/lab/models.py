"""Models for the lab: a plain multilayer perceptron and a recurrent sequence model.

The seeds' "short" and "long" networks are the same building block repeated a different
number of times, so one class covers both; activation and initialisation are the two
knobs the seeds (and later chapters) turn to cure a vanishing gradient. Through time the
knob is the cell: a plain tanh RNN, an IRNN, an LSTM or a GRU around the same readout.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, get_args

import torch
from torch import nn

from ..activations import ActivationKind, activation_kind
from ..errors import LabConfigError
from ..probe.recurrent import UnrolledResult, unrolled_forward
from ..remedies.esn import EchoStateNetwork

__all__ = [
    "ACTIVATIONS",
    "CELLS",
    "INITS",
    "Cell",
    "DeepMLP",
    "Init",
    "MLPActivation",
    "Readout",
    "RecurrentModel",
    "TransformerLM",
]

#: The hidden-layer nonlinearities a :class:`DeepMLP` is built with.
MLPActivation = Literal["sigmoid", "tanh", "relu"]
Init = Literal["default", "xavier", "he", "orthogonal"]
ACTIVATIONS: tuple[str, ...] = get_args(MLPActivation)
INITS: tuple[str, ...] = get_args(Init)
Cell = Literal["rnn", "lstm", "gru", "irnn", "esn"]
CELLS: tuple[str, ...] = get_args(Cell)
Readout = Literal["last", "all"]


def _kind(activation: MLPActivation) -> ActivationKind:
    """The activation table's record of one of :data:`ACTIVATIONS`."""
    kind = activation_kind(activation)
    assert kind is not None and kind.init_gain is not None  # all three are in the table
    return kind


class DeepMLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units, each a Linear and an activation.

    Maps x [batch, in_features] to logits [batch, out_features]. The children are named
    so that the probe's layer names read like the seeds' pictures, input → output::

        fc1, act1, fc2, act2, …, fc{depth}, act{depth}, out

    ``fc1`` is Linear(in_features, width), ``fc2 … fc{depth}`` are Linear(width, width)
    and ``out`` is Linear(width, out_features) with no activation (the logits), so the
    model has ``depth + 1`` Linear layers. ``depth=0`` is logistic regression.

    ``init`` sets the weights of every Linear, ``out`` included:

    - ``"default"``: PyTorch's own ``nn.Linear`` init, ``U(±1/√fan_in)`` for weights and
      biases (weight std ``1/√(3·fan_in)``). What a user gets without thinking about it,
      and, with sigmoid, the seeds' vanishing long network.
    - ``"xavier"``: Glorot & Bengio (2010), ``U(±√(6/(fan_in+fan_out)))``, gain 1; keeps
      the signal's variance for activations that are near-linear around 0 (tanh).
    - ``"he"``: He et al. (2015), ``N(0, 2/fan_in)``; the factor 2 makes up for ReLU
      zeroing half of its inputs, so the variance survives any depth on average.
    - ``"orthogonal"``: Saxe et al. (2014), a random orthogonal matrix times the
      activation's gain from the activation table (sigmoid 1, tanh 5/3, ReLU √2, as
      ``nn.init.calculate_gain``):
      every singular value equal, so no direction of the signal is shrunk or amplified.

    Biases are zero under every init except ``"default"``.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        activation: MLPActivation = "relu",
        init: Init = "default",
    ) -> None:
        if activation not in ACTIVATIONS:
            raise LabConfigError(f"Expected activation in {ACTIVATIONS}, got {activation!r}.")
        if init not in INITS:
            raise LabConfigError(f"Expected init in {INITS}, got {init!r}.")
        if depth < 0 or min(in_features, width, out_features) < 1:
            raise LabConfigError(
                "Expected depth >= 0 and positive in_features, width and out_features, got "
                f"{in_features=}, {width=}, {depth=}, {out_features=}."
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        fan_in = in_features
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(fan_in, width)
            layers[f"act{i}"] = _kind(activation).modules[0]()
            fan_in = width
        layers["out"] = nn.Linear(fan_in, out_features)
        super().__init__(layers)
        self.in_features = in_features
        self.width = width
        self.depth = depth
        self.out_features = out_features
        self.activation = activation
        self.init = init
        self.reset_parameters()

    @property
    def linears(self) -> list[nn.Linear]:
        """The ``depth + 1`` Linear layers, input → output."""
        return [m for m in self if isinstance(m, nn.Linear)]

    def reset_parameters(self) -> None:
        """(Re)draw every weight and bias under ``self.init`` from the global torch RNG;
        seed it (``torch.manual_seed``) for a reproducible model."""
        gain = float(_kind(self.activation).init_gain or 1.0)
        for linear in self.linears:
            if self.init == "default":
                linear.reset_parameters()
                continue
            if self.init == "xavier":
                nn.init.xavier_uniform_(linear.weight)
            elif self.init == "he":
                nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.orthogonal_(linear.weight, gain=gain)
            nn.init.zeros_(linear.bias)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}, {self.activation}, init={self.init}"


#: The nonlinearity of the plain (ungated) recurrent cells.
_PLAIN_CELLS = {"rnn": "tanh", "irnn": "relu"}


class RecurrentModel(nn.Module):
    """A sequence model: (embedding →) recurrent core → Linear readout.

    Input is either token ids x int64 [batch, T] (when ``embed`` is given; then the first
    argument is the vocabulary size) or features x float [batch, T, input_size]. The core
    is ``self.rnn``, a plain ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` with ``batch_first=True``
    (so the probe finds it by type and its name reads ``rnn``). The readout ``self.out``
    is a Linear from the top layer's hidden state to ``n_out`` outputs:

    - ``readout="last"``: from h_T only, output [batch, n_out] — a classifier or
      regressor that must carry what it needs across the whole sequence;
    - ``readout="all"``: from every h_t, output [batch, T, n_out] — for the copy task
      and one-step-ahead forecasts.

    Cells:

    - ``"rnn"``: Elman tanh RNN, PyTorch's default init ``U(±1/√hidden)``;
    - ``"irnn"``: Le et al. (2015): ReLU RNN with W_hh = identity and all biases zero
      (``backprobe.remedies.init_(rnn, "identity")``; input weights Glorot-uniform): the
      state is carried unchanged until learnt otherwise, so the gradient through time
      neither vanishes nor explodes at first;
    - ``"lstm"`` / ``"gru"``: the gated cells, PyTorch's default init;
    - ``"esn"``: an echo state network (:class:`~backprobe.remedies.EchoStateNetwork`,
      its defaults: spectral radius 1.25, leak 0.3) of ``hidden`` reservoir units: the
      reservoir is fixed, only the readout learns (by gradient, or in closed form with
      ``model.rnn.fit``); ``self.out`` *is* the reservoir's readout. One layer only.

    ``recurrent_norm`` (optional) rescales each layer's W_hh — for LSTM/GRU each gate's
    block — to that largest singular value λ1 after init: Pascanu et al.'s knob
    (λ1 < 1/γ: vanishing is certain, λ1 > 1/γ: exploding becomes possible; γ = 1 for tanh).
    """

    def __init__(
        self,
        vocab_or_input_size: int,
        hidden: int,
        n_out: int,
        cell: Cell = "rnn",
        layers: int = 1,
        embed: int | None = None,
        readout: Readout = "last",
        recurrent_norm: float | None = None,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise LabConfigError(f"Expected cell in {CELLS}, got {cell!r}.")
        if readout not in get_args(Readout):
            raise LabConfigError(f"Expected readout in {get_args(Readout)}, got {readout!r}.")
        if min(vocab_or_input_size, hidden, n_out, layers) < 1 or (embed is not None and embed < 1):
            raise LabConfigError(
                "Expected positive vocab_or_input_size, hidden, n_out, layers and embed, got "
                f"{vocab_or_input_size=}, {hidden=}, {n_out=}, {layers=}, {embed=}."
            )
        if cell == "esn" and (layers != 1 or recurrent_norm is not None):
            raise LabConfigError(
                "Expected layers=1 and recurrent_norm=None for an echo state network (its "
                f"reservoir is scaled by its spectral radius), got {layers=}, {recurrent_norm=}."
            )
        if recurrent_norm is not None and recurrent_norm < 0:
            raise LabConfigError(f"Expected recurrent_norm >= 0 or None, got {recurrent_norm}.")
        self.cell = cell
        self.readout = readout
        self.embedding = None if embed is None else nn.Embedding(vocab_or_input_size, embed)
        rnn_input = vocab_or_input_size if embed is None else embed
        self.rnn: nn.Module
        if cell == "esn":
            self.rnn = EchoStateNetwork(rnn_input, hidden, n_out, batch_first=True)
            self.out = self.rnn.readout
            return
        if cell in _PLAIN_CELLS:
            self.rnn = nn.RNN(
                rnn_input,
                hidden,
                num_layers=layers,
                batch_first=True,
                nonlinearity=_PLAIN_CELLS[cell],
            )
        else:
            gated = nn.LSTM if cell == "lstm" else nn.GRU
            self.rnn = gated(rnn_input, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, n_out)
        if cell == "irnn":
            self._init_irnn()
        if recurrent_norm is not None:
            self.set_recurrent_norm(recurrent_norm)

    def _init_irnn(self) -> None:
        """Le et al.'s IRNN through :func:`backprobe.remedies.init_` ("identity"):
        W_hh = I, zero biases, Glorot-uniform input weights (ReLU gain)."""
        from ..remedies.init import init_

        init_(self.rnn, "identity")

    @torch.no_grad()
    def set_recurrent_norm(self, norm: float) -> None:
        """Rescale every W_hh block (one per gate) to largest singular value ``norm``."""
        for name, p in self.rnn.named_parameters():
            if not name.startswith("weight_hh"):
                continue
            for block in p.split(self.rnn.hidden_size, dim=0):  # gate blocks [H, H]
                sigma = torch.linalg.matrix_norm(block, ord=2)
                if float(sigma) > 0:
                    block.mul_(norm / sigma)

    def _core_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the recurrent core reads: [B, T, E or F]."""
        if self.embedding is not None:
            return self.embedding(x)  # [B, T, E]
        if x.dim() == 2:  # one feature per step given as [B, T]
            return x.unsqueeze(-1)
        return x

    def _read(self, h: torch.Tensor) -> torch.Tensor:
        """The readout of the top layer's states h [B, T, H]."""
        return self.out(h[:, -1] if self.readout == "last" else h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: int64 [B, T] (with an embedding) or float [B, T, F] → [B, n_out] or
        [B, T, n_out] (``readout="all"``)."""
        x = self._core_input(x)
        if isinstance(self.rnn, EchoStateNetwork):
            return self._read(self.rnn.states(x))  # [B, T, N] reservoir states
        h, _ = self.rnn(x)  # [B, T, H], the top layer's states
        return self._read(h)

    def forward_unrolled(self, x: torch.Tensor) -> tuple[torch.Tensor, UnrolledResult]:
        """The same output as ``forward`` (up to rounding), computed one step at a time
        by :func:`~backprobe.probe.recurrent.unrolled_forward`, with every h_t a node of
        the graph: what Pascanu's regulariser Ω needs. The fused ``self.rnn`` is not
        called, so forward hooks on it do not fire."""
        if self.cell == "esn":
            raise LabConfigError(
                "Expected a cell trained through time for Ω, got an echo state network "
                "(its reservoir is fixed); train it without Ω (omega=0)."
            )
        unrolled = unrolled_forward(self.rnn, self._core_input(x))
        assert isinstance(unrolled.output, torch.Tensor)
        return self._read(unrolled.output), unrolled

    def extra_repr(self) -> str:
        return f"cell={self.cell}, readout={self.readout}"


class TransformerLM(nn.Module):
    """A small causal transformer language model: token embedding plus learned
    positions, ``layers`` ``nn.TransformerEncoderLayer`` blocks (an MLP of
    4 × width, ReLU, no dropout), a linear head; token ids [B, T] in, logits [B, T, vocab] out.

    ``pre_ln`` chooses where LayerNorm sits (Xiong et al. 2020): post-LN (the original
    transformer, ``x = LN(x + f(x))``) normalises the residual stream after each block;
    pre-LN (``x = x + f(LN(x))``, with a final LayerNorm before the head) leaves the
    stream unnormalised and the gradient an identity path to every block.
    """

    def __init__(
        self,
        vocab: int,
        length: int,
        *,
        width: int = 64,
        heads: int = 4,
        layers: int = 8,
        pre_ln: bool = False,
    ) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.embed = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(0.02 * torch.randn(length, width))
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, norm_first=pre_ln, batch_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width) if pre_ln else nn.Identity()
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        x = self.embed(tokens) + self.positions[:length]
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))

    def extra_repr(self) -> str:
        return f"pre_ln={self.pre_ln}"
