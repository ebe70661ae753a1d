"""Remedies for vanishing and exploding gradients, each one call on the user's model or loop.

Initialisation (:func:`init_`), activation swap (:func:`swap_activations_`), clipping
(:func:`clip_grad_norm_`, :func:`clip_grad_value_`, :class:`AdaptiveClipper`), truncated
BPTT (:func:`truncated_bptt`), Pascanu's regulariser (:func:`pascanu_omega`), echo state
networks (:class:`EchoStateNetwork`) and optimisers / schedulers built from a short spec
(:func:`build_optimizer`, :func:`build_scheduler`), and a :class:`Guard` that skips, clips or
slows the update of a spiking step. :func:`apply_remedy` applies a
finding's machine-applicable remedy to a model in place. Each module's docstring holds a
runnable example; ``tests/remedies/test_docstrings.py`` runs them all.
"""

from __future__ import annotations

from .activations import FunctionalCall, SwapReport, swap_activations_
from .apply import APPLICABLE, apply_remedy
from .clipping import (
    AdaptiveClipper,
    ClipResult,
    clip_grad_norm_,
    clip_grad_value_,
    global_grad_norm,
)
from .esn import EchoStateNetwork
from .guard import Guard
from .init import SCHEMES, InitReport, LSUVLayer, init_
from .optim import build_optimizer, build_scheduler, parse_spec
from .regularizer import omega_terms, pascanu_omega
from .tbptt import SavedTensorMeter, TBPTTResult, detach_state, truncated_bptt

__all__ = [
    "APPLICABLE",
    "SCHEMES",
    "AdaptiveClipper",
    "ClipResult",
    "EchoStateNetwork",
    "FunctionalCall",
    "Guard",
    "InitReport",
    "LSUVLayer",
    "SavedTensorMeter",
    "SwapReport",
    "TBPTTResult",
    "apply_remedy",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm_",
    "clip_grad_value_",
    "detach_state",
    "global_grad_norm",
    "init_",
    "omega_terms",
    "parse_spec",
    "pascanu_omega",
    "swap_activations_",
    "truncated_bptt",
]
