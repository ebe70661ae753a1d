"""Demo chapter 3 (quick): post-LN spikes and collapses under the warm-up schedule that
pre-LN trains through, the spike finding names its step and layers, and the guard's
lower learning rate keeps post-LN learning. Every run is stored with its sentinel."""

from __future__ import annotations

import numpy as np
import pytest

from backprobe import open_run
from backprobe.errors import LabConfigError
from backprobe.lab.chapter_spikes import SPECS, SPIKES_QUICK, SpikeSetup
from backprobe.lab.tasks import markov_text

#: Loss (nats) of a model that predicts the tokens' frequencies only; the chain's own
#: entropy, what a model reading the previous token reaches, is about 1.5.
UNIGRAM_LOSS = 3.1


@pytest.fixture(scope="module")
def chapter(quick_demo):
    """(db, the quick demo's output, chapter 3's result) from the session's quick demo."""
    db, text, results = quick_demo
    return db, text, results[2]


def test_each_model_is_a_stored_run_with_every_step_in_its_sentinel(chapter):
    db, _, result = chapter
    assert [m.key for m in result.models] == [s.key for s in SPECS]
    for model in result.models:
        run = open_run(db, model.run_id)
        assert run.name == f"demo/ch3/{model.key}" and run.status == "finished"
        assert run.sentinel.steps.tolist() == list(range(SPIKES_QUICK.steps))


def test_post_ln_gradients_grow_toward_the_output_and_pre_lns_do_not(chapter):
    _, _, result = chapter
    post, pre = result.model("post-ln"), result.model("pre-ln")
    assert post.rise > 1.2 and pre.rise < 1.05
    assert post.block_grads[-1] > 1.5 * pre.block_grads[-1]


def test_post_ln_spikes_and_collapses_where_pre_ln_and_the_guard_keep_learning(chapter):
    _, _, result = chapter
    post, pre, guarded = (result.model(s.key) for s in SPECS)
    assert post.best_loss < 2.0 and post.final_loss > UNIGRAM_LOSS - 0.3
    assert pre.final_loss < 2.0 and guarded.final_loss < 2.0
    # the spike comes as the learning rate nears its peak, and names the layers
    assert post.spikes and not pre.spikes
    step = post.spikes[0].where["step"]
    assert SPIKES_QUICK.warmup // 2 < step < SPIKES_QUICK.steps
    assert post.spikes[0].where["layers"]
    # the guard lowered the learning rate at the spike the unguarded twin had
    assert guarded.actions and guarded.actions[0] == (step, "scale_lr")


def test_the_story_names_the_spike_and_the_cure_in_80_columns(chapter):
    _, text, result = chapter
    post = result.model("post-ln")
    assert "Chapter 3: a transformer that spikes" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "gradient norm per block at initialisation" in text
    assert f"Post-LN spiked at step {post.spikes[0].where['step']}" in text
    assert "backprobe show demo/ch3/post-ln" in text


def test_the_markov_text_is_one_language_drawn_by_seed():
    a, b = markov_text(64, 16, seed=0), markov_text(64, 16, seed=1)
    assert a.shape == (64, 17) and a.dtype.is_floating_point is False
    assert not np.array_equal(a.numpy(), b.numpy())
    assert np.array_equal(a.numpy(), markov_text(64, 16, seed=0).numpy())
    # one transition matrix for every seed: the next-token statistics agree
    pairs = [
        np.bincount((t[:, :-1] * 32 + t[:, 1:]).ravel().numpy(), minlength=1024)
        for t in (markov_text(4000, 16, seed=2), markov_text(4000, 16, seed=3))
    ]
    a_rows, b_rows = (p.reshape(32, 32) / p.reshape(32, 32).sum(1, keepdims=True) for p in pairs)
    assert np.abs(a_rows - b_rows).max() < 0.1
    with pytest.raises(LabConfigError, match="length >= 1"):
        markov_text(4, 0)


def test_the_learning_rate_warms_up_linearly_then_holds():
    setup = SpikeSetup(steps=10, warmup=4, peak_lr=0.02)
    assert [setup.lr(s) for s in range(6)] == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02, 0.02])
