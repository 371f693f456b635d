"""Which torchmetrics a task reports, chosen from its TaskSpec, and which way each improves."""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.wrappers import LambdaInputTransformer

from ssm_lab.data.spec import TaskSpec

#: Which way each logged metric improves, for the run record's "best" values.
#: rmse: in the targets' units; nrmse: RMSE / std of the targets; fit_index: 100 (1 - nrmse), in %.
METRIC_MODES = {"loss": "min", "accuracy": "max", "rmse": "min", "nrmse": "min", "fit_index": "max"}


class NormalizedRMSE(torchmetrics.NormalizedRootMeanSquaredError):
    """RMSE / std(y) per output (population std), averaged over outputs."""

    def __init__(self, num_outputs: int = 1) -> None:
        super().__init__(normalization="std", num_outputs=num_outputs)

    def compute(self) -> Tensor:
        return super().compute().mean()


class FitIndex(torchmetrics.regression.RelativeSquaredError):
    """The system-identification fit, 100 (1 - ||y - y_hat|| / ||y - mean(y)||) in percent per
    output, averaged over outputs: 100 is a perfect simulation, 0 no better than the mean."""

    def __init__(self, num_outputs: int = 1) -> None:
        super().__init__(num_outputs=num_outputs, squared=False)

    def compute(self) -> Tensor:
        return (100.0 * (1.0 - super().compute())).mean()


def _to_units(spec: TaskSpec):
    """y = scale * z + offset, broadcast over the last (output) dimension."""
    scale, offset = torch.tensor(spec.target_scale), torch.tensor(spec.target_offset)

    def transform(values: Tensor) -> Tensor:
        shape = values.shape if values.dim() > 1 else (*values.shape, 1)
        return (values.reshape(shape) * scale.to(values) + offset.to(values)).reshape(values.shape)

    return transform


def build_metrics(spec: TaskSpec) -> torchmetrics.MetricCollection:
    """Classification: accuracy. Regression: RMSE in the targets' units (undoing the data
    module's normalisation, ``spec.target_scale``); per-step regression (system identification)
    adds NRMSE and the fit index, which no affine rescaling changes. Updated with (predictions,
    targets) flattened to the positions that count."""
    if spec.is_classification:
        return torchmetrics.MetricCollection(
            {"accuracy": torchmetrics.classification.MulticlassAccuracy(spec.d_output, average="micro")}
        )
    rmse = torchmetrics.MeanSquaredError(squared=False)
    if spec.target_scale:
        to_units = _to_units(spec)
        rmse = LambdaInputTransformer(rmse, transform_pred=to_units, transform_target=to_units)
    metrics = {"rmse": rmse}
    if spec.output_kind == "step_regression":
        metrics["nrmse"] = NormalizedRMSE(num_outputs=spec.d_output)
        metrics["fit_index"] = FitIndex(num_outputs=spec.d_output)
    return torchmetrics.MetricCollection(metrics)
