"""Turning what a user passes to a theory function into a detached tensor."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import TheoryInputError


def as_tensor(x: object, what: str, example: str) -> torch.Tensor:
    """``x`` (tensor, array or nested sequence) as a detached tensor of its own dtype.

    ``what`` names the argument and ``example`` says what to pass instead, in the error
    a user gets for anything that is not numeric.
    """
    try:
        return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise TheoryInputError(
            f"Expected {what} as a torch tensor or numpy array but got {type(x).__name__}; "
            f"pass {example}."
        ) from err
