"""The one LightningModule: loss and torchmetrics chosen from the TaskSpec.

classification (per token or per sequence): cross-entropy, accuracy;
regression (per step or per sequence): MSE loss, RMSE. Padded positions (``lengths``) and the
``eval_warmup`` leading steps of per-step tasks are left out of loss and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn

from ssm_lab.data.spec import TaskSpec
from ssm_lab.metrics import build_metrics
from ssm_lab.optim import build_optimizer


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops and is recorded as failed."""


class SequenceTask(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        spec: TaskSpec,
        optimizer: Callable,
        scheduler: Callable | None = None,
        recurrence_lr: float | None = None,
    ) -> None:
        super().__init__()
        self.model, self.spec = model, spec
        self.optimizer_factory, self.scheduler_factory, self.recurrence_lr = optimizer, scheduler, recurrence_lr
        self.metrics = nn.ModuleDict({f"{split}_metrics": build_metrics(spec) for split in ("train", "val", "test")})

    def _valid_positions(self, batch: dict[str, Tensor], length: int) -> Tensor | None:
        """(B, L) bool of the positions that count, or None when all do."""
        lengths = batch.get("lengths")
        warmup = self.spec.eval_warmup if self.spec.per_step else 0
        if lengths is None and warmup == 0:
            return None
        steps = torch.arange(length, device=batch["inputs"].device)
        mask = steps >= warmup
        if lengths is not None:
            mask = mask & (steps < lengths.unsqueeze(1))
        return mask.expand(batch["inputs"].shape[0], -1)

    def _predictions(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Model outputs and targets, flattened to the positions that count."""
        outputs, targets = self.model(batch["inputs"], lengths=batch.get("lengths")), batch["targets"]
        if self.spec.per_step:
            mask = self._valid_positions(batch, outputs.shape[1])
            if mask is not None:
                return outputs[mask], targets[mask]
            return outputs.flatten(0, 1), targets.flatten(0, 1)
        return outputs, targets

    def _shared_step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        outputs, targets = self._predictions(batch)
        if self.spec.is_classification:
            loss = nn.functional.cross_entropy(outputs, targets)
        else:
            outputs = outputs.reshape(targets.shape)
            loss = nn.functional.mse_loss(outputs, targets)
        metrics = self.metrics[f"{split}_metrics"]
        metrics.update(outputs.detach(), targets)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True, batch_size=len(targets))
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, on_step=False, on_epoch=True, prog_bar=split != "train")
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(f"training loss is {loss.item()} at step {self.global_step}")
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optimizer_factory, self.recurrence_lr)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
