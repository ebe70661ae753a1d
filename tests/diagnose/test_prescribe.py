"""``bp.prescribe``: each remedy measured on a copy of the model, best first; the best one,
applied in place, cures what it was measured to cure."""

from __future__ import annotations

import doctest
import warnings

import pytest
import torch
from rich.console import Console
from torch import nn

import backprobe as bp
import backprobe.diagnose.prescribe as prescribe_module
from backprobe.diagnose import advice
from backprobe.lab.models import DeepMLP
from backprobe.report.text import print_findings

from ..zoo.architectures import ARCHITECTURES
from ..zoo.plants import PLANTED


def _batch() -> torch.Tensor:
    return torch.randn(32, 16, generator=torch.Generator().manual_seed(0))


def _net(activation: str, depth: int) -> nn.Module:
    torch.manual_seed(0)
    return DeepMLP(16, 32, depth, 4, activation=activation)


def _kinds(model: nn.Module, batch: object, loss_fn=None) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {f.kind for f in bp.check(model, batch, loss_fn) if f.severity != "info"}


@pytest.mark.parametrize(
    ("activation", "depth", "best"),
    [
        ("sigmoid", 50, "ReLU + He init instead of sigmoid"),
        ("tanh", 64, "Orthogonal initialisation"),
    ],
)
def test_the_top_prescription_helps_and_cures_the_vanishing_gradient(activation, depth, best):
    model = _net(activation, depth)
    prescriptions = bp.prescribe(model, _batch())
    top = prescriptions[0]
    assert top.remedy.title == best and top.helps and "vanishing" in top.resolved
    assert top.before.ratio < 1e-10 and 0.1 < top.after.ratio < 10
    assert top.before.chi1 < 0.5 and top.after.chi1 == pytest.approx(1.0, abs=0.01)
    assert "vanishing" in _kinds(model, _batch())  # prescribe left the model as it was
    top.apply(model)
    assert "vanishing" not in _kinds(model, _batch())
    helping = [p.helps for p in prescriptions]
    assert helping == sorted(helping, reverse=True)  # those that help come first


def test_a_remedy_that_does_not_help_is_measured_and_marked():
    """He init alone on a sigmoid net keeps χ1 far below 1: measured, and marked."""
    finding = bp.Finding("vanishing", "error", "given", remedies=(advice.HE_INIT, advice.CLIP))
    (only,) = bp.prescribe(_net("sigmoid", 50), _batch(), findings=[finding])
    assert only.remedy is advice.HE_INIT and not only.helps
    assert only.resolved == () and only.after.worst.kind == "vanishing"
    assert str(only).startswith("He initialisation: first/last ratio 3e-43 → ")
    assert ", χ1 0.0199 → 0.0557, worst error vanishing → error vanishing" in str(only)
    assert str(only).endswith("(does not help)")


def test_remedies_that_do_not_apply_are_skipped_with_the_reason():
    finding = bp.Finding(
        "vanishing", "error", "given", remedies=(advice.swap_to_relu({"sigmoid"}),)
    )
    prescriptions = bp.prescribe(_net("tanh", 8), _batch(), findings=[finding])
    assert list(prescriptions) == []
    ((remedy, why),) = prescriptions.skipped
    assert remedy.title == "ReLU + He init instead of sigmoid" and "has none" in why


def test_remedies_with_the_same_effect_are_listed_once():
    """The swap of every bounded activation does on a tanh net what the swap of tanh
    does: one prescription."""
    finding = bp.Finding(
        "vanishing",
        "error",
        "given",
        remedies=(advice.swap_to_relu({"tanh"}), advice.swap_to_relu(advice.BOUNDED)),
    )
    (only,) = bp.prescribe(_net("tanh", 16), _batch(), findings=[finding])
    assert only.remedy.title == "ReLU + He init instead of tanh"


CHECKED = [c for c in PLANTED if c.train is None]


@pytest.mark.parametrize("case", CHECKED, ids=[c.name for c in CHECKED])
def test_every_prescription_shown_as_helping_on_the_zoo_helps_when_applied(case):
    arch = ARCHITECTURES[case.architecture]
    prescriptions = bp.prescribe(case.build(), arch.batch(0), arch.loss_fn)
    helping = [p for p in prescriptions if p.helps]
    if not helping:
        pytest.skip("no applicable remedy helps this case")
    for p in helping:
        model = case.build()
        p.apply(model)
        after = _kinds(model, arch.batch(0), arch.loss_fn)
        assert after == set(p.after.kinds), p.remedy.title
        assert not set(p.resolved) & after, p.remedy.title


def test_the_module_example_runs():
    failed, attempted = doctest.testmod(prescribe_module)
    assert attempted > 0 and failed == 0


def test_findings_of_a_training_run_carry_the_measured_effect(tmp_path):
    """A probe's findings, measured on a copy of the model with the batch at hand: each
    applicable remedy says what it did, in the terminal, the report and the stored JSON."""
    torch.manual_seed(0)
    model = DeepMLP(16, 32, 20, 4, activation="sigmoid")
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = bp.Probe(model, db=None)
    with probe:
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    findings = bp.findings(probe)
    prescriptions = bp.prescribe(
        model, (x, y), torch.nn.functional.cross_entropy, findings=findings
    )
    annotated = prescriptions.annotate(findings)
    (vanishing,) = [f for f in annotated if f.kind == "vanishing"]
    swap = next(r for r in vanishing.remedies if r.title.startswith("ReLU + He init"))
    best = next(p for p in prescriptions if p.remedy.call == swap.call)
    assert best.helps and swap.effect == best.effect and "→" in swap.effect
    assert all(not r.effect for r in vanishing.remedies if not r.applicable)
    assert bp.Finding.from_dict(vanishing.to_dict()) == vanishing
    page = bp.write_report(probe, tmp_path / "r.html", findings=annotated).read_text()
    assert "measured on a copy: first/last ratio" in page
    console = Console(record=True, width=200)
    print_findings(annotated, console)
    assert f"measured on a copy: {swap.effect}" in console.export_text()
