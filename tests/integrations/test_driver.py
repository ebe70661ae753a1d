"""What the framework callbacks share: the message when the framework is missing."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    ("module", "frameworks", "message"),
    [
        ("lightning", ("lightning.pytorch", "pytorch_lightning"), "needs Lightning"),
        ("transformers", ("transformers",), "needs transformers"),
        ("wandb", ("wandb",), "needs wandb"),
        ("mlflow", ("mlflow", "mlflow.entities", "mlflow.tracking"), "needs MLflow"),
    ],
)
def test_an_integration_without_its_framework_says_what_to_install(
    monkeypatch, module, frameworks, message
):
    for name in frameworks:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, f"backprobe.integrations.{module}", raising=False)
    install = rf"pip install 'backprobe\[{module}\]'"
    with pytest.raises(ImportError, match=rf"integrations\.{module} {message}: {install}"):
        importlib.import_module(f"backprobe.integrations.{module}")
