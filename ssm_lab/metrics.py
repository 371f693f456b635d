"""Which torchmetrics a task reports, chosen from its TaskSpec, and which way each improves."""

from __future__ import annotations

import torchmetrics

from ssm_lab.data.spec import TaskSpec

#: Which way each logged metric improves, for the run record's "best" values.
METRIC_MODES = {"loss": "min", "accuracy": "max", "rmse": "min"}


def build_metrics(spec: TaskSpec) -> torchmetrics.MetricCollection:
    """Classification: accuracy; regression: RMSE. Updated with (predictions, targets) flattened
    to the positions that count."""
    if spec.is_classification:
        metrics = {"accuracy": torchmetrics.classification.MulticlassAccuracy(spec.d_output, average="micro")}
    else:
        metrics = {"rmse": torchmetrics.MeanSquaredError(squared=False)}
    return torchmetrics.MetricCollection(metrics)
