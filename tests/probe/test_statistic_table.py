"""The one table of stored per-layer statistics: every entry is gathered, reduced, stored
and read back, and every device reduction feeds an entry. Adding a statistic with a part
missing fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backprobe import Probe, open_run
from backprobe.errors import BackprobeError
from backprobe.probe import stats
from backprobe.probe.stats import STATISTIC_FIELDS, TOTALLED_FIELDS, Field
from backprobe.probe.updates import UPDATE_STATISTICS
from backprobe.store.statistics import LAYER_SERIES, LAYER_STATISTICS, Combine, LayerStatistic
from backprobe.store.view import ALL_SERIES, STEP_SERIES

#: Fields gathered for other uses than a per-layer statistic.
NOT_PER_LAYER = {Field.LOSS, Field.SCALE, Field.EXTRA}


class EveryKind(nn.Module):
    """Layers that give every statistic a value: parameters, a saturating and a
    ReLU-family activation (dead units), attention, and an LSTM (memory gates)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.tanh = nn.Tanh()
        self.relu = nn.ReLU()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm = nn.LSTM(8, 5, batch_first=True)
        self.out = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.tanh(self.inp(x)) - 0.5)  # shifted: some units die
        seq, _ = self.lstm(h + self.attn(h, h, h)[0])
        return self.out(seq[:, -1])


class SeriesSink:
    """A StepSink keeping the series of each recorded step."""

    def __init__(self) -> None:
        self.series: list[dict[str, np.ndarray]] = []

    def watch(self, modules) -> None:
        pass

    def set_layers(self, layers) -> None:
        pass

    def append(self, step, series, profiles=None) -> None:
        self.series.append(dict(series))

    def flush(self) -> None:
        pass

    def close(self, status, error=None) -> None:
        pass


def _record(tmp_path, steps: int = 2):
    torch.manual_seed(0)
    model = EveryKind()
    sink = SeriesSink()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = Probe(model, db=tmp_path / "runs.db", sinks=[sink], optimizer=opt)
    with probe:
        for _ in range(steps):
            loss = model(torch.randn(6, 4, 3)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            opt.step()
            model.zero_grad()
    return probe, sink


def test_every_stored_statistic_is_produced_with_a_value_and_read_back(tmp_path):
    probe, sink = _record(tmp_path)
    n_layers = len(probe.layers)
    for series in sink.series:
        # the probe hands on exactly the stored series: every table entry, nothing else
        assert set(series) == set(LAYER_SERIES) | set(STEP_SERIES)
        for name in LAYER_SERIES:
            values = series[name]
            assert values.shape == (n_layers,), name
            # a value somewhere: the reduction behind the entry ran (the optimizer's
            # update is measured after the step is handed on: read back below)
            assert name in UPDATE_STATISTICS or np.isfinite(values).any(), name
    stored = open_run(tmp_path / "runs.db", probe.run_id)
    for name in LAYER_SERIES:
        live = probe.history(name)
        assert live.shape == (2, n_layers), name
        assert np.isfinite(live).any(), name
        np.testing.assert_array_equal(live, stored.history(name), err_msg=name)
        # the readers list it
        assert name in ALL_SERIES


def test_the_reduction_gives_every_entry_and_only_those(monkeypatch, make_probe):
    reduced: list[stats.StepStats] = []
    reduce = stats.HostStep.reduce

    def spy(self, *args, **kwargs):
        reduced.append(reduce(self, *args, **kwargs))
        return reduced[-1]

    monkeypatch.setattr(stats.HostStep, "reduce", spy)
    model = EveryKind()
    probe = make_probe(model)
    with probe:
        model(torch.randn(2, 4, 3)).sum().backward()
        probe.step()
    assert list(reduced[0].per_layer) == list(LAYER_SERIES)


def test_every_device_reduction_feeds_a_statistic_and_every_read_is_gathered():
    read = {f for _, fields in STATISTIC_FIELDS for f in fields}
    assert read == set(Field) - NOT_PER_LAYER
    # torch.distributed totals what the statistics read, and the loss
    assert read | {Field.LOSS} == TOTALLED_FIELDS
    assert [stat for stat, _ in STATISTIC_FIELDS] == list(LAYER_STATISTICS)
    assert len(set(LAYER_SERIES)) == len(LAYER_SERIES)


def test_an_entry_naming_the_wrong_number_of_quantities_is_refused():
    with pytest.raises(BackprobeError, match="SPREAD reads 2 gathered quantities"):
        LayerStatistic("spread_of_nothing", Combine.SPREAD, ("OUT_SUM",))
    with pytest.raises(BackprobeError, match="GATE_MEAN reads 0"):
        LayerStatistic("gate", Combine.GATE_MEAN, ("OUT_SUM",))


def test_an_entry_reading_an_ungathered_quantity_is_refused():
    entry = LayerStatistic("curvature", Combine.MEAN, ("OUT_CURVATURE",))
    with pytest.raises(BackprobeError, match="OUT_CURVATURE, which the probe does not gather"):
        stats._read_fields(entry)


def test_the_output_signal_and_the_parameter_gradient_are_told_apart():
    reads = {stat.name: fields for stat, fields in STATISTIC_FIELDS}
    assert reads["signal_norm"] == reads["nonfinite_grad"] == (Field.SIGNAL_NORM,)
    assert reads["grad_norm"] == (Field.PARAM_GRAD_NORM,)
