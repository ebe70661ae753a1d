"""BackprobeTrainerCallback in a real transformers.Trainer on a tiny random GPT-2 records
what a plain loop records; no download (HF_HUB_OFFLINE)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import backprobe as bp
from backprobe import Probe, open_run
from backprobe.store import RunDatabase
from backprobe.store.view import LAYER_SERIES

transformers = pytest.importorskip("transformers")
from backprobe.integrations.metrics import VERDICT_CODES, findings_text  # noqa: E402
from backprobe.integrations.transformers import BackprobeTrainerCallback  # noqa: E402

from .helpers import hook_count  # noqa: E402

STEPS = 3
BATCH = 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")


def tiny_gpt2():
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def dataset(size: int) -> list[dict[str, torch.Tensor]]:
    """``size`` sequences: every optimizer step sees the whole set, in the Trainer's order
    (the statistics are sums over samples: the order does not matter)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (size, 12), generator=gen)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


class GradNorms(transformers.TrainerCallback):
    """Per-parameter gradient norms, straight from torch, at the same event."""

    def __init__(self) -> None:
        self.norms: list[dict[str, float]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append({n: float(p.grad.double().norm()) for n, p in model.named_parameters()})


@pytest.mark.parametrize("accumulate", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_trainer_callback_records_what_a_plain_loop_records(tmp_path, accumulate):
    model = tiny_gpt2()
    twin = copy.deepcopy(model)
    callback, reference = BackprobeTrainerCallback(db=tmp_path / "runs.db", name="hf"), GradNorms()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        gradient_accumulation_steps=accumulate,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=dataset(BATCH * accumulate),
        callbacks=[callback, reference],
    )
    trainer.train()
    probe = callback.probe
    assert probe.steps.tolist() == list(range(STEPS))
    assert open_run(tmp_path / "runs.db", "hf").status == "finished"

    # Gradient norms per layer: the sum of squares of its own parameters' norms.
    layers = probe.layers
    for row, norms in enumerate(reference.norms):
        for j, layer in enumerate(layers):
            own = [v for n, v in norms.items() if n.rsplit(".", 1)[0] == layer]
            if own:
                assert probe.history("grad_norm")[row, j] == pytest.approx(
                    np.sqrt(np.sum(np.square(own))), rel=1e-6
                ), layer

    # Every statistic: the same model, batches and SGD in a plain loop.
    batch = {
        k: torch.stack([d[k] for d in dataset(BATCH * accumulate)]) for k in ("input_ids", "labels")
    }
    opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    expected = Probe(twin, db=None)
    with expected:
        for _ in range(STEPS):
            # as the Trainer does: the loss divided by the step's label count
            loss = twin(**batch, num_items_in_batch=batch["labels"].numel()).loss
            loss.backward()
            expected.step(loss)
            opt.step()
            opt.zero_grad()
    assert expected.layers == layers
    assert "transformer.h.0.attn.c_attn" in layers
    # Batches in another order: float32 sums differ in the last bits, which shows most in
    # means near 0 (LayerNorm outputs: |act_mean| ~ 1e-6 of activations ~ 1).
    # The position embedding's output [1, T, C] is shared by the batch: its dL/d output is
    # a sum over samples, and its norm over two micro-batches is not the norm over one.
    shared = layers.index("transformer.wpe")
    for stat in (*LAYER_SERIES, "loss"):
        actual, wanted = probe.history(stat), expected.history(stat)
        if stat == "signal_norm" and accumulate > 1:
            actual, wanted = np.delete(actual, shared, 1), np.delete(wanted, shared, 1)
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-7, err_msg=stat)


class Failing(transformers.TrainerCallback):
    """Raises at the given optimizer step of the first train() only."""

    def __init__(self, at: int) -> None:
        self.at, self.armed = at, True

    def on_step_begin(self, args, state, control, **kwargs):
        if self.armed and state.global_step == self.at:
            self.armed = False
            raise RuntimeError("interrupted on purpose")


def test_a_caught_exception_fails_the_run_and_a_second_train_starts_clean(tmp_path):
    callback = BackprobeTrainerCallback(db=tmp_path / "runs.db", name="hf")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    model = tiny_gpt2()
    hooks = hook_count(model)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset(BATCH), callbacks=[callback, Failing(1)]
    )
    with pytest.raises(RuntimeError, match="on purpose"):
        trainer.train()
    first = callback.probe
    trainer.train()
    assert not first.attached
    assert open_run(tmp_path / "runs.db", first.run_id).status == "failed"
    assert callback.probe is not first and callback.probe.steps.tolist() == list(range(STEPS))
    assert hook_count(model) == hooks  # every hook is gone after train()
    # one loss per forward (a random model's is near ln 64), not two hooks adding it twice
    assert callback.probe.history("loss").max() < 1.5 * np.log(64)


def test_the_log_history_gets_the_norm_clipping_left_beside_the_trainers_own(tmp_path):
    """HF's default max_grad_norm=1.0: the Trainer logs the norm before clipping as
    grad_norm, the probe stores and logs the one clipping left, labelled post-clip."""
    callback = BackprobeTrainerCallback(every=1, db=None)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=0.5,
        optim="sgd",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=tiny_gpt2(), args=args, train_dataset=dataset(BATCH), callbacks=[callback]
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "grad_norm" in entry]
    post = callback.probe.history("grad_norm_postclip")
    assert [e["backprobe/grad_norm_postclip"] for e in logged] == pytest.approx(post, rel=1e-6)
    pre = np.array([e["grad_norm"] for e in logged])
    assert (pre > 1.5).any()  # clipping happened: the Trainer's norm is above 1
    np.testing.assert_allclose(post, np.minimum(pre, 1.0), rtol=1e-4)


def clipping_args(tmp_path, **overrides) -> transformers.TrainingArguments:
    """HF's default clipping (max_grad_norm=1.0), a learning rate that makes it clip, a
    log at every step."""
    options = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": BATCH,
        "max_steps": STEPS,
        "learning_rate": 0.5,
        "optim": "sgd",
        "save_strategy": "no",
        "logging_steps": 1,
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }
    return transformers.TrainingArguments(**options)


def test_install_hands_the_statistics_and_the_preclip_norm_to_tensorboard(tmp_path, monkeypatch):
    """report_to targets get the chosen statistics (the Trainer calls them before the
    callbacks passed in callbacks=[…]); the stored pre-clip norm is the Trainer's own."""
    tensorboard = "tensorboard.backend.event_processing.event_accumulator"
    event_accumulator = pytest.importorskip(tensorboard)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = clipping_args(tmp_path, report_to=["tensorboard"])
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=dataset(BATCH))
    callback = BackprobeTrainerCallback(every=1, db=None).install(trainer)
    assert callback.install(trainer) is callback  # a second install changes nothing
    assert trainer.callback_handler.callbacks.count(callback) == 1
    trainer.train()
    probe = callback.probe
    assert probe.steps.tolist() == list(range(STEPS))

    # the Trainer's grad_norm is the norm before clipping, and it clipped
    logged = [entry for entry in trainer.state.log_history if "grad_norm" in entry]
    hf_norm = np.array([e["grad_norm"] for e in logged])
    assert (hf_norm > 1.5).any()
    np.testing.assert_allclose(probe.history("grad_norm_preclip"), hf_norm, rtol=1e-6)
    postclip = probe.history("grad_norm_postclip")
    np.testing.assert_allclose(postclip, np.minimum(hf_norm, 1.0), rtol=1e-4)
    assert np.isnan(probe.history("update_to_weight")).all()  # updates= is off by default

    events = event_accumulator.EventAccumulator(
        str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0}
    )
    events.Reload()
    grad = probe.history("grad_norm")
    expected = {
        "grad_norm_preclip": probe.history("grad_norm_preclip"),
        "grad_norm_postclip": probe.history("grad_norm_postclip"),
        "grad_norm/transformer.wte": grad[:, probe.layers.index("transformer.wte")],
        "grad_norm/lm_head": grad[:, probe.layers.index("lm_head")],
    }
    for name, values in expected.items():
        scalars = events.Scalars(f"train/backprobe/{name}")  # HF's tag: train/<key>
        assert [s.step for s in scalars] == [step + 1 for step in probe.steps]  # global_step
        np.testing.assert_allclose([s.value for s in scalars], values, rtol=1e-6, err_msg=name)
        in_history = [e[f"backprobe/{name}"] for e in logged]
        np.testing.assert_allclose(in_history, values, rtol=1e-6, err_msg=name)
    ratio = [s.value for s in events.Scalars("train/backprobe/first_last_ratio")]
    assert len(ratio) == STEPS and all(r > 0 for r in ratio)
    # the verdict's ratio, step by step: GPT-2's tied embedding and head do not read 1
    assert np.median(ratio) == pytest.approx(bp.verdict(probe).ratio, rel=1e-5)
    assert all(abs(r - 1) > 1e-3 for r in ratio)

    # The Trainer's last log (its summary, after the last step) gets the verdict and the
    # findings: numbers for every target, the text for TensorBoard's text tab.
    final = trainer.state.log_history[-1]
    judged, found = bp.verdict(probe), bp.findings(probe)
    assert "train_runtime" in final and final["step"] == STEPS
    assert final["backprobe/verdict"] == VERDICT_CODES.index(judged.status)
    for severity in ("info", "warning", "error"):
        count = sum(f.severity == severity for f in found)
        assert final[f"backprobe/findings/{severity}"] == count
    text = final["backprobe/findings"]
    assert text == findings_text(judged, found) and str(judged) in text
    assert [(s.step, s.value) for s in events.Scalars("train/backprobe/verdict")] == [
        (STEPS, final["backprobe/verdict"])
    ]
    (event,) = events.Tensors("train/backprobe/findings/text_summary")  # add_text's tag
    assert event.step == STEPS and event.tensor_proto.string_val[0].decode() == text


def test_install_fails_the_run_the_moment_train_raises(tmp_path):
    model = tiny_gpt2()
    args = clipping_args(tmp_path, report_to=[], logging_strategy="no")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset(BATCH), callbacks=[Failing(1)]
    )
    callback = BackprobeTrainerCallback(db=tmp_path / "runs.db", name="hf").install(trainer)
    hooks = hook_count(model)
    with pytest.raises(RuntimeError, match="on purpose"):
        trainer.train()
    first = callback.probe
    assert not first.attached and hook_count(model) == hooks  # before any other train()
    run = open_run(tmp_path / "runs.db", first.run_id)
    assert run.status == "failed" and run.info.error == "RuntimeError: interrupted on purpose"
    trainer.train()
    assert callback.probe is not first and callback.probe.steps.tolist() == list(range(STEPS))
    assert not callback.probe.attached and hook_count(model) == hooks


def test_a_resumed_train_continues_the_run_at_the_global_step(tmp_path):
    """Checkpoints every 2 steps keep the run's id in trainer_state.json: a new Trainer
    resumed from checkpoint-2 continues the same run at step 2, its steps 2-3 replaced."""
    args = clipping_args(tmp_path, max_steps=4, report_to=[], save_strategy="steps", save_steps=2)
    first = BackprobeTrainerCallback(every=1)
    trainer = transformers.Trainer(
        model=tiny_gpt2(), args=args, train_dataset=dataset(BATCH), callbacks=[first]
    )
    trainer.train()
    run_id = first.probe.run_id
    db = tmp_path / "out" / "backprobe-runs" / "runs.db"
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["backprobe"] == {"run_id": run_id}
    loss_before = open_run(db, run_id).history("loss")

    # the Trainer rebuilds callbacks stored under their class name: this one stays
    args.restore_callback_states_from_checkpoint = True
    resumed = BackprobeTrainerCallback(every=1)
    trainer = transformers.Trainer(
        model=tiny_gpt2(), args=args, train_dataset=dataset(BATCH), callbacks=[resumed]
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert resumed in trainer.callback_handler.callbacks
    assert resumed.probe.run_id == run_id
    with RunDatabase(db, read_only=True) as store:
        assert [r.id for r in store.runs()] == [run_id]
    run = open_run(db, run_id)
    assert run.steps.tolist() == [0, 1, 2, 3] and run.status == "finished"
    # steps 2-3 trained again from the checkpoint's weights: the same losses
    np.testing.assert_allclose(run.history("loss"), loss_before, rtol=1e-4)


class Updates(transformers.TrainerCallback):
    """||Δθ|| / ||θ|| of one module's parameters over each optimizer step, by hand."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.ratios = module, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before = [p.detach().clone() for p in self.module.parameters()]

    def on_optimizer_step(self, args, state, control, **kwargs):
        pairs = zip(self.module.parameters(), self.before, strict=True)
        delta = torch.cat([(a.detach() - b).flatten() for a, b in pairs])
        weight = torch.cat([b.flatten() for b in self.before])
        self.ratios.append(float(delta.double().norm() / weight.double().norm()))


def test_updates_measures_what_the_trainers_optimizer_applied(tmp_path):
    """updates=True hands the Trainer's torch optimizer (inside accelerate's wrapper) to
    the probe: its update_to_weight is the step's ||Δθ|| / ||θ||, Adam's step measured."""
    model = tiny_gpt2()
    layer = "transformer.h.0.mlp.c_fc"
    by_hand = Updates(model.get_submodule(layer))
    args = clipping_args(tmp_path, report_to=[], logging_strategy="no", optim="adamw_torch")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset(BATCH), callbacks=[by_hand]
    )
    callback = BackprobeTrainerCallback(every=1, db=None, updates=True).install(trainer)
    trainer.train()
    probe = callback.probe
    column = probe.layers.index(layer)
    np.testing.assert_allclose(
        probe.history("update_to_weight")[:, column], by_hand.ratios, rtol=1e-5
    )
    assert (probe.history("adam_step")[:, column] > 0).all()


def test_every_hook_is_marked_as_overriding_the_trainer_callbacks():
    hooks = [n for n in vars(BackprobeTrainerCallback) if n.startswith("on_")]
    assert {"on_train_begin", "on_pre_optimizer_step", "on_log", "on_train_end"} <= set(hooks)
    for name in hooks:
        assert getattr(transformers.TrainerCallback, name)  # a hook the Trainer calls
        assert getattr(vars(BackprobeTrainerCallback)[name], "__override__", False), name
