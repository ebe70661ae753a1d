"""MLflow: ``MLflowSink`` logs the probe's statistics as metrics of an MLflow run.

::

    import mlflow
    from backprobe.integrations import MLflowSink

    with mlflow.start_run() as run:
        probe = bp.Probe(model, sinks=[MLflowSink(run.info.run_id)])
        ...

Metrics are keyed as :mod:`~backprobe.integrations.scalars` says, with ``step`` the
probe's step, and sent in batches through ``MlflowClient.log_batch`` (one request per
recorded step, split at MLflow's limit of metrics per request). The MLflow run stays the
caller's: the sink never ends it.
"""

from __future__ import annotations

import time

from ..errors import ProbeConfigError
from ._driver import missing_framework
from .scalars import StepScalars

try:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
except ImportError as error:
    raise missing_framework("mlflow", "MLflow", "mlflow") from error

#: MLflow's most metrics in one log_batch request.
BATCH_LIMIT = 1000


class MLflowSink(StepScalars):
    """Logs each recorded step as metrics of an MLflow run.

    Args:
        run_id: the MLflow run; default the active one (``mlflow.active_run()``).
        tracking_uri: the tracking server or store; default MLflow's own
            (``MLFLOW_TRACKING_URI``, ``mlflow.set_tracking_uri``).
        prefix: first part of every metric key.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        tracking_uri: str | None = None,
        prefix: str = "backprobe",
    ) -> None:
        super().__init__(prefix)
        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise ProbeConfigError(
                    "Expected an MLflow run id or an active run, got neither. Pass "
                    "MLflowSink(run.info.run_id), or create the sink inside "
                    "`with mlflow.start_run():`."
                )
            run_id = active.info.run_id
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)

    def write(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH_LIMIT])

    def flush(self) -> None:
        """Each step is sent when it is appended; nothing is held here."""
