"""Synthetic tasks for the lab: small, seeded, generated in a few milliseconds.

Every generator draws from its own ``torch.Generator`` seeded by ``seed`` (the global RNG
is untouched), so a task is a pure function of its arguments.

The demo needs a task that a short network learns in a few hundred plain-SGD steps, so
that a deep network failing on it can only be blamed on its depth. Labels come from a
fixed random *teacher* network: a one-hidden-layer tanh MLP. Its decision boundaries are
curved (no linear model is perfect) but smooth, so a 3-hidden-layer student gets close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import LabConfigError

__all__ = [
    "AutocompleteTask",
    "InsuranceTask",
    "SequenceTask",
    "Task",
    "adding_task",
    "autocomplete_task",
    "classification_task",
    "copy_task",
    "insurance_task",
    "latch_task",
    "mackey_glass",
    "markov_text",
    "temporal_order_task",
]


@dataclass(frozen=True)
class Task:
    """A classification task split into train and test sets.

    Attributes:
        x_train: float32 [n_train, n_features], standard normal inputs.
        y_train: int64 [n_train], labels in ``0 … n_classes-1``.
        x_test: float32 [n_test, n_features].
        y_test: int64 [n_test].
        n_classes: number of classes; a model that ignores its input scores about
            ``1 / n_classes`` on the (balanced) test set: chance.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def chance(self) -> float:
        """Accuracy of a constant guess on a balanced test set."""
        return 1.0 / self.n_classes


def _teacher(
    n_features: int, n_classes: int, hidden: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights of the teacher, drawn from ``g``: (W1 [F, H], b1 [H], W2 [H, C])."""
    # Pre-activations of unit std (inputs are N(0, I)), so tanh is used in its curved
    # part: neither linear (too easy) nor saturated (a step function, jagged boundaries).
    w1 = torch.randn(n_features, hidden, generator=g) / math.sqrt(n_features)
    b1 = 0.5 * torch.randn(hidden, generator=g)
    w2 = torch.randn(hidden, n_classes, generator=g) / math.sqrt(hidden)
    return w1, b1, w2


def classification_task(
    n_train: int = 8192,
    n_test: int = 2048,
    n_features: int = 6,
    n_classes: int = 4,
    seed: int = 0,
    teacher_width: int = 6,
) -> Task:
    """A balanced ``n_classes``-way classification task labelled by a random teacher.

    Inputs are ``x ~ N(0, I)`` in ``n_features`` dimensions; the label of ``x`` is
    ``argmax(tanh(x W1 + b1) W2 + c)`` for teacher weights drawn from ``seed``. The
    class offsets ``c`` are fitted on a large pool so that every class holds about
    ``1 / n_classes`` of the inputs; the train and test sets are then drawn class by
    class from that pool, so both are exactly balanced (up to ``n % n_classes``) and
    chance accuracy is exactly ``1 / n_classes``.

    Everything is vectorised and deterministic given ``seed`` (its own
    ``torch.Generator``; the global RNG is untouched). The defaults are the demo's
    chapter 1 task: a 3-hidden-layer MLP trained with SGD reaches 89-96% test accuracy
    on it in 1000 steps (seeds 0-5), an Adam-trained one ~95-97%; chance is 25%.

    Raises:
        LabConfigError: on non-positive sizes, fewer than 2 classes, or a teacher so
            degenerate (few features, a narrow teacher, many classes) that some class
            cannot be given its share of the inputs.

    Returns:
        Task with x_train [n_train, n_features] float32, y_train [n_train] int64,
        x_test [n_test, n_features], y_test [n_test].
    """
    if n_classes < 2:
        raise LabConfigError(f"Expected n_classes >= 2, got {n_classes}.")
    if min(n_train, n_test, n_features, teacher_width) < 1:
        raise LabConfigError(
            "Expected positive n_train, n_test, n_features and teacher_width, got "
            f"{n_train=}, {n_test=}, {n_features=}, {teacher_width=}."
        )
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    # A pool large enough that even after balancing every class has n / C members.
    pool = torch.randn(4 * n + 256 * n_classes, n_features, generator=g)
    w1, b1, w2 = _teacher(n_features, n_classes, teacher_width, g)
    logits = torch.tanh(pool @ w1 + b1) @ w2
    # Fit class offsets so that every class wins about 1/C of the pool: gradient ascent
    # on the (concave) dual of "assign the pool to classes in equal shares", i.e. raise
    # the offset of classes that win too rarely, lower it for those that win too often.
    offset = torch.zeros(n_classes)
    # Diminishing steps: the dual is piecewise linear, and a fixed step can oscillate.
    scale = float(logits.std())
    for t in range(300):
        share = torch.bincount((logits + offset).argmax(1), minlength=n_classes) / len(pool)
        if float((share * n_classes - 1.0).abs().max()) < 0.02:
            break
        offset += scale * (1.0 / n_classes - share) * n_classes / (1.0 + 0.1 * t) ** 0.5
    labels = (logits + offset).argmax(1)

    # Draw n / C examples per class (a permutation keeps the draw random), then shuffle.
    per_class = [n // n_classes + (c < n % n_classes) for c in range(n_classes)]
    order = torch.randperm(len(pool), generator=g)
    picked = []
    for c, k in enumerate(per_class):
        members = order[labels[order] == c]
        if members.numel() < k:  # a degenerate teacher, e.g. 2 features and 10 classes
            raise LabConfigError(
                f"The teacher of seed {seed} gives class {c} only {members.numel()} of the "
                f"{k} inputs it needs: use more features, a wider teacher or fewer classes."
            )
        picked.append(members[:k])
    chosen = torch.cat(picked)
    chosen = chosen[torch.randperm(chosen.numel(), generator=g)]
    x, y = pool[chosen].contiguous(), labels[chosen].contiguous()
    # Train and test each balanced: split every class proportionally.
    test_mask = torch.zeros(n, dtype=torch.bool)
    for c in range(n_classes):
        idx = torch.nonzero(y == c).flatten()
        k = round(idx.numel() * n_test / n)
        test_mask[idx[:k]] = True
    # Rounding may leave the split a few examples off; move the surplus deterministically.
    surplus = int(test_mask.sum()) - n_test
    if surplus > 0:
        test_mask[torch.nonzero(test_mask).flatten()[:surplus]] = False
    elif surplus < 0:
        test_mask[torch.nonzero(~test_mask).flatten()[:-surplus]] = True
    return Task(
        x_train=x[~test_mask],
        y_train=y[~test_mask],
        x_test=x[test_mask],
        y_test=y[test_mask],
        n_classes=n_classes,
    )


# --- The seeds' autocomplete example ------------------------------------------------------

# Two-word time markers, four per class, so that the class is not one token's identity
# alone. "today ," and "yesterday ," share their second word, "last month" and "last year"
# their first: the network must read the marker, not a single fixed position's word.
_PRESENT_MARKERS: tuple[tuple[str, str], ...] = (
    ("today", ","),
    ("right", "now"),
    ("this", "week"),
    ("these", "days"),
)
_PAST_MARKERS: tuple[tuple[str, str], ...] = (
    ("last", "month"),
    ("last", "year"),
    ("back", "then"),
    ("yesterday", ","),
)
# The words in between: the seeds' "due to my current job situation and family condition"
# and more of its kind. None of them says anything about time, so they carry no class.
_FILLER_WORDS: tuple[str, ...] = (
    "due", "to", "my", "current", "job", "situation", "and", "family", "condition",
    "the", "bank", "rent", "car", "house", "so", "much", "work", "money", "after", "all",
    "of", "a", "big", "small",
)  # fmt: skip
_VERBS: tuple[str, str] = ("need", "had")
_SUBJECT = "i"
_AUTOCOMPLETE_VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(
        [w for m in _PRESENT_MARKERS + _PAST_MARKERS for w in m] + list(_FILLER_WORDS) + [_SUBJECT]
    )
)


@dataclass(frozen=True)
class AutocompleteTask:
    """Sentences whose last word depends on their first words, with filler in between.

    Attributes:
        x: int64 [n, filler + 3] token ids: a two-word time marker, ``filler`` filler
            words, then "i" — the point where the verb must be predicted.
        y: int64 [n], the verb class: 0 = "need" (a present marker such as "today"),
            1 = "had" (a past marker such as "last month").
        vocab: the word of each token id (``vocab[x[i, t]]``).
        n_classes: 2.
        chance: accuracy of a constant guess: 0.5 (the classes are balanced).
    """

    x: torch.Tensor
    y: torch.Tensor
    vocab: tuple[str, ...]
    n_classes: int = 2
    chance: float = 0.5
    verbs: tuple[str, ...] = _VERBS

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def length(self) -> int:
        """Tokens per sentence, T."""
        return int(self.x.shape[1])

    def sentence(self, i: int) -> str:
        """Sentence ``i`` as words with its verb, e.g. "today , due to my … i need"."""
        words = [self.vocab[int(t)] for t in self.x[i]]
        return " ".join([*words, self.verbs[int(self.y[i])]])


def autocomplete_task(n: int, filler: int, *, seed: int = 0) -> AutocompleteTask:
    """The seeds' autocomplete example: "today … i need" against "last month … i had".

    Each sentence opens with one of four present or four past two-word time markers
    (the class, balanced: exactly ``n // 2`` of each, up to one), continues with
    ``filler`` words drawn uniformly and independently from 24 time-neutral words, and
    ends with "i". The verb to predict after "i" is "need" (class 0) for a present marker
    and "had" (class 1) for a past one. Only the first two tokens carry the class, so a
    model must carry that information across ``filler + 1`` steps: with a long filler,
    a plain RNN's gradient from the verb back to the marker vanishes and it stays at
    chance (0.5), while an LSTM or GRU can learn it.

    Returns:
        AutocompleteTask with x int64 [n, filler + 3] and y int64 [n].

    Raises:
        LabConfigError: for ``n < 1`` or ``filler < 0``.
    """
    if n < 1 or filler < 0:
        raise LabConfigError(f"Expected n >= 1 and filler >= 0, got n={n}, filler={filler}.")
    g = torch.Generator().manual_seed(seed)
    index = {w: i for i, w in enumerate(_AUTOCOMPLETE_VOCAB)}
    # markers [2, 4, 2]: class, variant, word → token id.
    markers = torch.tensor(
        [[[index[w] for w in m] for m in ms] for ms in (_PRESENT_MARKERS, _PAST_MARKERS)]
    )
    fillers = torch.tensor([index[w] for w in _FILLER_WORDS])
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    variant = torch.randint(0, markers.shape[1], (n,), generator=g)
    head = markers[y, variant]  # [n, 2]
    body = fillers[torch.randint(0, len(fillers), (n, filler), generator=g)]  # [n, filler]
    tail = torch.full((n, 1), index[_SUBJECT])
    x = torch.cat([head, body, tail], dim=1)
    return AutocompleteTask(x=x.contiguous(), y=y.contiguous(), vocab=_AUTOCOMPLETE_VOCAB)


# --- The seeds' insurance network ------------------------------------------------------------

INSURANCE_FEATURES: tuple[str, ...] = ("age", "education", "income", "savings")
# How much each hidden factor contributes to the decision: the seeds' "awareness
# contributes 20 percent to the final output, affordability 80 percent".
_AWARENESS_SHARE, _AFFORDABILITY_SHARE = 0.2, 0.8
# Sharpness of the decision: logit = _SHARPNESS · (0.2·awareness + 0.8·affordability − c).
_SHARPNESS = 8.0


@dataclass(frozen=True)
class InsuranceTask(Task):
    """The seeds' insurance data: (age, education, income, savings) → buys insurance.

    Inputs are standardised (zero mean, unit std over the whole draw) so that a network
    with default init sees them at a sensible scale; ``raw_*`` keep them in their units
    (years, years of education, thousand per year, thousand). ``awareness_*`` and
    ``affordability_*`` [n] are the hidden factors that produced the labels, in [-1, 1];
    ``bayes`` is the accuracy of the true probabilities, the ceiling of any model.
    """

    raw_train: torch.Tensor | None = None
    raw_test: torch.Tensor | None = None
    awareness_train: torch.Tensor | None = None
    awareness_test: torch.Tensor | None = None
    affordability_train: torch.Tensor | None = None
    affordability_test: torch.Tensor | None = None
    bayes: float = 1.0
    majority: float = 0.5

    @property
    def chance(self) -> float:
        """Accuracy of always predicting the more common answer."""
        return self.majority


def insurance_task(n_train: int = 4096, n_test: int = 2048, *, seed: int = 0) -> InsuranceTask:
    """Who buys insurance, decided through two hidden factors (the seeds' first picture).

    Draws (independently, from ``seed``): age ~ U[18, 70] years, education ~ U[8, 20]
    years, income ~ log-normal (median 60k, σ_log 0.5), savings ~ log-normal (median
    20k, σ_log 1.0). The hidden factors, each in [-1, 1]:

    - awareness = tanh(0.8·z(age) + 0.6·z(education)) — age and education make people
      aware of insurance;
    - affordability = tanh(0.7·z(log income) + 0.7·z(log savings)) — money makes it
      affordable;

    where z standardises with the distribution's own mean and std (known in closed form,
    so train and test share it). A person buys with probability
    σ(8·(0.2·awareness + 0.8·affordability)): affordability weighs four times as much as
    awareness, as in the seeds. Labels are Bernoulli draws, so even the true rule is not
    perfect: ``bayes`` (≈ 0.9) is the best accuracy achievable.

    Returns:
        InsuranceTask with x_* float32 [n, 4] (standardised), y_* int64 [n] (1 = buys).
    """
    if min(n_train, n_test) < 1:
        raise LabConfigError(f"Expected positive n_train and n_test, got {n_train}, {n_test}.")
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    u = torch.rand(n, 2, generator=g)
    age = 18.0 + 52.0 * u[:, 0]
    education = 8.0 + 12.0 * u[:, 1]
    logs = torch.randn(n, 2, generator=g)
    log_income = math.log(60.0) + 0.5 * logs[:, 0]
    log_savings = math.log(20.0) + 1.0 * logs[:, 1]
    # z-scores with the distributions' own moments (U[a, b]: std (b − a)/√12).
    z_age = (age - 44.0) / (52.0 / math.sqrt(12.0))
    z_edu = (education - 14.0) / (12.0 / math.sqrt(12.0))
    z_inc = (log_income - math.log(60.0)) / 0.5
    z_sav = (log_savings - math.log(20.0)) / 1.0
    awareness = torch.tanh(0.8 * z_age + 0.6 * z_edu)
    affordability = torch.tanh(0.7 * z_inc + 0.7 * z_sav)
    p = torch.sigmoid(
        _SHARPNESS * (_AWARENESS_SHARE * awareness + _AFFORDABILITY_SHARE * affordability)
    )
    y = (torch.rand(n, generator=g) < p).long()
    raw = torch.stack([age, education, log_income.exp(), log_savings.exp()], dim=1)
    x = torch.stack([z_age, z_edu, z_inc, z_sav], dim=1)
    bayes = float(torch.maximum(p, 1 - p)[n_train:].mean())
    majority = float(torch.maximum(y[n_train:].float().mean(), 1 - y[n_train:].float().mean()))
    tr, te = slice(0, n_train), slice(n_train, n)
    return InsuranceTask(
        x_train=x[tr].contiguous(),
        y_train=y[tr].contiguous(),
        x_test=x[te].contiguous(),
        y_test=y[te].contiguous(),
        n_classes=2,
        raw_train=raw[tr],
        raw_test=raw[te],
        awareness_train=awareness[tr],
        awareness_test=awareness[te],
        affordability_train=affordability[tr],
        affordability_test=affordability[te],
        bayes=bayes,
        majority=majority,
    )


# --- Long-range sequence tasks --------------------------------------------------------------

LossKind = Literal["mse", "cross_entropy"]


@dataclass(frozen=True)
class SequenceTask:
    """A batch of sequences and their targets.

    Attributes:
        x: the inputs, float32 [n, T, n_inputs] (features per step) or int64 [n, T]
            (token ids below ``n_inputs``; ``tokens`` is then True).
        y: the targets: float32 [n, n_out] (regression at the end), int64 [n] (one class
            at the end) or int64 [n, T] (a class per step; ``per_step`` is then True).
        n_inputs: features per step, or vocabulary size for token input.
        n_out: outputs the model needs: regression targets or classes.
        loss: "mse" or "cross_entropy", the loss the baseline is measured in.
        baseline: that loss for the best predictor that ignores the input's content
            (the task's own mean, prior or memoryless guess): the number to beat.
        chance: accuracy of the best input-blind guess for classification, else None.
    """

    x: torch.Tensor
    y: torch.Tensor
    n_inputs: int
    n_out: int
    loss: LossKind
    baseline: float
    chance: float | None = None
    tokens: bool = False
    per_step: bool = False

    @property
    def length(self) -> int:
        """Steps per sequence, T."""
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _positions(n: int, lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    """n positions drawn uniformly from [lo, hi), int64 [n]."""
    return torch.randint(lo, hi, (n,), generator=g)


def adding_task(n: int, length: int, *, seed: int = 0) -> SequenceTask:
    """The adding problem (Hochreiter & Schmidhuber 1997; the Le et al. 2015 variant).

    Each step has two channels: a value ~ U[0, 1] and a marker, 1 at exactly two steps —
    one in the first half [0, T/2), one in the second [T/2, T) — and 0 elsewhere. The
    target is the sum of the two marked values. Predicting its mean (1) gives MSE =
    Var(U + U') = 2/12 ≈ 0.167: the baseline.

    Returns:
        SequenceTask with x float32 [n, T, 2], y float32 [n, 1].
    """
    if n < 1 or length < 2:
        raise LabConfigError(f"Expected n >= 1 and length >= 2, got n={n}, length={length}.")
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=g)
    half = length // 2
    first = _positions(n, 0, half, g)
    second = _positions(n, half, length, g)
    rows = torch.arange(n)
    marks = torch.zeros(n, length)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return SequenceTask(
        x=torch.stack([values, marks], dim=2),
        y=y,
        n_inputs=2,
        n_out=1,
        loss="mse",
        baseline=2.0 / 12.0,
    )


COPY_SYMBOLS = 8
COPY_LENGTH = 10


def copy_task(n: int, delay: int, *, seed: int = 0, count: int = COPY_LENGTH) -> SequenceTask:
    """Copy memory (Arjovsky et al. 2016): remember ``count`` (10) symbols across ``delay``.

    Tokens: 0 blank, 1 … 8 symbols, 9 the "go" marker. An input is ``count`` symbols drawn
    uniformly from 1 … 8, ``delay − 1`` blanks, the marker, then ``count`` blanks
    (T = delay + 2·count steps). The target is blank for the first ``delay + count``
    steps and the symbols for the last ``count``. A memoryless model predicts blank, then
    uniform over the 8 symbols: cross-entropy ``count·ln 8 / T`` per step (0.173 at
    delay 100 with 10 symbols), the baseline.

    Returns:
        SequenceTask with x int64 [n, T] (vocabulary 10), y int64 [n, T] (9 classes),
        ``per_step``.
    """
    if n < 1 or delay < 1 or count < 1:
        raise LabConfigError(
            f"Expected n >= 1, delay >= 1 and count >= 1, got n={n}, delay={delay}, count={count}."
        )
    g = torch.Generator().manual_seed(seed)
    length = delay + 2 * count
    symbols = torch.randint(1, COPY_SYMBOLS + 1, (n, count), generator=g)
    x = torch.zeros(n, length, dtype=torch.long)
    x[:, :count] = symbols
    x[:, delay + count - 1] = COPY_SYMBOLS + 1
    y = torch.zeros(n, length, dtype=torch.long)
    y[:, -count:] = symbols
    return SequenceTask(
        x=x,
        y=y,
        n_inputs=COPY_SYMBOLS + 2,
        n_out=COPY_SYMBOLS + 1,
        loss="cross_entropy",
        baseline=count * math.log(COPY_SYMBOLS) / length,
        tokens=True,
        per_step=True,
    )


TEMPORAL_DISTRACTORS = 4
# Where the information symbols sit, as fractions of L: Hochreiter & Schmidhuber 1997
# experiment 6a (two symbols) and 6b (three), as used by Pascanu et al. 2013.
_ORDER_WINDOWS: dict[int, tuple[tuple[float, float], ...]] = {
    2: ((0.1, 0.2), (0.5, 0.6)),
    3: ((0.1, 0.2), (0.3, 0.4), (0.6, 0.7)),
}


def temporal_order_task(n: int, length: int, *, symbols: int = 2, seed: int = 0) -> SequenceTask:
    """Temporal order (Hochreiter & Schmidhuber 1997 exp. 6; Pascanu et al. 2013 §4.1).

    A sequence of ``length`` random distractor tokens (ids 2 … 5) with ``symbols`` (2 or 3)
    information tokens, each A (id 0) or B (id 1), at positions drawn from
    [0.1L, 0.2L), [0.5L, 0.6L) (two) or [0.1L, 0.2L), [0.3L, 0.4L), [0.6L, 0.7L) (three).
    The class is the ordered tuple read as a binary number (AA = 0, AB = 1, BA = 2, BB = 3
    for two symbols; 8 classes for three), uniform, so chance is 1/4 (1/8) and the
    input-blind loss ln 4 (ln 8).

    Returns:
        SequenceTask with x int64 [n, length] (vocabulary 6), y int64 [n].
    """
    if symbols not in _ORDER_WINDOWS:
        raise LabConfigError(f"Expected symbols 2 or 3 (the patterns defined), got {symbols}.")
    if n < 1 or length < 10:
        raise LabConfigError(f"Expected n >= 1 and length >= 10, got n={n}, length={length}.")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 2 + TEMPORAL_DISTRACTORS, (n, length), generator=g)
    bits = torch.randint(0, 2, (n, symbols), generator=g)
    rows = torch.arange(n)
    for k, (lo, hi) in enumerate(_ORDER_WINDOWS[symbols]):
        a, b = int(lo * length), int(hi * length)
        x[rows, _positions(n, a, max(b, a + 1), g)] = bits[:, k]
    weights = 2 ** torch.arange(symbols - 1, -1, -1)
    n_classes = 2**symbols
    return SequenceTask(
        x=x,
        y=(bits * weights).sum(1),
        n_inputs=2 + TEMPORAL_DISTRACTORS,
        n_out=n_classes,
        loss="cross_entropy",
        baseline=math.log(n_classes),
        chance=1.0 / n_classes,
        tokens=True,
    )


def latch_task(
    n: int, length: int, *, info: int = 3, noise: float = 0.2, seed: int = 0
) -> SequenceTask:
    """The latch / 2-sequence problem (Bengio, Simard & Frasconi 1994).

    Only the first ``info`` steps carry the class: +1 (class 1) or −1 (class 0), plus
    Gaussian noise of std ``noise``; the remaining ``length − info`` steps are pure noise
    N(0, noise²). The class must be latched for the whole sequence and read at the end;
    classes are balanced, chance 0.5, input-blind loss ln 2.

    Returns:
        SequenceTask with x float32 [n, length, 1], y int64 [n].
    """
    if n < 1 or info < 1 or length <= info or noise < 0:
        raise LabConfigError(
            f"Expected n >= 1, 1 <= info < length and noise >= 0, got n={n}, "
            f"length={length}, info={info}, noise={noise}."
        )
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    x = noise * torch.randn(n, length, 1, generator=g)
    x[:, :info, 0] += (2.0 * y - 1.0).unsqueeze(1).float()
    return SequenceTask(
        x=x,
        y=y,
        n_inputs=1,
        n_out=2,
        loss="cross_entropy",
        baseline=math.log(2.0),
        chance=0.5,
    )


def mackey_glass(
    n: int,
    *,
    tau: float = 17.0,
    a: float = 0.2,
    b: float = 0.1,
    power: float = 10.0,
    x0: float = 1.2,
    step: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """The Mackey-Glass series, dx/dt = a·x(t−τ) / (1 + x(t−τ)^power) − b·x(t).

    Integrated by classical RK4 with step ``step``; the delayed value at the half step is
    the mean of its neighbours. The history before t = 0 (τ/step values) is
    ``x0 + 0.2·(U − 0.5)`` drawn from ``seed``, as reservoirpy does, and x(0) = x0.
    With τ = 17 the series is chaotic and stays within about [0.2, 1.4].

    Returns:
        float64 [n], x at t = 0, step, 2·step, ….
    """
    lag = round(tau / step)
    if n < 1 or lag < 1 or step <= 0:
        raise LabConfigError(f"Expected n >= 1 and tau >= step > 0, got {n=}, {tau=}, {step=}.")
    g = torch.Generator().manual_seed(seed)
    history = x0 + 0.2 * (torch.rand(lag, generator=g, dtype=torch.float64) - 0.5)
    xs = [*history.tolist(), x0]

    def f(x: float, delayed: float) -> float:
        return a * delayed / (1.0 + delayed**power) - b * x

    for i in range(lag, lag + n - 1):  # sequential by nature: a delay equation
        d0, d1 = xs[i - lag], xs[i - lag + 1]
        dm = 0.5 * (d0 + d1)
        x = xs[i]
        k1 = f(x, d0)
        k2 = f(x + 0.5 * step * k1, dm)
        k3 = f(x + 0.5 * step * k2, dm)
        k4 = f(x + step * k3, d1)
        xs.append(x + step * (k1 + 2 * k2 + 2 * k3 + k4) / 6.0)
    return torch.tensor(xs[lag:], dtype=torch.float64)


# --- Language modelling -------------------------------------------------------------------


def markov_text(
    n: int, length: int, *, vocab: int = 32, sharpness: float = 3.0, seed: int = 0
) -> torch.Tensor:
    """Token sequences of a first-order Markov chain: a language a small transformer
    learns in a few hundred steps.

    The transition matrix is the same for every ``seed`` (rows ``softmax(sharpness · z)``,
    z standard normal from a fixed generator), so that all seeds speak one language:
    a model that ignores its context predicts the tokens' overall frequencies (a loss
    near 3.1 nats at the default sizes), one that reads the previous token reaches the
    chain's entropy (about 1.5 nats). ``seed`` draws the sequences.

    Returns:
        int64 [n, length + 1]: inputs are ``[:, :-1]``, next-token targets ``[:, 1:]``.
    """
    if n < 1 or length < 1 or vocab < 2 or sharpness <= 0:
        raise LabConfigError(
            f"Expected n >= 1, length >= 1, vocab >= 2 and sharpness > 0, got {n=}, "
            f"{length=}, {vocab=}, {sharpness=}."
        )
    language = torch.Generator().manual_seed(1234)
    transitions = torch.softmax(sharpness * torch.randn(vocab, vocab, generator=language), -1)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.empty(n, length + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab, (n,), generator=g)
    for t in range(length):  # sequential by nature: each token depends on the previous
        tokens[:, t + 1] = torch.multinomial(transitions[tokens[:, t]], 1, generator=g)[:, 0]
    return tokens
