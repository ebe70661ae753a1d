"""The recorded step's device reductions and their host sums: a layer's output statistics
written as one block, the saturation mask in reused scratch memory, and entries summed on
the host, each equal to the plain computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backprobe.activations import Saturation
from backprobe.probe.stats import Field, HostStep, StatSlots, StepBuffer, saturated_per_row

TANH = Saturation(center=0.0, half_width=0.9)
SIGMOID = Saturation(center=0.5, half_width=0.45)
CLAMP = Saturation(center=0.0, half_width=1.0, inclusive=True)


def _expected_saturated(t: torch.Tensor, sat: Saturation) -> np.ndarray:
    dist = (t.double().reshape(t.shape[0], -1) - sat.center).abs()
    return (dist >= sat.half_width if sat.inclusive else dist > sat.half_width).sum(1).numpy()


@pytest.mark.parametrize("sat", [TANH, SIGMOID, CLAMP], ids=["tanh", "sigmoid", "clamp"])
def test_saturated_counts_through_the_scratch_equal_plain_counts(sat):
    """One step's outputs of several shapes and dtypes share the scratch (grown for the
    larger one, a view per shape); the counts equal the plain ones, a clamp's outputs on
    its bound included, and the outputs are left untouched."""
    gen = torch.Generator().manual_seed(0)
    outputs = [
        torch.rand(6, 5, generator=gen) * 2 - 1 + sat.center,
        torch.rand(4, 3, 7, generator=gen).double() * 2 - 1 + sat.center,
        torch.rand(9, 11, generator=gen) * 2 - 1 + sat.center,
        torch.full((3, 4), sat.center + sat.half_width),  # on the bound
    ]
    slots = StatSlots()
    for _ in range(2):  # the second step reuses the first step's scratch
        slots.reset()
        for t in outputs:
            before = t.clone()
            counts = saturated_per_row(t, sat, slots)
            np.testing.assert_array_equal(counts.double().numpy(), _expected_saturated(t, sat))
            assert torch.equal(t, before)


def test_an_outputs_statistics_are_one_block_of_sums_norms_and_counts():
    gen = torch.Generator().manual_seed(1)
    out = torch.rand(5, 2, 3, generator=gen) * 2 - 1
    buffer = StepBuffer(slots=StatSlots())
    buffer.add_output(3, out, TANH, can_die=False)
    buffer.add_output(4, out, None, can_die=False)
    assert buffer.fields == [
        Field.OUT_SUM,
        Field.OUT_NORM,
        Field.OUT_SATURATED,
        Field.OUT_SUM,
        Field.OUT_NORM,
    ]
    assert buffer.layers == [3, 3, 3, 4, 4] and buffer.lengths == [5] * 5
    assert buffer.numels == [30] * 5 and len(buffer.tensors) == 2
    rows = out.double().reshape(5, -1)
    sums, norms = rows.sum(1).numpy(), rows.norm(dim=1).numpy()
    host = buffer.to_host()
    np.testing.assert_allclose(host.entry(0), sums, rtol=1e-6)
    np.testing.assert_allclose(host.entry(1), norms, rtol=1e-6)
    np.testing.assert_array_equal(host.entry(2), _expected_saturated(out, TANH))
    np.testing.assert_allclose(host.entry(4), norms, rtol=1e-6)


def test_host_entry_totals_skip_empty_entries():
    """Entries of no values (a layer that saw an empty batch) total 0 wherever they lie:
    first, between others and last."""
    lengths = np.array([0, 3, 0, 0, 2, 1, 0])
    values = np.arange(1.0, 7.0)
    fields = np.full(lengths.size, int(Field.OUT_SUM))
    layers = np.arange(lengths.size)
    host = HostStep(values, lengths, layers, fields, numels=lengths.astype(np.float64))
    stats = host.reduce(n_layers=lengths.size)
    means = stats.per_layer["act_mean"]
    np.testing.assert_allclose(means[[1, 4, 5]], [2.0, 4.5, 6.0])
    assert np.isnan(means[[0, 2, 3, 6]]).all()  # 0 / 0 where nothing was measured
