"""A probe used the wrong way round: ``probe.step()`` at a step whose backward pass never
ran, so that no probed parameter has a gradient. Named as such (kind ``no_gradient``)
instead of being taken for a non-finite gradient."""

from __future__ import annotations

import numpy as np

from ..store.view import RunView
from ._steps import no_gradient_rows
from .finding import Finding, Remedy

#: What the user reads, and what to do.
NO_GRADIENT = "no gradient reached the probed layers — call loss.backward() before probe.step()"


def no_gradient_findings(run: RunView) -> list[Finding]:
    """One error finding when some recorded steps had no gradient on any probed
    parameter: the first such step, and how many there were."""
    rows = np.flatnonzero(no_gradient_rows(run))
    if rows.size == 0:
        return []
    steps = [int(s) for s in run.steps[rows]]
    first = steps[0]
    every = rows.size == run.steps.size
    return [
        Finding(
            kind="no_gradient",
            severity="error",
            summary=f"{NO_GRADIENT} (step {first}"
            + (
                ", every recorded step)"
                if every
                else f", {rows.size} of {run.steps.size} recorded steps)"
            ),
            where={"step": first, "steps": steps[:20]},
            evidence={
                "first_step": first,
                "steps_without_gradient": int(rows.size),
                "steps_recorded": int(run.steps.size),
            },
            cause=(
                "probe.step() reads the gradients of the backward pass that preceded it; at "
                "these steps no probed parameter had one (.grad was None), so the backward "
                "pass did not run, ran on a loss that does not depend on the probed layers, "
                "or the gradients were cleared (zero_grad(set_to_none=True)) before "
                "probe.step()."
            ),
            remedies=(
                Remedy(
                    "Run the backward pass before probe.step()",
                    "loss.backward(); probe.step(loss); optimizer.step(); optimizer.zero_grad()",
                    "The probe measures the gradients that loss.backward() leaves in .grad.",
                ),
            ),
            step=first,
        )
    ]
