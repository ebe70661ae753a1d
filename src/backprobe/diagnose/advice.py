"""What to change, and where it was shown: ranked remedies and references for each finding.

Each remedy names the exact call: a ``backprobe.remedies`` function (applied to the model
in place, then re-checked with ``bp.check``) or a plain torch call. Remedies are ranked
most effective first for the cause the rule found.
"""

from __future__ import annotations

from .finding import Remedy

SWAP_TO_RELU = Remedy(
    "Use ReLU instead of sigmoid/tanh in the hidden layers",
    "backprobe.remedies.swap_activations_(model, from_=nn.Sigmoid, to=nn.ReLU)",
    "ReLU's derivative is 1 where it is active instead of at most 1/4 (sigmoid), so the "
    "chain-rule product stops shrinking layer by layer.",
)
HE_INIT = Remedy(
    "He initialisation",
    'backprobe.remedies.init_(model, "he_normal")',
    "Weights with std √(2/fan_in) keep the signal's variance through ReLU layers: χ1 = 1.",
)
XAVIER_INIT = Remedy(
    "Glorot (Xavier) initialisation",
    'backprobe.remedies.init_(model, "xavier_uniform")',
    "Weights scaled by √(6/(fan_in+fan_out)) keep the gradient's variance roughly flat "
    "through tanh-like layers.",
)
ORTHOGONAL_INIT = Remedy(
    "Orthogonal initialisation",
    'backprobe.remedies.init_(model, "orthogonal")',
    "All singular values of each weight matrix equal: no direction of the gradient is "
    "shrunk or stretched (dynamical isometry).",
)
CLIP = Remedy(
    "Clip the global gradient norm",
    "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)",
    "Rescales the whole gradient when its norm exceeds the threshold, so one exploding "
    "step cannot throw the weights away (Pascanu et al. 2013, Algorithm 1).",
)
BP_CLIP = Remedy(
    "Clip with backprobe (records how often it clips)",
    "backprobe.remedies.clip_grad_norm_(model.parameters(), max_norm=1.0, probe=probe)",
    "The same global-norm clipping, with the norms before and after recorded in the run.",
)
NORMALISE = Remedy(
    "Normalise the layers",
    "torch.nn.LayerNorm(width)  # or torch.nn.BatchNorm1d after each Linear",
    "Re-centres and re-scales each layer's output, so its scale cannot drift with depth.",
)
RESIDUAL = Remedy(
    "Add skip connections",
    "x = x + block(x)  # residual blocks, as in ResNets and transformers",
    "The identity path carries the gradient past every block unchanged.",
)
ADAM = Remedy(
    "An adaptive optimizer",
    "torch.optim.Adam(model.parameters(), lr=1e-3)",
    "Per-parameter step sizes make updates of starving layers as large as the others'.",
)
LSTM = Remedy(
    "Use a gated recurrent layer",
    "torch.nn.LSTM(input_size, hidden_size, batch_first=True)  # or torch.nn.GRU",
    "The cell state's additive path with a forget gate near 1 carries the gradient over "
    "many steps (Hochreiter & Schmidhuber 1997).",
)
RECURRENT_ORTHOGONAL = Remedy(
    "Orthogonal recurrent weights",
    'backprobe.remedies.init_(model, "orthogonal", activation="linear")',
    "λ1 of W_hh = 1: the recurrence neither shrinks nor stretches the state on average "
    "(LSTM forget-gate bias 1 as well). activation= is the gain of the other layers.",
)
TRUNCATE = Remedy(
    "Truncated back-propagation through time",
    "backprobe.remedies.truncated_bptt(model, inputs, targets, loss_fn, optimizer, k1=20)",
    "Back-propagating over k steps at most bounds the product of Jacobians.",
)
LEAKY = Remedy(
    "LeakyReLU keeps a gradient for negative inputs",
    "backprobe.remedies.swap_activations_(model, from_=nn.ReLU, to=nn.LeakyReLU)",
    "Units with negative input still pass 1 % of the gradient, so they can recover.",
)
ZERO_BIAS = Remedy(
    "Reset the biases to zero",
    "torch.nn.init.zeros_(layer.bias)  # for the layer before the dead ReLU",
    "A large negative bias pushes every input below 0, where ReLU's gradient is 0.",
)
IRNN = Remedy(
    "Identity recurrent weights with ReLU (IRNN)",
    'backprobe.remedies.init_(model, "identity", activation="linear")  # ReLU nn.RNN',
    "W_hh = I passes the state unchanged, so the gradient neither vanishes nor explodes "
    "through time at the start (Le et al. 2015).",
)
REGULARISE = Remedy(
    "Pascanu's regulariser on the unrolled layer",
    "loss = loss + 2.0 * backprobe.remedies.pascanu_omega(loss, unrolled)",
    "Penalises steps where the back-propagated gradient shrinks (eq. 9).",
)
ANOMALY = Remedy(
    "Find the operation that produced it",
    "with torch.autograd.detect_anomaly(): loss.backward()",
    "Raises at the first backward operation that returns NaN, with its forward traceback.",
)


def lower_lr(factor: str = "10") -> Remedy:
    return Remedy(
        "Lower the learning rate",
        f"for g in optimizer.param_groups: g['lr'] /= {factor}",
        "Smaller updates relative to the weights keep each step inside the region where "
        "the gradient describes the loss.",
    )


def raise_lr(factor: str = "10") -> Remedy:
    return Remedy(
        "Raise the learning rate",
        f"for g in optimizer.param_groups: g['lr'] *= {factor}",
        "Updates of about 10⁻³ of the weights per step make progress without instability.",
    )


BOUNDED = ("sigmoid", "tanh", "hardtanh", "hardsigmoid", "softsign")


def vanishing_remedies(families: set[str]) -> tuple[Remedy, ...]:
    """Ranked for a gradient that shrinks toward the input; ``families`` are the
    activation families in the starving part of the network."""
    if families & set(BOUNDED):
        return (SWAP_TO_RELU, HE_INIT, RESIDUAL, NORMALISE, ADAM)
    return (HE_INIT, RESIDUAL, NORMALISE, ORTHOGONAL_INIT, ADAM)


def exploding_remedies() -> tuple[Remedy, ...]:
    return (HE_INIT, CLIP, NORMALISE, lower_lr(), BP_CLIP)


DEPTH_REFERENCES = ("Hochreiter 1991", "Glorot & Bengio 2010", "He et al. 2015")
SATURATION_REFERENCES = ("Glorot & Bengio 2010", "LeCun et al. 1998 (Efficient BackProp)")
DEAD_REFERENCES = ("He et al. 2015", "Maas et al. 2013 (leaky ReLU)", "Lu et al. 2019")
NONFINITE_REFERENCES = ("Pascanu et al. 2013",)
LR_REFERENCES = ("Bengio 2012 (Practical recommendations)", "CS231n: update/weight ratio ~1e-3")
INIT_REFERENCES = ("Poole et al. 2016", "Schoenholz et al. 2017", "He et al. 2015")
TIME_REFERENCES = ("Hochreiter 1991", "Bengio et al. 1994", "Pascanu et al. 2013")

FORGET_BIAS = Remedy(
    "Open the LSTM's forget gate at the start",
    'backprobe.remedies.init_(model, "orthogonal", activation="linear", forget_bias=1.0)',
    "A forget-gate bias of 1 keeps f_t near 0.73 instead of 0.5, so the cell state carries "
    "the gradient over many more steps (Gers et al. 2000; Jozefowicz et al. 2015).",
)

TIME_VANISHING_REMEDIES = (LSTM, RECURRENT_ORTHOGONAL, IRNN, REGULARISE)
#: For LSTM / GRU, where the memory gate, not W_hh, carries the gradient through time.
GATED_VANISHING_REMEDIES = (FORGET_BIAS, ADAM)
TIME_EXPLODING_REMEDIES = (CLIP, RECURRENT_ORTHOGONAL, TRUNCATE, LSTM)
