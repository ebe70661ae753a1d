"""A probed model can be copied and saved, and checkpointed segments are measured once."""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from backprobe import Probe


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def test_deepcopy_with_a_run_database_gives_a_copy_that_records_nothing(tmp_path):
    model = mlp()
    x = torch.randn(3, 4)
    with Probe(model, db=tmp_path / "runs.db") as probe:
        ema = copy.deepcopy(model)  # the probe's sqlite connection must not be copied
        model(x).sum().backward()
        ema(torch.randn(5, 4) * 100).sum().backward()  # very different outputs
        probe.step()
        first_layer_mean = probe.history("act_mean")[0, 0]
    np.testing.assert_allclose(first_layer_mean, model[0](x).mean().item(), rtol=1e-5)


def test_a_copy_run_alone_leaves_the_original_run_empty():
    model = mlp()
    probe = Probe(model, db=None).attach()
    clone = copy.deepcopy(model)
    clone(torch.randn(7, 4)).sum().backward()
    probe.step()
    assert np.isnan(probe.history("act_mean")).all()
    assert np.isnan(probe.history("grad_norm")).all()  # the original has no .grad
    probe.close()


def test_torch_save_of_a_probed_model(tmp_path):
    model = mlp()
    with Probe(model, db=tmp_path / "runs.db"):
        buffer = io.BytesIO()
        torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert torch.equal(restored[0].weight, model[0].weight)
    restored(torch.randn(2, 4)).sum().backward()  # inert hooks run harmlessly


class Checkpointed(nn.Module):
    """``inner`` runs under non-reentrant checkpointing: its forward runs again during
    the backward pass, which must not be measured a second time."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(checkpoint(self.inner, x, use_reentrant=False))


def test_non_reentrant_checkpoint_is_measured_once():
    model = Checkpointed()
    x = torch.randn(6, 4)
    probe = Probe(model, db=None).attach()
    model(x).pow(2).sum().backward()
    probe.step()
    assert probe.layers == ["inner.0", "inner.1", "head"]
    with torch.no_grad():
        h = model.inner(x)
    np.testing.assert_allclose(probe.history("act_mean")[0, 1], h.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(
        probe.history("act_std")[0, 1], h.std(unbiased=False).item(), rtol=1e-5
    )
    # the backward signal at the tanh output: dL/dh = 2 * head(h) * w_head
    with torch.no_grad():
        expected = (2 * model.head(h) * model.head.weight).norm().item()
    np.testing.assert_allclose(probe.history("signal_norm")[0, 1], expected, rtol=1e-5)
    probe.close()


def test_a_forward_run_during_the_backward_pass_is_not_measured():
    """What older checkpoint implementations do: run a layer's forward again inside the
    backward pass. Only the real forward may be pooled into the step's statistics."""
    model = mlp()
    x = torch.randn(6, 4)
    probe = Probe(model, db=None).attach()
    out = model(x)

    def rerun_forward(grad: torch.Tensor) -> None:
        with torch.enable_grad():
            model[0](x * 50)  # very different values: pooling them would show

    out.register_hook(rerun_forward)
    out.sum().backward()
    probe.step()
    with torch.no_grad():
        expected = model[0](x)
    np.testing.assert_allclose(probe.history("act_mean")[0, 0], expected.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(
        probe.history("act_std")[0, 0], expected.std(unbiased=False).item(), rtol=1e-5
    )
    probe.close()
