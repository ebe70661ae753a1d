"""Optimisers and schedulers from a spec: torch's own classes with the given options."""

from __future__ import annotations

import pytest
import torch

from backprobe.errors import RemedyError
from backprobe.remedies import build_optimizer, build_scheduler, parse_spec


def _params():
    return torch.nn.Linear(3, 2).parameters()


def test_parse_spec_values():
    assert parse_spec("Adam: lr=1e-3, betas=0.9/0.98, amsgrad=True") == (
        "adam",
        {"lr": 1e-3, "betas": (0.9, 0.98), "amsgrad": True},
    )
    assert parse_spec("plateau:mode=min") == ("plateau", {"mode": "min"})
    assert parse_spec("sgd") == ("sgd", {})


@pytest.mark.parametrize(
    ("spec", "cls", "options"),
    [
        ("sgd:lr=0.1,momentum=0.9", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        ("adam:lr=1e-3", torch.optim.Adam, {"lr": 1e-3}),
        ("adagrad:lr=0.01", torch.optim.Adagrad, {"lr": 0.01}),
        ("rmsprop:lr=0.01,alpha=0.9", torch.optim.RMSprop, {"alpha": 0.9}),
        ("adamw:lr=1e-3,wd=0.1", torch.optim.AdamW, {"weight_decay": 0.1}),
    ],
)
def test_optimizers(spec, cls, options):
    opt = build_optimizer(spec, _params())
    assert type(opt) is cls
    for key, value in options.items():
        assert opt.defaults[key] == value


def test_schedulers_decay_the_learning_rate():
    opt = build_optimizer("sgd:lr=1.0", _params())
    sched = build_scheduler("step:size=2,gamma=0.5", opt)
    lrs = []
    for _ in range(5):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]
    assert type(build_scheduler("cosine:T_max=10", opt)).__name__ == "CosineAnnealingLR"
    assert build_scheduler("multistep:milestones=3", opt).milestones == {3: 1}
    assert build_scheduler("plateau:patience=2", opt).patience == 2


def test_errors_list_what_is_accepted():
    with pytest.raises(RemedyError, match="'sgd'"):
        build_optimizer("sgdd:lr=0.1", _params())
    with pytest.raises(RemedyError, match="momentum"):
        build_optimizer("sgd:lr=0.1,momentun=0.9", _params())
    with pytest.raises(RemedyError, match="key=value"):
        build_optimizer("sgd:0.1", _params())
    with pytest.raises(RemedyError, match="refused"):
        build_optimizer("sgd:lr=-1", _params())
    with pytest.raises(RemedyError, match="spec like"):
        parse_spec("")
