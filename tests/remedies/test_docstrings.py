"""Every remedy's docstring example runs (doctest), so the documentation cannot rot."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import backprobe.remedies

MODULES = sorted(
    f"backprobe.remedies.{m.name}" for m in pkgutil.iter_modules(backprobe.remedies.__path__)
)


def test_every_remedy_module_is_listed():
    assert {m.rsplit(".", 1)[1] for m in MODULES} >= {
        "activations",
        "clipping",
        "esn",
        "init",
        "optim",
        "regularizer",
        "tbptt",
    }


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} has no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_public_names_are_exported():
    for name in backprobe.remedies.__all__:
        assert getattr(backprobe.remedies, name) is not None
