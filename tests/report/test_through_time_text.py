"""The terminal view through time: rows are the run's own numbers, the bound is marked,
and `backprobe show RUN --time` prints it with the memory horizon."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

import backprobe as bp
from backprobe._format import compact_number
from backprobe.cli import app
from backprobe.report.through_time import horizon_line, overlay_bar, time_table


class Reader(nn.Module):
    def __init__(self, kind: nn.Module) -> None:
        super().__init__()
        self.rnn = kind
        self.head = nn.Linear(kind.hidden_size, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _record(db, model, name, T=20, steps=2):
    torch.manual_seed(0)
    x, y = torch.randn(8, T, 3), torch.randint(0, 2, (8,))
    with bp.Probe(model, db=db, name=name) as probe:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            probe.step(loss)
            model.zero_grad()
    return bp.open_run(db, name)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("time") / "runs.db"
    torch.manual_seed(1)
    _record(path, Reader(nn.RNN(3, 6, batch_first=True)), "tanh")
    _record(path, Reader(nn.LSTM(3, 6, batch_first=True)), "lstm")
    _record(path, nn.Sequential(nn.Flatten(), nn.Linear(9, 2), nn.Tanh()), "mlp", T=3)
    return path


def _text(renderable) -> str:
    console = Console(width=140, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_rows_are_the_runs_numbers(db):
    run = bp.open_run(db, "tanh")
    text = _text(time_table(run, "rnn"))
    profile = run.time_profile("rnn")[-1]
    lam, gamma = run.recurrent_theory("rnn")[-1]
    assert f"λ1 = {lam:.3g}" in text
    assert ("vanishing guaranteed" if lam * gamma < 1 else "exploding possible") in text
    first = next(line for line in text.splitlines() if line.strip().startswith("0 "))
    assert compact_number(profile[0], significant=2) in first
    assert compact_number((gamma * lam) ** 19, significant=2) in first  # bound at lag 19
    horizon = run.memory_horizon("rnn")[-1]
    line = horizon_line(run).plain
    assert (f"{horizon:.0f} of 20 steps" if np.isfinite(horizon) else "longer than") in line


def test_gated_layers_show_their_gates_instead_of_a_bound(db):
    run = bp.open_run(db, "lstm")
    text = _text(time_table(run, "rnn"))
    mean = run.history("gate_mean")[-1, run.layer_index("rnn")]
    assert f"memory gate mean {mean:.2f}" in text
    assert "no bound" in text


def test_the_bound_mark_turns_red_when_the_measurement_exceeds_it():
    under = overlay_bar(1e-4, 1e-2, decades=6, width=12)
    over = overlay_bar(1e-1, 1e-3, decades=6, width=12)
    assert "┃" in under.plain and "┃" in over.plain
    assert under.plain.index("┃") > under.plain.rindex("█")  # measurement below the bound
    styles = {str(span.style) for span in over.spans}
    assert "bold red" in styles


def test_horizon_line_is_none_without_recurrent_layers(db):
    assert horizon_line(bp.open_run(db, "mlp")) is None
    assert "rnn" in horizon_line(bp.open_run(db, "tanh")).plain


def test_show_time_on_the_command_line(db):
    runner = CliRunner()
    result = runner.invoke(app, ["show", "tanh", "--db", str(db), "--time"])
    assert result.exit_code == 0, result.output
    assert "rnn through time at step 1" in result.output
    assert "memory horizon" in result.output
    plain = runner.invoke(app, ["show", "mlp", "--db", str(db), "--time"])
    assert plain.exit_code == 0, plain.output
    assert "no time profiles" in plain.output


@pytest.mark.parametrize("time", [False, True], ids=["summary", "with-time"])
def test_show_prints_the_memory_horizon_once(db, time):
    """Regression: `show --time` printed it under the summary, under each time table and
    after them."""
    args = ["show", "tanh", "--db", str(db)] + (["--time"] if time else [])
    result = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert result.output.count("memory horizon") == 1
    if time:  # after the tables, whose rows it sums up
        assert result.output.index("memory horizon") > result.output.index("through time")


def test_the_through_time_header_wraps_at_the_terminal_not_at_the_table(db):
    """Regression: the header was the table's title, wrapped at the table's 70 columns."""
    run = bp.open_run(db, "tanh")
    console = Console(width=120, record=True, color_system=None)
    console.print(time_table(run, "rnn"))
    heading = console.export_text().splitlines()[0]
    assert heading.startswith("rnn through time at step 1 — λ1 = ")
    assert heading.rstrip().endswith(("vanishing guaranteed", "exploding possible"))
    assert len(heading.rstrip()) > 70
