"""A stored run written to a tracker after the fact (``backprobe export``): TensorBoard
event files, a W&B run, or an MLflow run. Works on any stored run, also one whose process
died: what was flushed is written, and the tracker's run is named after it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ProbeConfigError
from ..store.run import StoredRun


def _to_tensorboard(run: StoredRun, out: Path, tracking_uri: str | None) -> str:
    from torch.utils.tensorboard import SummaryWriter

    from .tensorboard import write_run

    writer = SummaryWriter(str(out / f"{run.run_id}-{run.name}"))
    steps = write_run(run, writer)
    writer.close()
    return f"{steps} steps to TensorBoard logs in {writer.log_dir}"


def _to_wandb(run: StoredRun, out: Path, tracking_uri: str | None) -> str:
    import wandb

    from .wandb import WandbSink

    out.mkdir(parents=True, exist_ok=True)
    tracked = wandb.init(name=run.name, config=run.info.config, dir=str(out))
    steps = WandbSink(tracked).write_run(run)
    tracked.finish(exit_code=0 if run.status == "finished" else 1)
    return f"{steps} steps to W&B run {tracked.id} (files in {out})"


def _to_mlflow(run: StoredRun, out: Path, tracking_uri: str | None) -> str:
    from mlflow.tracking import MlflowClient

    from .mlflow import MLflowSink

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("backprobe")
    experiment_id = (
        client.create_experiment("backprobe") if experiment is None else experiment.experiment_id
    )
    tracked = client.create_run(experiment_id, run_name=run.name)
    steps = MLflowSink(tracked.info.run_id, tracking_uri=tracking_uri).write_run(run)
    status = "FINISHED" if run.status == "finished" else "FAILED"
    client.set_terminated(tracked.info.run_id, status)
    return f"{steps} steps to MLflow run {tracked.info.run_id} ({client.tracking_uri})"


#: Each tracker and how a stored run is written to it.
TRACKERS: dict[str, Callable[[StoredRun, Path, str | None], str]] = {
    "tensorboard": _to_tensorboard,
    "wandb": _to_wandb,
    "mlflow": _to_mlflow,
}


def export_run(run: StoredRun, to: str, *, out: Path, tracking_uri: str | None = None) -> str:
    """Write every recorded step of ``run`` to the tracker ``to``: TensorBoard event files
    under ``out``, a W&B run (its files under ``out``; ``WANDB_MODE`` and ``WANDB_PROJECT``
    apply), or an MLflow run in the experiment "backprobe" of ``tracking_uri`` (default
    MLflow's own). The tracker run is named after the stored run; W&B and MLflow runs end
    failed when it failed. Returns where it went, in words."""
    if to not in TRACKERS:
        raise ProbeConfigError(
            f"Expected a tracker among {', '.join(TRACKERS)}, got {to!r}; "
            "e.g. backprobe export RUN --to tensorboard."
        )
    return TRACKERS[to](run, out, tracking_uri)
