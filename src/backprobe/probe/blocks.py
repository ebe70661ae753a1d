"""Residual blocks: the repeated children of a model whose input and output are the
residual stream.

A *block candidate* is a child of an ``nn.ModuleList`` or ``nn.Sequential`` that has
children of its own (a Transformer layer, a ResNet ``BasicBlock``; a lone ``nn.Linear``
is a layer, not a block). At the first recorded step a candidate is a *block* when its
forward's first input tensor and first output tensor have the same shape and the output
reaches the input through a *skip path* (:func:`has_skip_path`): ``x + F(x)`` (pre-LN),
``LN(x + F(x))`` (post-LN) and ``relu(x + F(x))`` (ResNet) are blocks; ``relu(W x)`` is
not.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .outputs import floating_tensors

#: Containers whose children may be repeated blocks.
BLOCK_CONTAINERS: tuple[type[nn.Module], ...] = (nn.ModuleList, nn.Sequential)

#: The autograd nodes a skip path may pass through (names without the trailing version
#: digit): shape-preserving operations that hold no weight of their own. The addition
#: is the skip itself; normalisation (LayerNorm, and RMSNorm written out as
#: ``x * rsqrt(mean(x²) + eps)``, whose weight enters as a multiplication), dropout
#: (a multiplication by the mask on the CPU), a scalar scale, views, copies and
#: elementwise activations (the ReLU after a ResNet block's addition) are traversed. A
#: matrix product, a convolution or an attention softmax ends a path: through them the
#: output depends on the input through a weight, which is the branch, not the skip.
SKIP_PATH_NODES: frozenset[str] = frozenset(
    {
        "AddBackward",  # the skip connection, and the eps of a normalisation
        "NativeLayerNormBackward",
        "MulBackward",  # RMSNorm's scale and weight, dropout's mask, a scalar scale
        "DivBackward",
        "RsqrtBackward",
        "MeanBackward",
        "PowBackward",
        "NativeDropoutBackward",
        "ViewBackward",
        "UnsafeViewBackward",
        "ReshapeAliasBackward",
        "AliasBackward",
        "TransposeBackward",
        "PermuteBackward",
        "CloneBackward",
        "ToCopyBackward",
        "ReluBackward",
        "GeluBackward",
        "SiluBackward",
    }
)
#: The node of a reentrant ``torch.utils.checkpoint`` segment (Hugging Face's
#: ``gradient_checkpointing_enable(use_reentrant=True)`` wraps each layer's forward in one,
#: with the module's hooks outside): its inside runs without a graph until the backward
#: pass, so it cannot be walked. A candidate whose output is such a segment fed directly
#: by its input is taken as a block: same shape in and out, checkpointed as a unit.
OPAQUE_SEGMENT = "CheckpointFunctionBackward"
#: Autograd nodes a skip-path search visits at most: a block's skip path is a handful of
#: nodes from its output; the search stops at the first weight on each branch.
SKIP_PATH_LIMIT = 64


def block_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every child of a ``ModuleList``/``Sequential`` that
    has children of its own and is not itself such a container, in registration order."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    for name, parent in model.named_modules():
        if not isinstance(parent, BLOCK_CONTAINERS):
            continue
        for child_name, child in parent.named_children():
            if (
                id(child) not in seen
                and not isinstance(child, BLOCK_CONTAINERS)
                and any(True for _ in child.children())
            ):
                seen.add(id(child))
                found.append((f"{name}.{child_name}" if name else child_name, child))
    return found


def first_input(args: tuple, kwargs: Mapping[str, object]) -> torch.Tensor | None:
    """The first floating-point tensor among a forward's positional, then keyword,
    arguments (Hugging Face layers take the hidden states by keyword at times)."""
    tensors = floating_tensors(args) or floating_tensors(dict(kwargs))
    return tensors[0] if tensors else None


def _node_name(node: object) -> str:
    return type(node).__name__.rstrip("0123456789")


def _is_source(node: object, target: object, source: torch.Tensor) -> bool:
    """Whether ``node`` is the source's: its ``grad_fn``, or a leaf's accumulator."""
    if target is not None:
        return node is target
    return getattr(node, "variable", None) is source


def has_skip_path(output: torch.Tensor, source: torch.Tensor) -> bool:
    """Whether ``output`` depends on ``source`` through at least one addition along a path
    of :data:`SKIP_PATH_NODES` only (at most :data:`SKIP_PATH_LIMIT` nodes visited).

    ``source`` is found as its ``grad_fn``, or as the ``AccumulateGrad`` node of a leaf
    (a reentrant checkpoint's recompute feeds the block a detached leaf).
    """
    target = source.grad_fn
    start = output.grad_fn
    if start is None or not source.requires_grad:
        return False
    stack: list[tuple[object, bool]] = [(start, False)]
    seen: set[tuple[int, bool]] = set()
    while stack and len(seen) < SKIP_PATH_LIMIT:
        node, added = stack.pop()
        if (id(node), added) in seen:
            continue
        seen.add((id(node), added))
        if _is_source(node, target, source):
            if added:
                return True
            continue
        name = _node_name(node)
        if name == OPAQUE_SEGMENT:
            return any(_is_source(parent, target, source) for parent, _ in node.next_functions)  # type: ignore[attr-defined]  # autograd Node
        if name not in SKIP_PATH_NODES:
            continue
        through_add = added or name == "AddBackward"
        for parent, _ in node.next_functions:  # type: ignore[attr-defined]  # autograd Node
            if parent is not None:
                stack.append((parent, through_add))
    return False


def is_block_call(args: tuple, kwargs: Mapping[str, object], output: object) -> bool:
    """Whether one forward call of a block candidate is a residual block's: same shape in
    and out (first tensors), and a skip path from the output back to the input."""
    source = first_input(args, kwargs)
    outputs = floating_tensors(output)
    if source is None or not outputs or outputs[0].shape != source.shape:
        return False
    return has_skip_path(outputs[0], source)
