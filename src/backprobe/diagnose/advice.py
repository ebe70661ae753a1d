"""What to change, and where it was shown: ranked remedies and references for each finding.

Each remedy names the exact call: a ``backprobe.remedies`` function (applied to the model
in place, then re-checked with ``bp.check``) or a plain torch call. Remedies that change
the model (initialisation, activation swaps) carry an action, which
``backprobe.remedies.apply_remedy`` applies and ``bp.prescribe`` measures; the rest are
advice for the loop or the architecture. Remedies are ranked most effective first for the
cause the rule found.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import DiagnoseError
from .finding import Remedy

BOUNDED = ("sigmoid", "tanh", "hardtanh", "hardsigmoid", "softsign")


def swap_to_relu(families: Iterable[str]) -> Remedy:
    """ReLU in place of the bounded activations among ``families`` (the activation
    table's names of those the model has), then He init for the new activation: the swap
    alone leaves weights drawn for the old one (χ1 = 1/6 for ReLU at PyTorch's default)."""
    bounded = tuple(f for f in BOUNDED if f in set(families))
    if not bounded:
        raise DiagnoseError(
            f"Expected a bounded activation among {sorted(families)} to swap for ReLU, but "
            f"there is none of {BOUNDED}; offer the swap only where the model has one."
        )
    return Remedy.applying(
        f"ReLU + He init instead of {'/'.join(bounded)}",
        f"ReLU's derivative is 1 where it is active instead of at most "
        f"{'1/4' if 'sigmoid' in bounded else '1'} ({'/'.join(bounded)}), and He init "
        "keeps χ1 = 1 for it, so the chain-rule product stops shrinking layer by layer.",
        (
            "swap_activations_",
            {"from_": bounded[0] if len(bounded) == 1 else bounded, "to": "relu"},
        ),
        ("init_", {"scheme": "he_normal", "activation": "relu"}),
    )


HE_INIT = Remedy.applying(
    "He initialisation",
    "Weights with std √(2/fan_in) keep the signal's variance through ReLU layers: χ1 = 1.",
    ("init_", {"scheme": "he_normal"}),
)
XAVIER_INIT = Remedy.applying(
    "Glorot (Xavier) initialisation",
    "Weights scaled by √(6/(fan_in+fan_out)) keep the gradient's variance roughly flat "
    "through tanh-like layers.",
    ("init_", {"scheme": "xavier_uniform"}),
)
ORTHOGONAL_INIT = Remedy.applying(
    "Orthogonal initialisation",
    "All singular values of each weight matrix equal, at the gain where χ1 = 1 (tanh 1, "
    "ReLU √2): no direction of the gradient is shrunk or stretched (dynamical isometry, "
    "Pennington et al. 2017).",
    ("init_", {"scheme": "orthogonal"}),
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
RECURRENT_ORTHOGONAL = Remedy.applying(
    "Orthogonal recurrent weights",
    "λ1 of W_hh = 1: the recurrence neither shrinks nor stretches the state on average "
    "(LSTM forget-gate bias 1 as well). activation= is the gain of the other layers.",
    ("init_", {"scheme": "orthogonal", "activation": "linear"}),
)
TRUNCATE = Remedy(
    "Truncated back-propagation through time",
    "backprobe.remedies.truncated_bptt(model, inputs, targets, loss_fn, optimizer, k1=20)",
    "Back-propagating over k steps at most bounds the product of Jacobians.",
)
LEAKY = Remedy.applying(
    "LeakyReLU keeps a gradient for negative inputs",
    "Units with negative input still pass 1 % of the gradient, so they can recover.",
    ("swap_activations_", {"from_": "relu", "to": "leaky_relu"}),
)
ZERO_BIAS = Remedy(
    "Reset the biases to zero",
    "torch.nn.init.zeros_(layer.bias)  # for the layer before the dead ReLU",
    "A large negative bias pushes every input below 0, where ReLU's gradient is 0.",
)
IRNN = Remedy.applying(
    "Identity recurrent weights (IRNN, for a ReLU nn.RNN)",
    "W_hh = I passes the state unchanged, so the gradient neither vanishes nor explodes "
    "through time at the start (Le et al. 2015).",
    ("init_", {"scheme": "identity", "activation": "linear"}),
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


PRE_LN = Remedy(
    "Normalise inside the residual branch (pre-LN)",
    "torch.nn.TransformerEncoderLayer(d_model, nhead, norm_first=True)  # x + F(LN(x))",
    "With the LayerNorm inside the branch instead of after the addition, the identity path "
    "carries the gradient to every block unchanged (Xiong et al. 2020).",
)
WARMUP = Remedy(
    "Warm the learning rate up",
    "torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=1000)",
    "Small updates while the layers settle: without warm-up the first large Adam steps of a "
    "post-LN stack drive its lower layers' gradient away (Xiong et al. 2020; Liu et al. 2020).",
)


def vanishing_remedies(families: Iterable[str], residual: bool = False) -> tuple[Remedy, ...]:
    """Ranked for a gradient that shrinks toward the input; ``families`` are the
    activation families in the starving part of the network (the swap names those);
    ``residual`` when that part is made of residual blocks, whose skip connections are
    already there: the stream itself loses the gradient (normalisation placement, early
    updates too large)."""
    if residual:
        return (PRE_LN, WARMUP, lower_lr(), ADAM)
    if set(families) & set(BOUNDED):
        return (swap_to_relu(families), HE_INIT, RESIDUAL, NORMALISE, ADAM)
    return (HE_INIT, RESIDUAL, NORMALISE, ORTHOGONAL_INIT, ADAM)


def exploding_remedies() -> tuple[Remedy, ...]:
    return (HE_INIT, CLIP, NORMALISE, lower_lr(), BP_CLIP)


DEPTH_REFERENCES = ("Hochreiter 1991", "Glorot & Bengio 2010", "He et al. 2015")
RESIDUAL_REFERENCES = ("Xiong et al. 2020", "Liu et al. 2020", "He et al. 2016")
SATURATION_REFERENCES = ("Glorot & Bengio 2010", "LeCun et al. 1998 (Efficient BackProp)")
DEAD_REFERENCES = ("He et al. 2015", "Maas et al. 2013 (leaky ReLU)", "Lu et al. 2019")
NONFINITE_REFERENCES = ("Pascanu et al. 2013",)
LR_REFERENCES = ("Bengio 2012 (Practical recommendations)", "CS231n: update/weight ratio ~1e-3")
INIT_REFERENCES = ("Poole et al. 2016", "Schoenholz et al. 2017", "He et al. 2015")
TIME_REFERENCES = ("Hochreiter 1991", "Bengio et al. 1994", "Pascanu et al. 2013")

FORGET_BIAS = Remedy.applying(
    "Open the LSTM's forget gate at the start",
    "A forget-gate bias of 1 keeps f_t near 0.73 instead of 0.5, so the cell state carries "
    "the gradient over many more steps (Gers et al. 2000; Jozefowicz et al. 2015).",
    ("init_", {"scheme": "orthogonal", "activation": "linear", "forget_bias": 1.0}),
)

TIME_VANISHING_REMEDIES = (LSTM, RECURRENT_ORTHOGONAL, IRNN, REGULARISE)
#: For LSTM / GRU, where the memory gate, not W_hh, carries the gradient through time.
GATED_VANISHING_REMEDIES = (FORGET_BIAS, ADAM)
TIME_EXPLODING_REMEDIES = (CLIP, RECURRENT_ORTHOGONAL, TRUNCATE, LSTM)

GUARD_SKIP = Remedy(
    "Guard the loop: skip the update of a spiking step",
    'guard = backprobe.Guard(probe, optimizer, on_spike="skip")  # then guard.step(loss) '
    "in place of probe.step(loss); optimizer.step()",
    "The spike detector judges each step as it ends and drops the update of a spike, so "
    "one bad batch cannot throw the weights away (PaLM skipped the batches around its "
    "loss spikes, Chowdhery et al. 2022).",
)
GUARD_CLIP = Remedy(
    "Guard the loop: clip spiking steps to the usual gradient norm",
    'guard = backprobe.Guard(probe, optimizer, on_spike="clip")',
    "At a spike the gradient is rescaled to the running median of its norm: the step keeps "
    "its direction at its usual length, and ordinary steps are left alone.",
)
GUARD_LR = Remedy(
    "Guard the loop: lower the learning rate after a spike",
    'guard = backprobe.Guard(probe, optimizer, on_spike="scale_lr", lr_factor=0.1, lr_steps=100)',
    "Smaller steps for a while after each spike, while the layers that spiked settle.",
)
SPIKE_REFERENCES = ("Chowdhery et al. 2022 (PaLM, §5.1)", "Pascanu et al. 2013")


def spike_remedies(bad_batch: bool) -> tuple[Remedy, ...]:
    """Ranked for a spike: carried by a few samples (``bad_batch``, or a non-finite
    step), skip their update first; spread over the batch (an instability of the
    network), slow the steps down first."""
    if bad_batch:
        return (GUARD_SKIP, CLIP, GUARD_CLIP, lower_lr())
    return (lower_lr(), WARMUP, GUARD_LR, GUARD_CLIP, CLIP)


QK_NORM = Remedy(
    "Normalise queries and keys (QK-norm)",
    "q, k = F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])  # before q @ k.T",
    "A LayerNorm on each head's queries and keys bounds their norms, so the attention "
    "logits cannot grow with the weights (Dehghani et al. 2023; Wortsman et al. 2023 show "
    "it removes the instability in small models at high learning rates).",
)
SIGMA_REPARAM = Remedy(
    "Reparametrise the attention weights by their spectral norm (σReparam)",
    "torch.nn.utils.parametrizations.spectral_norm(attention.q_proj)  # and k_proj",
    "Dividing W by its largest singular value bounds how far q·k can grow; Zhai et al. "
    "2023's σReparam adds a learnable scale and keeps the attention entropy from "
    "collapsing.",
)
Z_LOSS = Remedy(
    "Add the z-loss on the output logits",
    "loss = loss + 1e-4 * torch.logsumexp(logits, dim=-1).pow(2).mean()",
    "Penalises log Z, the log of the softmax's normaliser, so the output logits stay near "
    "the log-probabilities instead of drifting (Chowdhery et al. 2022; Wortsman et al. "
    "2023).",
)
WEIGHT_DECAY = Remedy(
    "Decay the weights",
    "torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)",
    "Pulls every weight toward 0 a little at each step, so the blocks' outputs, and the "
    "residual stream they add up to, cannot grow without bound.",
)
ATTENTION_WARMUP = Remedy(
    "Warm the learning rate up",
    "torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=1000)",
    "Adam's first steps move every weight by about the learning rate; small ones while "
    "the attention settles keep the logits from jumping (Wortsman et al. 2023: longer "
    "warm-up lowers the sensitivity to the learning rate).",
)
ATTENTION_REFERENCES = (
    "Dehghani et al. 2023 (ViT-22B, QK-norm)",
    "Wortsman et al. 2023",
    "Zhai et al. 2023 (entropy collapse)",
)
OUTPUT_LOGIT_REFERENCES = ("Chowdhery et al. 2022 (PaLM, z-loss)", "Wortsman et al. 2023")
UPDATE_REFERENCES = ("CS231n: update/weight ratio ~1e-3 (a rule of thumb)", "Wortsman et al. 2023")
