"""The remedies a finding names, run as written on the zoo's planted problems, fix them:
checked again, the model has no finding at warning or above of that kind."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import backprobe
import backprobe as bp
import backprobe.remedies  # the calls name backprobe.remedies.*

from .zoo import PATHOLOGIES, Recurrent, significant

ZOO = {e.name: e for e in PATHOLOGIES}


def check(model: nn.Module, shape: tuple[int, ...]) -> list[bp.Finding]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(bp.check(model, input_shape=shape))


def apply(remedy: bp.Remedy, model: nn.Module, **names: object) -> None:
    """Run the remedy's call as a user would paste it."""
    namespace = {"model": model, "nn": nn, "torch": torch, "backprobe": backprobe, **names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(remedy.call, namespace)


def planted(name: str) -> tuple[nn.Module, tuple[int, ...], list[bp.Finding]]:
    torch.manual_seed(0)
    entry = ZOO[name]
    model = entry.build()
    return model, entry.input_shape, check(model, entry.input_shape)


def test_deep_sigmoid_is_cured_by_its_first_two_remedies():
    model, shape, findings = planted("deep sigmoid (default init)")
    vanishing = next(f for f in findings if f.kind == "vanishing")
    for remedy in vanishing.remedies[:2]:  # swap to ReLU, then He init
        apply(remedy, model)
    assert significant(check(model, shape)) == []


def test_init_is_cured_by_he_init():
    for name in ("tiny init (He × 0.1, ReLU)", "huge init (He × 3, ReLU)"):
        model, shape, findings = planted(name)
        init = next(f for f in findings if f.kind == "initialisation")
        apply(init.remedies[0], model)
        assert significant(check(model, shape)) == [], name


def test_dead_relus_are_cured_by_zeroing_the_bias_that_feeds_them():
    model, shape, findings = planted("dead ReLUs from a bias of −10 at fc3")
    dead = next(f for f in findings if f.kind == "dead_units")
    apply(dead.remedies[0], model, layer=model.get_submodule(dead.where["fed_by"][0]))
    assert significant(check(model, shape)) == []


def horizon(findings: list[bp.Finding]) -> float:
    """The memory horizon of the vanishing-through-time finding; inf without one."""
    found = [f for f in findings if f.kind == "vanishing_through_time"]
    return found[0].evidence["memory_horizon"] if found else float("inf")


def test_recurrent_remedies_restore_the_memory():
    model, shape, findings = planted("vanishing RNN (λ1(W_hh) = 0.3, T = 50)")
    before = horizon(findings)
    f = next(f for f in findings if f.kind == "vanishing_through_time")
    apply(f.remedies[1], model)  # orthogonal W_hh
    after = check(model, shape)
    assert horizon(after) == float("inf") > before  # no vanishing finding left

    torch.manual_seed(0)
    lstm = Recurrent("lstm")
    findings = check(lstm, (8, 60, 8))
    f = next(f for f in findings if f.kind == "vanishing_through_time")
    assert "forget_bias" in f.remedies[0].call
    before = horizon(findings)
    assert before < 60
    apply(f.remedies[0], lstm)
    assert horizon(check(lstm, (8, 60, 8))) == float("inf")
