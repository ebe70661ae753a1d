"""Norms of parameters and gradients: which elements count, per-tensor norms grouped by
device and dtype, and the global norm of many tensors."""

from __future__ import annotations

import pytest
import torch

from backprobe.probe.norms import (
    dense_values,
    global_norm,
    grouped_norms,
    local_values,
    stacked_norms,
)


def _sparse_with_a_repeated_index() -> torch.Tensor:
    indices = torch.tensor([[0, 0, 2]])
    return torch.sparse_coo_tensor(
        indices, torch.tensor([3.0, 1.0, -2.0]), (4,), check_invariants=True
    )


def test_a_sparse_tensor_counts_its_coalesced_values():
    sparse = _sparse_with_a_repeated_index()
    assert not sparse.is_coalesced()
    assert dense_values(sparse).tolist() == [4.0, -2.0]  # 3 + 1 at index 0
    values, shards = local_values(sparse)
    assert values.tolist() == [4.0, -2.0] and shards == 1
    dense = torch.ones(3)
    assert dense_values(dense) is dense


def test_norms_are_grouped_by_dtype_in_order_of_first_appearance():
    tensors = [torch.ones(4), torch.ones(9, dtype=torch.float64), torch.full((1,), 2.0)]
    groups = grouped_norms(tensors)
    assert [positions for positions, _ in groups] == [[0, 2], [1]]
    assert groups[0][1].tolist() == [2.0, 2.0] and groups[1][1].tolist() == [3.0]
    assert groups[1][1].dtype == torch.float64  # float64 tensors keep float64
    as_float64 = grouped_norms(tensors, lambda _: torch.float64)
    assert all(norms.dtype == torch.float64 for _, norms in as_float64)


@pytest.mark.parametrize("foreach", [None, True, False])
def test_the_global_norm_is_that_of_all_tensors_concatenated(foreach):
    tensors = [torch.randn(5, 3), torch.randn(7, dtype=torch.float64), torch.randn(2)]
    expected = torch.cat([t.double().reshape(-1) for t in tensors]).norm()
    total = global_norm(tensors, foreach=foreach)
    assert total.dtype == torch.float32 and total.dim() == 0
    assert float(total) == pytest.approx(float(expected), rel=1e-6)


def test_the_global_norm_of_half_precision_tensors_does_not_overflow():
    big = torch.full((100,), 6e4, dtype=torch.float16)  # norm 6e5 > float16's 65504
    assert float(global_norm([big])) == pytest.approx(6e5, rel=1e-3)


def test_the_global_norm_of_nothing_is_zero_and_sparse_values_count_once():
    assert float(global_norm([])) == 0.0
    assert float(global_norm([_sparse_with_a_repeated_index()])) == pytest.approx(20**0.5)


@pytest.mark.parametrize("foreach", [None, True, False])
def test_stacked_norms_agree_with_float64_on_every_path(foreach):
    """Contiguous CPU tensors in the accumulation dtype take one BLAS dot each; a
    transposed view, a half-precision tensor and ``foreach=False`` take the others."""
    torch.manual_seed(0)
    big = torch.randn(2_000_000) * 1e3 + 300.0
    cases = {
        torch.float32: [big, torch.randn(64, 32), torch.randn(64, 32).t(), torch.zeros(3)],
        torch.float64: [torch.randn(7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)],
    }
    for dtype, tensors in cases.items():
        norms = stacked_norms(tensors, dtype, foreach)
        assert norms.dtype == dtype and norms.shape == (len(tensors),)
        expected = torch.stack([t.double().norm() for t in tensors])
        # torch's own CPU norm kernel (foreach=False) drifts to 3e-5 on 2 M elements
        rtol = 1e-4 if foreach is False else 2e-6
        torch.testing.assert_close(norms.double(), expected, rtol=rtol, atol=0.0)
    half = torch.full((100,), 6e4, dtype=torch.float16)
    assert float(stacked_norms([half], torch.float32, foreach)[0]) == pytest.approx(6e5, rel=1e-3)
    assert stacked_norms([], torch.float32, foreach).shape == (0,)
