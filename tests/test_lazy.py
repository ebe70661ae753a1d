"""The public names of backprobe and backprobe.integrations are imported on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import backprobe as bp


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in bp.__all__:
        assert getattr(bp, name) is not None
        assert name in dir(bp)


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    with pytest.raises(AttributeError, match="module 'backprobe' has no attribute 'nope'"):
        _ = bp.nope  # type: ignore[attr-defined]


def test_importing_backprobe_loads_no_torch_until_a_name_needs_it() -> None:
    code = (
        "import sys, backprobe as bp; before = 'torch' in sys.modules; bp.Probe; "
        "print(before, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
