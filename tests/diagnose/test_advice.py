"""Every remedy names a call that exists: backprobe.remedies functions with valid
arguments, and torch functions and classes."""

from __future__ import annotations

import importlib
import re

import pytest

from backprobe.diagnose import advice
from backprobe.diagnose.finding import Remedy
from backprobe.remedies import SCHEMES

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
    for scheme in re.findall(r'init_\(model, "(\w+)"', remedy.call):
        assert scheme in SCHEMES


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
