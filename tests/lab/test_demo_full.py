"""The full demo: chapters 1 and 2 over three seeds, chapter 3 on the demo's own seed;
the published direction with margins.

Slow (chapter 1 about 20 s a seed, chapter 2 about 45 s, chapter 3 about 30 s): `make
test-slow` runs it; CI runs the quick versions in test_demo.py, test_chapter_memory.py
and test_chapter_spikes.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from backprobe.lab.demo import run_demo

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_chapter_one_tells_the_seeds_story(tmp_path: Path, seed: int) -> None:
    console = Console(file=io.StringIO(), width=80, color_system=None)
    chapter = run_demo(
        db=tmp_path / "runs.db", quick=False, seed=seed, console=console, chapters=[1]
    )[0]
    short = chapter.model("short-sigmoid")
    deep = chapter.model("deep-sigmoid")
    relu = chapter.model("deep-relu-he")
    # measured 94-96% / 25% / 79-91% over seeds 0-2 (4 classes, chance 25%)
    assert short.accuracy > 0.85
    assert relu.accuracy > 0.70
    assert deep.accuracy < 0.30
    assert deep.verdict.status == "vanishing"
    assert deep.verdict.ratio is not None and deep.verdict.ratio < 1e-30
    assert short.verdict.status == relu.verdict.status == "healthy"
    assert deep.moved_first < 1e-6 < relu.moved_first


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_chapter_two_shows_the_short_memory_of_rnns(tmp_path: Path, seed: int) -> None:
    console = Console(file=io.StringIO(), width=80, color_system=None)
    chapter = run_demo(
        db=tmp_path / "runs.db", quick=False, seed=seed, console=console, chapters=[2]
    )[0]
    rnn, lstm, gru = (chapter.model(f"{cell}-L50") for cell in ("rnn", "lstm", "gru"))
    # measured (seed 0): tanh RNN 51% (chance 50%), horizon 11 of 53 steps; LSTM and GRU
    # 100%, horizon longer than the sentence
    assert rnn.accuracy < 0.6
    assert lstm.accuracy > 0.9 and gru.accuracy > 0.9
    assert rnn.horizon < lstm.horizon and rnn.horizon < gru.horizon
    assert rnn.horizon < rnn.length
    assert chapter.model("rnn-L5").accuracy > 0.9  # short fillers: the RNN learns too


def test_full_chapter_three_post_ln_spikes_and_collapses_where_pre_ln_and_the_guard_do_not(
    tmp_path: Path,
) -> None:
    """The demo's own seed (0), at full size: measured post-LN spike at step 90 and final
    loss 3.10 (best 1.47), pre-LN 1.53, post-LN under the guard 1.52 (actions at 90, 191),
    28 s on a 2-core CPU. Seed 1 of the quick size spiked late (step 139 with the default
    kernels) and the guard's lower rate came too late to keep post-LN learning, so only
    the demo's seed is held to the story."""
    console = Console(file=io.StringIO(), width=80, color_system=None)
    chapter = run_demo(db=tmp_path / "runs.db", quick=False, seed=0, console=console, chapters=[3])[
        0
    ]
    post, pre, guarded = (chapter.model(k) for k in ("post-ln", "pre-ln", "post-ln-guard"))
    assert post.rise > 1.3 and pre.rise < 1.05
    assert post.best_loss < 1.8 and post.final_loss > 2.8
    assert pre.final_loss < 1.8 and guarded.final_loss < 1.8
    assert post.spikes and not pre.spikes
    assert guarded.actions[0] == (post.spikes[0].where["step"], "scale_lr")
