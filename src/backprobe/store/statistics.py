"""The per-layer statistics a run stores: one table, one entry per statistic.

An entry gives the stored name (a series of [layers] float values per recorded step),
what it holds (the comment beside it), and what it is made of: the quantities it reads,
which the probe gathers on the device during a recorded step (members of
:class:`~backprobe.probe.stats.Field`, by name), and how the host combines one layer's
gathered values of a step into the layer's value (:class:`Combine`).

Everything else follows from this table: the stored series (:data:`LAYER_SERIES`) and
their readers (:class:`~backprobe.store.view.RunView`, the TensorBoard scalars), the
probe's host reduction (:meth:`~backprobe.probe.stats.HostStep.reduce`) and the
quantities totalled over the ranks under torch.distributed. Adding a statistic is one
entry here, plus a device reduction (a ``Field`` member and the ``StepBuffer`` line that
gathers it) when it reads a quantity that is not gathered yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..errors import BackprobeError


class Combine(Enum):
    """How the host turns one layer's gathered values of a recorded step into the layer's
    value: NaN where the layer gathered none of the (first) quantity read."""

    MEAN = "mean"  # sum of the values / elements they summarise: a mean, or a fraction
    NORM = "norm"  # square root of the sum of squares: the L2 norm of the pieces together
    # standard deviation of the elements, from the sums (first quantity read) and the
    # squared norms (second) of the same tensors
    SPREAD = "spread"
    NONFINITE = "nonfinite"  # samples holding a NaN or an infinity
    # LSTM / GRU memory gates over the time-profile sub-batch, summarised on the device
    # by the layer's time-profile measurement (reads no gathered quantity)
    GATE_MEAN = "gate mean"  # mean gate value
    GATE_OPEN = "gate open"  # fraction of gate values above 0.9 (memory kept)
    # measured apart from the gathered quantities and stored with the step's row: by the
    # attention watch during the step (probe.attention), or by the optimizer's step hooks
    # after it (probe.updates, amending the row); NaN where it was not measured
    MEASURED = "measured"


#: How many gathered quantities each combination reads.
READS: dict[Combine, int] = {
    Combine.MEAN: 1,
    Combine.NORM: 1,
    Combine.SPREAD: 2,
    Combine.NONFINITE: 1,
    Combine.GATE_MEAN: 0,
    Combine.GATE_OPEN: 0,
    Combine.MEASURED: 0,
}


@dataclass(frozen=True)
class LayerStatistic:
    """One stored per-layer statistic: its series ``name``, how it is combined, and the
    names of the gathered quantities it reads (``READS[combine]`` of them)."""

    name: str
    combine: Combine
    reads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.reads) != READS[self.combine]:
            raise BackprobeError(
                f"Statistic {self.name!r}: {self.combine.name} reads {READS[self.combine]} "
                f"gathered quantities, but the entry names {len(self.reads)} ({self.reads}). "
                "Name as many as the combination reads."
            )


#: The per-layer statistics, in the order they are stored and listed.
LAYER_STATISTICS: tuple[LayerStatistic, ...] = (
    # ||dL/dθ|| over the layer's own trainable parameters
    LayerStatistic("grad_norm", Combine.NORM, ("PARAM_GRAD_NORM",)),
    # ||θ|| over the same parameters
    LayerStatistic("weight_norm", Combine.NORM, ("PARAM_NORM",)),
    # ||dL/d output||: the backward signal reaching the layer's output
    LayerStatistic("signal_norm", Combine.NORM, ("SIGNAL_NORM",)),
    # mean of the layer's primary output
    LayerStatistic("act_mean", Combine.MEAN, ("OUT_SUM",)),
    # standard deviation of the primary output
    LayerStatistic("act_std", Combine.SPREAD, ("OUT_SUM", "OUT_NORM")),
    # fraction of saturated units (sigmoid / tanh / hard-tanh family)
    LayerStatistic("saturated", Combine.MEAN, ("OUT_SATURATED",)),
    # fraction of units zero for the whole batch (ReLU family)
    LayerStatistic("dead", Combine.MEAN, ("DEAD",)),
    # samples whose output holds a NaN or an infinity
    LayerStatistic("nonfinite_out", Combine.NONFINITE, ("OUT_SUM",)),
    # samples whose dL/d output holds a NaN or an infinity
    LayerStatistic("nonfinite_grad", Combine.NONFINITE, ("SIGNAL_NORM",)),
    # LSTM / GRU: mean forget / update gate over the time-profile sub-batch
    LayerStatistic("gate_mean", Combine.GATE_MEAN),
    # LSTM / GRU: fraction of those gate values above 0.9 (memory kept)
    LayerStatistic("gate_open", Combine.GATE_OPEN),
    # Probe(optimizer=): ||Δθ|| / ||θ|| of the optimizer step after the recorded one
    LayerStatistic("update_to_weight", Combine.MEASURED),
    # Probe(optimizer=Adam/AdamW): median lr / (√v̂ + ε) over the layer's parameters
    LayerStatistic("adam_step", Combine.MEASURED),
    # attention in the layer (an attention module, or the block holding one): the
    # largest logit q·k/√d, the mean entropy of the attention distributions (nats), and
    # the lowest head's mean entropy
    LayerStatistic("attn_logit_max", Combine.MEASURED),
    LayerStatistic("attn_entropy", Combine.MEASURED),
    LayerStatistic("attn_entropy_min", Combine.MEASURED),
)
#: Stored names of the per-layer series, each [layers] per recorded step.
LAYER_SERIES: tuple[str, ...] = tuple(stat.name for stat in LAYER_STATISTICS)
