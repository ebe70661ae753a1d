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

import torch

__all__ = [
    "AutocompleteTask",
    "Task",
    "autocomplete_task",
    "classification_task",
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
        ValueError: on non-positive sizes, fewer than 2 classes, or a teacher so
            degenerate (few features, a narrow teacher, many classes) that some class
            cannot be given its share of the inputs.

    Returns:
        Task with x_train [n_train, n_features] float32, y_train [n_train] int64,
        x_test [n_test, n_features], y_test [n_test].
    """
    if n_classes < 2:
        raise ValueError(f"Expected n_classes >= 2, got {n_classes}.")
    if min(n_train, n_test, n_features, teacher_width) < 1:
        raise ValueError("Expected positive n_train, n_test, n_features and teacher_width.")
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
            raise ValueError(
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
        ValueError: for ``n < 1`` or ``filler < 0``.
    """
    if n < 1 or filler < 0:
        raise ValueError(f"Expected n >= 1 and filler >= 0, got n={n}, filler={filler}.")
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
