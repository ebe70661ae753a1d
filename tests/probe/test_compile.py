"""A compiled model is probed as an eager one: the same statistics (1e-5 relative) with the
probe attached before or after ``torch.compile(model)`` / ``model.compile()``, nothing
silently NaN, and no graph break or recompilation added by the probe (Dynamo's counters).
The ``aot_eager`` backend stands for inductor: it traces forward and backward as inductor
does, in a fraction of the time."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters
from torch.utils.checkpoint import checkpoint

from .reference import LAYER_STATS

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class _MLP(nn.Module):
    """A tanh MLP defined outside torch (Dynamo compiles no frame of torch.nn's own
    modules when ``model.compile()`` compiles an ``nn.Sequential``)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _mlp() -> _MLP:
    torch.manual_seed(0)
    return _MLP()


X = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))


def _train(model: nn.Module, probe, steps: int, call: Callable | None = None) -> None:
    call = model if call is None else call
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = call(X).square().mean()
        loss.backward()
        probe.step(loss)
        opt.step()
        opt.zero_grad()


def _assert_same(probe, reference) -> None:
    assert probe.layers == reference.layers
    for stat in LAYER_STATS:
        np.testing.assert_allclose(
            probe.history(stat), reference.history(stat), rtol=1e-5, equal_nan=True, err_msg=stat
        )


def _compiled(order: str, make_probe) -> tuple[nn.Module, object, Callable]:
    """A model, its probe (every 2nd step) and what the loop calls, in one attach order."""
    model = _mlp()
    if order == "attach, then torch.compile":
        probe = make_probe(model, every=2).attach()
        return model, probe, torch.compile(model, backend=BACKEND)
    if order == "attach, then model.compile()":
        probe = make_probe(model, every=2).attach()
        model.compile(backend=BACKEND)
        return model, probe, model
    if order == "model.compile() run once, then attach":
        model.compile(backend=BACKEND)
        model(X)
        return model, make_probe(model, every=2).attach(), model
    compiled = torch.compile(model, backend=BACKEND)
    compiled(X)  # Dynamo's graph exists before the probe's hooks do
    target = compiled if order == "torch.compile run once, then attach to it" else model
    return model, make_probe(target, every=2).attach(), compiled


ORDERS = [
    "attach, then torch.compile",
    "attach, then model.compile()",
    "torch.compile run once, then attach",
    "torch.compile run once, then attach to it",
    "model.compile() run once, then attach",
]


@pytest.mark.parametrize("order", ORDERS)
def test_compiled_model_records_what_eager_records(make_probe, order):
    eager = _mlp()
    reference = make_probe(eager, every=2).attach()
    _train(eager, reference, 6)
    reference.detach()  # its next step is recorded: compiled code would run eagerly
    model, probe, call = _compiled(order, make_probe)
    _train(model, probe, 6, call)
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert not np.isnan(probe.history("signal_norm")).any()
    assert not np.isnan(probe.history("act_std")).any()
    _assert_same(probe, reference)


@pytest.mark.parametrize("order", ORDERS)
def test_unrecorded_steps_add_no_graph_break_or_recompilation(make_probe, order):
    plain = _mlp()
    compiled_plain = torch.compile(plain, backend=BACKEND)
    for _ in range(3):
        compiled_plain(X).square().mean().backward()
    plain_graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    counters.clear()
    model, probe, call = _compiled(order, make_probe)
    _train(model, probe, 4, call)  # recorded, unrecorded, recorded, unrecorded
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == plain_graphs
    assert not counters["graph_break"]
    _train(model, probe, 6, call)
    assert counters["stats"]["unique_graphs"] == graphs
    assert not counters["recompiles"]
    assert not counters["graph_break"]


def test_recorded_steps_leave_the_users_compiler_stance(make_probe):
    model = _mlp()
    compiled = torch.compile(model, backend=BACKEND)
    with torch.compiler.set_stance("eager_on_recompile"):
        probe = make_probe(model, every=2).attach()
        _train(model, probe, 2, compiled)  # step 2 is recorded: the eager stance is held
        assert torch._dynamo.eval_frame._stance.stance == "force_eager"
        probe.detach()
        assert torch._dynamo.eval_frame._stance.stance == "eager_on_recompile"
    assert torch._dynamo.eval_frame._stance.stance == "default"


def test_two_probes_share_the_eager_stance(make_probe):
    first = make_probe(_mlp(), every=2).attach()
    second = make_probe(_mlp(), every=3).attach()
    first.detach()
    assert torch._dynamo.eval_frame._stance.stance == "force_eager"  # the second's step 0
    second.detach()
    assert torch._dynamo.eval_frame._stance.stance == "default"


class _Attention(nn.Module):
    """Self-attention that asks for the attention weights and discards them: their
    backward signal is None."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _weights = self.attn(x, x, x, need_weights=True)
        return self.head(out.tanh())


def _train_four_steps(make_probe, model: nn.Module, call: Callable, x: torch.Tensor) -> object:
    """A probe on ``model``, every other step recorded, over 4 SGD steps of ``call(x)``."""
    probe = make_probe(model, every=2).attach()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        loss = call(x).square().mean()
        loss.backward()
        probe.step(loss)
        opt.step()
        opt.zero_grad()
    return probe


def test_attention_with_discarded_weights_compiles_and_records(make_probe):
    seq = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(2))

    def run(model: nn.Module, call: Callable) -> object:
        return _train_four_steps(make_probe, model, call, seq)

    torch.manual_seed(0)
    reference = run(eager := _Attention(), eager)
    reference.detach()
    torch.manual_seed(0)
    model = _Attention()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = run(model, torch.compile(model, backend=BACKEND))
    _assert_same(probe, reference)
    assert np.isfinite(probe.history("signal_norm")[:, probe.layers.index("attn")]).all()


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.reentrant is None:
                x = block(x)
            else:
                x = checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(x)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_checkpointing_under_compile_records_what_eager_records(make_probe, reentrant):
    def run(model: nn.Module, call: Callable) -> object:
        x = X.clone().requires_grad_()  # a reentrant checkpoint needs an input with grad
        return _train_four_steps(make_probe, model, call, x)

    torch.manual_seed(0)
    reference = run(eager := _Checkpointed(None), eager)
    reference.detach()
    torch.manual_seed(0)
    model = _Checkpointed(reentrant)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = run(model, torch.compile(model, backend=BACKEND))
    assert counters["stats"]["unique_graphs"] >= 1
    _assert_same(probe, reference)


@pytest.mark.slow  # two compilations of GPT-2, about 11 s
def test_compiled_gpt2_gets_no_graph_break_from_the_probe(make_probe):
    pytest.importorskip("transformers")
    from tests.zoo.architectures import ARCHITECTURES, loss_of

    arch = ARCHITECTURES["gpt2"]
    batch = arch.batch(0)

    def graphs_after(model: nn.Module, probe, steps: int) -> tuple[int, int]:
        compiled = torch.compile(model, backend="eager")
        for _ in range(steps):
            loss_of(compiled, batch, arch.loss_fn).backward()
            if probe is not None:
                probe.step()
            model.zero_grad()
        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())

    plain = graphs_after(arch.build(), None, 2)
    torch._dynamo.reset()
    counters.clear()
    model = arch.build()
    probe = make_probe(model, every=4).attach()
    assert graphs_after(model, probe, 8) == plain  # two recorded steps, six unrecorded
    assert not counters["recompiles"]
    assert np.isfinite(probe.history("signal_norm")).all()
