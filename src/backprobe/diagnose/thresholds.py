"""When a measurement becomes a finding: every threshold of the diagnosis rules, in one place.

Pass your own :class:`DiagnoseThresholds` to ``bp.findings(run, thresholds=...)``,
``bp.check(..., thresholds=...)`` or ``diagnose(run, thresholds=...)`` to make a rule
stricter or more lenient; ``dataclasses.replace(DiagnoseThresholds(), dead_warning=0.8)``
changes one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackprobeError


@dataclass(frozen=True)
class DiagnoseThresholds:
    """Thresholds of the diagnosis rules. Ratios are of norms, fractions in [0, 1].

    Depth (vanishing / exploding across layers). Each layer's gradient norm and backward
    signal ||dL/d output|| are compared with those of the last layer (the output end):
    a factor ``vanishing_warning`` (10⁻³) or below is a warning, ``vanishing_error``
    (10⁻⁶) an error; likewise above ``exploding_warning`` / ``exploding_error``. The
    seeds' 50-layer sigmoid net sits near 10⁻¹⁰ at initialisation; a healthy ReLU + He
    MLP stays within a factor 10.

    Activations. A sigmoid / tanh layer with at least ``saturation_warning`` of its
    units saturated (derivative below 1 % of its maximum, see ``probe.selection``) is a
    warning, ``saturation_error`` an error. A ReLU layer with at least ``dead_warning``
    of its units zero for the whole batch likewise with ``dead_error``. ``dead_warning``
    is above 1/2 because with a batch of one example half of a healthy layer's units
    are zero.

    Learning rate. The update-to-weight ratio ||Δθ|| / ||θ|| per step should be near
    10⁻³ (Karpathy's rule of thumb, also in CS231n); above ``lr_too_large`` it is a
    warning (×100 the norm), above ``lr_too_large_error`` an error, below
    ``lr_too_small`` a warning.

    Measured updates (``Probe(optimizer=)`` records ``update_to_weight``, see
    :mod:`backprobe.diagnose.updates`). The update-to-weight ratio of each recorded step
    is the median over layers; its median over the first and over the last
    ``trend_window`` recorded steps is judged. Above ``update_too_large`` (3·10⁻², 30×
    the rule of thumb) in either window is a warning; one step above
    ``update_too_large_error`` (0.3: a third of the weights replaced at once) is an
    error. Measured on a 2-hidden-layer ReLU MLP and 2- and 4-layer GPT-2s: healthy Adam
    runs (lr 3·10⁻⁴ to 10⁻²) stay below 2·10⁻² in both windows although their first
    step reaches 5·10⁻² (0.27 for the MLP at lr 10⁻², which still trains); runs that
    stalled at chance (the MLP under Adam at 10⁻¹: 2.7 at its first step; under SGD with
    momentum 0.9 at lr 1.0: 8.7·10⁻² over its first window) are caught. Below
    ``update_too_small`` (10⁻⁵, 100× under the rule of thumb) in every recorded step is a
    warning: a converged run's updates shrink with its
    gradient (1.7·10⁻⁴ for the MLP under SGD at loss 7·10⁻⁴), so only far below the band
    is the learning rate itself to blame.

    Attention and residual stream (:mod:`backprobe.diagnose.attention`). Windows of
    ``trend_window`` recorded steps at the start and at the end of the run are compared.
    A layer's largest attention logit at or above ``attn_logit_warning`` (50) at the end
    and at least ``logit_rise`` times its value at the start is logit growth: at a logit
    50 above another key's, that key's weight is e⁻⁵⁰ ≈ 2·10⁻²² of it, far below float32's
    resolution (Gemma 2 soft-caps its attention logits at 50); the rise
    keeps a pretrained model whose logits were large from the start from being flagged.
    The model output's largest |logit| at or above ``output_logit_warning`` (30, Gemma 2's
    cap on the final logits) with the same rise, in a model with attention, is output
    logit growth. A layer's mean attention entropy at the end below ``entropy_collapse``
    (0.1) of its start is entropy collapse: a query with entropy H spreads its attention
    over about e^H keys, and a tenth of the start (≈ log n for n keys) is n^0.1: 2 of 1,024
    keys. A healthy 4-layer GPT-2 learning to copy kept 0.3 of it (its sharpest layer).
    A residual block's stream (its RMS from ``act_mean`` and ``act_std``) at the end at
    least ``stream_growth`` (100) times its RMS at the first recorded step is stream
    growth: a warning alongside logit growth or entropy collapse, else info (healthy
    GPT-2 runs grew their stream ×10 to ×300 from a 0.02-std initialisation, diverging
    ones ×1000).

    Non-finite. The growth of the total gradient norm over the last recorded steps
    before the first NaN/inf, per step: above ``nonfinite_growth`` the NaN is called the
    end of a blow-up, else a sudden numerical fault. At most ``growth_window`` steps are
    fitted.

    Plateau. Over the last half of the recorded steps (at least ``plateau_min_steps``
    in all), the loss changes by less than ``plateau_tolerance`` of its size while the
    first layer's gradient is below ``plateau_starving`` of the last layer's.

    Initialisation (``bp.check``). Mean field predicts that the gradient's norm changes
    by √(χ1^L) over L layers: outside [``init_ratio_low``, ``init_ratio_high``] a
    warning; beyond their squares an error.

    Through time. ||dh_T/dh_(T−lag)|| at the longest measured lag below
    ``time_vanishing`` is vanishing (``time_vanishing_error`` error), above
    ``time_exploding`` exploding (``time_exploding_error`` error). When the gradient
    that reaches the first state, ||dL/dh_0||, is still at least ``time_vanishing`` of
    the last state's (a loss at every step keeps it flat), vanishing through time is at
    most a warning, and a warning only with a memory horizon below
    ``time_memory_warning`` steps; else info (see :mod:`backprobe.diagnose.through_time`).

    Spikes (the sentinel's every-step values, :mod:`backprobe.diagnose.spikes`). Each
    step is compared with the median and MAD of the ``spike_window`` steps before it, once
    they hold ``spike_warmup`` values. A gradient norm (global or a layer's) is a spike at
    ``spike_ratio`` times its running median and ``spike_z`` robust standard deviations
    (1.4826·MAD) of its logarithm above it; a layer only while its gradient is at least
    ``spike_layer_share`` of the global norm. The samples of a spike step are named when
    the output gradient rose at least ``spike_sample_ratio`` times its running median.
    A spike is a warning unless the run got over it: later in the run the median of
    the loss over some ``spike_recovery`` consecutive steps came back within
    ``spike_recovered`` times the loss's running median before the spike, or only layers
    crossed their bar while the global norm and the loss stayed below ``spike_ratio`` and
    ``spike_recovered`` times their medians. Such a spike, or one a guard acted on, is
    information: it is named, step, layers and samples, but is not what the verdict is
    about. A 50-layer ReLU network with He init trained by SGD spiked ×15 at step 619 of
    1,000, its loss from 0.58 to 2.4, back to 0.8 about 30 steps later, and learned the
    task; a post-LN transformer whose loss stayed at twice its pre-spike level after its
    spike did not, and keeps its warning.
    """

    vanishing_warning: float = 1e-3
    vanishing_error: float = 1e-6
    exploding_warning: float = 1e3
    exploding_error: float = 1e6
    saturation_warning: float = 0.5
    saturation_error: float = 0.9
    dead_warning: float = 0.6
    dead_error: float = 0.95
    lr_too_large: float = 1e-1
    lr_too_large_error: float = 1.0
    lr_too_small: float = 1e-5
    nonfinite_growth: float = 2.0
    growth_window: int = 5
    plateau_min_steps: int = 8
    plateau_tolerance: float = 0.01
    plateau_starving: float = 1e-2
    init_ratio_low: float = 1e-2
    init_ratio_high: float = 1e2
    time_vanishing: float = 1e-3
    time_vanishing_error: float = 1e-6
    time_exploding: float = 1e3
    time_exploding_error: float = 1e6
    time_memory_warning: int = 10
    spike_window: int = 64
    spike_warmup: int = 20
    spike_ratio: float = 10.0
    spike_z: float = 6.0
    spike_sample_ratio: float = 3.0
    spike_layer_share: float = 0.1
    spike_recovery: int = 20
    spike_recovered: float = 1.5
    update_too_large: float = 3e-2
    update_too_large_error: float = 0.3
    update_too_small: float = 1e-5
    trend_window: int = 10
    attn_logit_warning: float = 50.0
    output_logit_warning: float = 30.0
    logit_rise: float = 2.0
    entropy_collapse: float = 0.1
    stream_growth: float = 100.0

    def __post_init__(self) -> None:
        pairs = (
            ("vanishing_error", "vanishing_warning", 1.0),
            ("exploding_warning", "exploding_error", None),
            ("saturation_warning", "saturation_error", 1.0),
            ("dead_warning", "dead_error", 1.0),
            ("lr_too_small", "lr_too_large", None),
            ("lr_too_large", "lr_too_large_error", None),
            ("init_ratio_low", "init_ratio_high", None),
            ("time_vanishing_error", "time_vanishing", 1.0),
            ("time_exploding", "time_exploding_error", None),
            ("update_too_small", "update_too_large", None),
            ("update_too_large", "update_too_large_error", None),
            ("entropy_collapse", "entropy_collapse", 1.0),
        )
        for low, high, cap in pairs:
            a, b = getattr(self, low), getattr(self, high)
            if not (0 < a <= b) or (cap is not None and b > cap):
                raise BackprobeError(
                    f"Expected 0 < {low} ≤ {high}{f' ≤ {cap}' if cap else ''}, but got "
                    f"{low}={a!r}, {high}={b!r}; pass thresholds in that order."
                )
        if self.growth_window < 2 or self.plateau_min_steps < 2:
            raise BackprobeError(
                f"Expected growth_window ≥ 2 and plateau_min_steps ≥ 2, but got "
                f"{self.growth_window} and {self.plateau_min_steps}."
            )
        if self.trend_window < 1 or min(self.logit_rise, self.stream_growth) < 1:
            raise BackprobeError(
                f"Expected trend_window ≥ 1 and logit_rise, stream_growth ≥ 1, but got "
                f"{self.trend_window}, {self.logit_rise!r} and {self.stream_growth!r}."
            )
        if not 2 <= self.spike_warmup <= self.spike_window:
            raise BackprobeError(
                f"Expected 2 ≤ spike_warmup ≤ spike_window, but got {self.spike_warmup} and "
                f"{self.spike_window}: the baseline needs that many steps to judge one."
            )
        if not (
            min(self.spike_ratio, self.spike_sample_ratio) > 1
            and self.spike_z > 0
            and 0 <= self.spike_layer_share <= 1
        ):
            raise BackprobeError(
                f"Expected spike ratios above 1, spike_z > 0 and 0 ≤ spike_layer_share ≤ 1, "
                f"but got spike_ratio={self.spike_ratio!r}, spike_sample_ratio="
                f"{self.spike_sample_ratio!r}, spike_z={self.spike_z!r}, spike_layer_share="
                f"{self.spike_layer_share!r}."
            )
