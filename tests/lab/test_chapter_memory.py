"""Demo chapter 2 (quick): every model's run is stored with time profiles, and the
chapter prints its table, the tanh RNN's time view and a conclusion built from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backprobe import open_run
from backprobe.lab.chapter_memory import CELL_LABELS, MEMORY_QUICK


@pytest.fixture(scope="module")
def chapter(quick_demo):
    """(db, the quick demo's output, chapter 2's result) from the session's quick demo."""
    db, text, results = quick_demo
    return db, text, results[1]


def test_one_stored_run_per_model_and_filler(chapter):
    db, _, result = chapter
    expected = [f"{c}-L{f}" for f in MEMORY_QUICK.fillers for c in CELL_LABELS]
    assert [m.key for m in result.models] == expected
    for model in result.models:
        run = open_run(db, model.run_id)
        assert run.name == f"demo/ch2/{model.key}"
        assert run.status == "finished"
        assert run.recurrent_layers == ["rnn"]
        profile = run.time_profile("rnn")
        assert profile.shape[1] == model.length
        assert np.isfinite(profile[-1]).all()
        assert model.horizon == run.memory_horizon("rnn")[-1]
        assert 0 <= model.accuracy <= 1
        assert model.steps <= MEMORY_QUICK.max_steps


def test_short_sentences_are_learned_even_in_the_quick_version(chapter):
    _, _, result = chapter
    shortest = min(MEMORY_QUICK.fillers)
    for cell in ("lstm", "gru"):
        assert result.model(f"{cell}-L{shortest}").accuracy > 0.9


def test_output_has_the_table_the_time_view_and_the_story(chapter):
    _, out, result = chapter
    assert "accuracy · memory horizon" in out
    longest = max(MEMORY_QUICK.fillers)
    assert "rnn through time at step" in out
    assert f"With {longest} words between the first words and the verb" in out
    rnn = result.model(f"rnn-L{longest}")
    table = out[out.index("accuracy · memory horizon") :]
    row = next(line for line in table.splitlines() if line.strip().startswith("tanh RNN"))
    horizon = f"≥{rnn.length}" if math.isinf(rnn.horizon) else f"{rnn.horizon:.0f}"
    assert f"{rnn.accuracy:.0%} · {horizon:>3}" in row
    assert f"backprobe show demo/ch2/rnn-L{longest} --time" in out


def test_chapters_share_their_context_without_importing_the_demo():
    """demo.py imports the chapters; no chapter (nor their shared module) imports it."""
    import ast
    from pathlib import Path

    import backprobe.lab

    lab = Path(backprobe.lab.__file__).parent
    for module in ("chapter_memory.py", "chapter.py", "training.py"):
        tree = ast.parse((lab / module).read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert "demo" not in imported, module
