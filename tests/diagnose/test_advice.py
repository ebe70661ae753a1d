"""Every remedy names a call that exists: backprobe.remedies functions with valid
arguments, and torch functions and classes."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.diagnose import advice
from backprobe.diagnose.finding import Remedy
from backprobe.errors import DiagnoseError
from backprobe.lab.models import DeepMLP
from backprobe.remedies import APPLICABLE, SCHEMES

REMEDIES = [v for v in vars(advice).values() if isinstance(v, Remedy)]
REMEDIES += [advice.lower_lr(), advice.raise_lr()]


def _resolve(dotted: str) -> object:
    """``torch.nn.utils.clip_grad_norm_`` → the object, importing the longest module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("remedy", REMEDIES, ids=[r.title for r in REMEDIES])
def test_remedy_calls_exist(remedy: Remedy):
    assert remedy.title and remedy.call and remedy.why
    for dotted in re.findall(r"\b((?:backprobe|torch)(?:\.\w+)+)\(", remedy.call):
        assert callable(_resolve(dotted)), dotted
    for name, kwargs in remedy.action:
        inspect.signature(APPLICABLE[name]).bind(nn.Identity(), **kwargs)  # valid arguments
        assert kwargs.get("scheme", "he_normal") in SCHEMES


def test_model_changing_remedies_carry_an_action_and_loop_advice_does_not():
    applicable = {r.title for r in REMEDIES if r.applicable}
    assert {advice.HE_INIT.title, advice.ORTHOGONAL_INIT.title, advice.LEAKY.title} <= applicable
    assert not {advice.CLIP.title, advice.ADAM.title, advice.RESIDUAL.title} & applicable


def test_the_swap_names_the_activations_the_starving_part_has():
    """A tanh net is offered a swap of tanh, not of sigmoid (which would swap nothing)."""
    (swap, *_) = advice.vanishing_remedies({"tanh", "linear"})
    assert swap.action[0] == ("swap_activations_", {"from_": "tanh", "to": "relu"})
    assert "sigmoid" not in swap.call and "tanh" in swap.title
    (swap, *_) = advice.vanishing_remedies({"sigmoid", "tanh"})
    assert swap.action[0][1]["from_"] == ("sigmoid", "tanh")
    assert advice.vanishing_remedies({"relu"})[0] is advice.HE_INIT
    with pytest.raises(DiagnoseError, match="bounded activation among"):
        advice.swap_to_relu({"relu"})


def test_every_kind_has_references():
    for refs in (
        advice.DEPTH_REFERENCES,
        advice.SATURATION_REFERENCES,
        advice.DEAD_REFERENCES,
        advice.NONFINITE_REFERENCES,
        advice.LR_REFERENCES,
        advice.INIT_REFERENCES,
        advice.TIME_REFERENCES,
    ):
        assert refs and all(isinstance(r, str) and r for r in refs)


def _swaps(finding) -> list[Remedy]:
    return [r for r in finding.remedies if any(name == "swap_activations_" for name, _ in r.action)]


def test_saturated_tanh_is_offered_the_swap_of_tanh_only():
    torch.manual_seed(0)
    model = DeepMLP(16, 32, 6, 4, activation="tanh", init="xavier")
    with torch.no_grad():
        for linear in model.linears:
            linear.weight.mul_(8.0)  # inputs deep on tanh's flat tails
    (saturation,) = [f for f in bp.check(model, input_shape=(64, 16)) if f.kind == "saturation"]
    (swap,) = _swaps(saturation)
    assert swap.title == "ReLU + He init instead of tanh"


def test_a_relu_stack_off_the_edge_of_chaos_is_offered_no_swap():
    torch.manual_seed(0)
    model = DeepMLP(16, 32, 30, 4, activation="relu", init="he")
    with torch.no_grad():
        for linear in model.linears:
            linear.weight.mul_(0.5)  # χ1 = 1/4 per layer
    found = [f for f in bp.check(model, input_shape=(64, 16)) if f.kind == "initialisation"]
    assert found and not any(_swaps(f) for f in found)
