"""Remedies with an action: applied to a model in place by ``apply_remedy``, refused when
advice only or when they do not apply, and stored as JSON with the action intact."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.diagnose import advice
from backprobe.errors import DiagnoseError, RemedyError
from backprobe.remedies import apply_remedy, swap_activations_


def _tanh_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())


def test_a_swap_remedy_swaps_the_models_own_activation_then_re_initialises():
    model = _tanh_net()
    apply_remedy(model, advice.swap_to_relu({"tanh"}))
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    std = float(model[2].weight.detach().std())
    assert std == pytest.approx((2 / 16) ** 0.5, rel=0.2)  # He init for ReLU
    assert torch.all(model[2].bias == 0)


def test_advice_only_remedies_are_refused_with_the_call_to_apply_by_hand():
    for remedy in (advice.CLIP, advice.ADAM, advice.RESIDUAL, advice.lower_lr()):
        with pytest.raises(RemedyError, match=r"advice for the training loop .* by hand: "):
            apply_remedy(_tanh_net(), remedy)


def test_a_swap_of_an_activation_the_model_lacks_is_refused():
    with pytest.raises(RemedyError, match=r"'sigmoid' activation modules .* has none"):
        apply_remedy(_tanh_net(), advice.swap_to_relu({"sigmoid"}))


def test_an_action_naming_an_unknown_function_is_refused():
    remedy = bp.Remedy.applying("Prune", "fewer weights", ("prune_", {"amount": 0.5}))
    assert remedy.call == "backprobe.remedies.prune_(model, amount=0.5)"
    with pytest.raises(RemedyError, match=r"naming one of \['init_', .* names 'prune_'"):
        apply_remedy(_tanh_net(), remedy)


def test_remedies_with_actions_round_trip_through_json():
    finding = bp.Finding(
        "vanishing",
        "error",
        "vanishing gradient",
        remedies=(*advice.vanishing_remedies({"tanh", "sigmoid"}), advice.FORGET_BIAS),
    )
    stored = json.loads(json.dumps(finding.to_dict()))
    assert stored["remedies"][0]["action"][0] == [
        "swap_activations_",
        {"from_": ["sigmoid", "tanh"], "to": "relu"},
    ]
    again = bp.Finding.from_dict(stored)
    assert again == finding
    assert again.remedies[0].action[0][1]["from_"] == ("sigmoid", "tanh")
    assert [r.applicable for r in again.remedies] == [True, True, False, False, False, True]


def test_the_call_is_derived_from_the_action():
    stored = advice.HE_INIT.to_dict() | {"call": "an older rendering"}
    assert bp.Remedy.from_dict(stored).call == advice.HE_INIT.call  # the action decides
    assert advice.HE_INIT.call == 'backprobe.remedies.init_(model, scheme="he_normal")'
    with pytest.raises(DiagnoseError, match="derived from its action"):
        bp.Remedy("He", "init_(model)", "", advice.HE_INIT.action)
    with pytest.raises(DiagnoseError, match="call or an action"):
        bp.Remedy("Nothing")
    with pytest.raises(DiagnoseError, match="function name, keyword arguments"):
        bp.Remedy("Bad", action=(("init_",),))  # type: ignore[arg-type]  # the wrong shape is the test


def test_swap_activations_takes_activation_names():
    model = _tanh_net()
    report = swap_activations_(model, from_="tanh", to="leaky_relu")
    assert report.swapped == ["1", "3"] and isinstance(model[3], nn.LeakyReLU)
    with pytest.raises(RemedyError, match=r"from_ to name an activation .* got 'erf'"):
        swap_activations_(model, from_="erf")
    with pytest.raises(RemedyError, match=r"to to name an activation .* got 'nope'"):
        swap_activations_(model, from_=nn.LeakyReLU, to="nope")
