"""The one LightningModule: loss and torchmetrics chosen from the TaskSpec.

classification (per token or per sequence): cross-entropy, accuracy;
regression (per step or per sequence): MSE loss, RMSE. Padded positions (``lengths``) and the
``eval_warmup`` leading steps of per-step tasks are left out of loss and metrics. Batches with
``integration_timesteps`` (irregular sampling) pass them to the model. With ``cuda_graphs`` the training
forward + backward of the model are replayed from CUDA graphs (``ssm_lab.cuda_graphs``).

A model built with ``readout="least_squares"`` (random features, e.g. ``model=lcde_random_ols``)
is not trained by gradient: each training batch adds its features and targets (one-hot for
classes) to the normal equations, and the decoder is set to the ridge least-squares solution over
every training batch seen so far.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn

from ssm_lab.cuda_graphs import GraphedTraining
from ssm_lab.data.spec import TaskSpec
from ssm_lab.metrics import build_metrics
from ssm_lab.optim import build_optimizer


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops and is recorded as failed."""


class LeastSquaresReadout(nn.Module):
    """Normal equations of a linear readout with bias, accumulated in float64 (buffers, so a
    checkpoint resumes the fit): gram = sum [f, 1]^T [f, 1], cross = sum [f, 1]^T y."""

    def __init__(self, d_features: int, d_output: int, ridge: float) -> None:
        super().__init__()
        self.ridge = ridge
        self.register_buffer("gram", torch.zeros(d_features + 1, d_features + 1, dtype=torch.float64))
        self.register_buffer("cross", torch.zeros(d_features + 1, d_output, dtype=torch.float64))

    def update(self, features: Tensor, targets: Tensor) -> None:
        """features: (n, d_features), targets: (n, d_output)."""
        design = torch.cat([features, torch.ones_like(features[:, :1])], dim=1).double()
        self.gram += design.T @ design
        self.cross += design.T @ targets.double()

    def solve(self) -> tuple[Tensor, Tensor]:
        """(weight: (d_output, d_features), bias: (d_output,)) minimising the squared error
        + ridge * mean(diag(gram)) * ||weight||^2 (the bias is not penalised)."""
        penalty = torch.eye(len(self.gram), dtype=self.gram.dtype, device=self.gram.device)
        penalty[-1, -1] = 0
        scale = self.ridge * self.gram.diagonal().mean().clamp_min(1e-12)
        solution = torch.linalg.solve(self.gram + scale * penalty, self.cross)
        return solution[:-1].T, solution[-1]


class SequenceTask(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        spec: TaskSpec,
        optimizer: Callable,
        scheduler: Callable | None = None,
        recurrence_lr: float | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.spec = model, spec
        self.optimizer_factory, self.scheduler_factory, self.recurrence_lr = optimizer, scheduler, recurrence_lr
        self.metrics = nn.ModuleDict({f"{split}_metrics": build_metrics(spec) for split in ("train", "val", "test")})
        self.least_squares = None
        if getattr(model, "readout", "trained") == "least_squares":
            self.least_squares = LeastSquaresReadout(model.decoder.in_features, spec.d_output, model.ridge)
        if cuda_graphs and self.least_squares is not None:
            raise ValueError("trainer.cuda_graphs=true replays a gradient step; a least-squares readout takes none")
        # a plain attribute, not a submodule: the checkpoint's keys stay the model's own
        self.graphed = GraphedTraining(model) if cuda_graphs else None
        self._unchecked_losses: deque[tuple[int, Tensor, torch.cuda.Event]] = deque()  # _check_finite

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

    @staticmethod
    def _model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        extra = {"integration_timesteps": batch["integration_timesteps"]} if "integration_timesteps" in batch else {}
        return {"lengths": batch.get("lengths"), **extra}

    def _counted(self, batch: dict[str, Tensor], outputs: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs (per-step or per-sequence) and targets, flattened to the positions that count."""
        targets = batch["targets"]
        if self.spec.per_step:
            mask = self._valid_positions(batch, outputs.shape[1])
            if mask is not None:
                return outputs[mask], targets[mask]
            return outputs.flatten(0, 1), targets.flatten(0, 1)
        return outputs, targets

    def _predictions(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        network = self.model if self.graphed is None else self.graphed
        return self._counted(batch, network(batch["inputs"], **self._model_inputs(batch)))

    def _shared_step(self, batch: dict[str, Tensor], split: str, log_metrics: bool = True) -> Tensor:
        outputs, targets = self._predictions(batch)
        if self.spec.is_classification:
            loss = nn.functional.cross_entropy(outputs, targets)
        else:
            outputs = outputs.reshape(targets.shape)
            loss = nn.functional.mse_loss(outputs, targets)
        metrics = self.metrics[f"{split}_metrics"]
        metrics.update(outputs.detach(), targets)
        if split != "train":
            self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        elif log_metrics or self._logs_this_step():  # the run record takes the epoch's last loss
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(targets))
        if log_metrics:
            logged = {f"{split}/{k}": v for k, v in metrics.items()}
            self.log_dict(logged, on_step=False, on_epoch=True, prog_bar=split != "train")
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this training step's values (every ``trainer.log_every_n_steps``). The
        training loss is logged on those steps and on each epoch's last (the run record's value): on the others
        Lightning would keep it only until the next, after ~0.6 ms of per-call bookkeeping. The progress bar's
        loss changes on those steps."""
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def _ends_training_epoch(self, batch_idx: int) -> bool:
        """Whether this training step is its epoch's last (or the run's). The metrics' states gather every step's
        update, and Lightning computes a logged metric object over them at the epoch's end, then resets it: logging
        it once per epoch gives the same value as at every step, without Lightning's per-call bookkeeping (about
        1 ms a step, a fifth of a small model's step replayed from CUDA graphs on the H100 machine). An epoch of
        unknown length (an iterable dataset) logs at every step."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        return math.isinf(batches) or batch_idx + 1 >= batches or 0 < trainer.max_steps <= trainer.global_step + 1

    def _fit_readout(self, batch: dict[str, Tensor]) -> None:
        """Add the batch to the normal equations and set the decoder to their solution. The features are the
        evaluation ones (dropout off): the readout is solved for the features it will read."""
        training = self.model.training
        with torch.no_grad():
            self.model.eval()
            try:
                features = self.model.features(batch["inputs"], **self._model_inputs(batch))
            finally:
                self.model.train(training)
            features, targets = self._counted(batch, features)
            if self.spec.is_classification:
                targets = nn.functional.one_hot(targets, self.spec.d_output)
            self.least_squares.update(features, targets.reshape(len(features), -1))
            weight, bias = self.least_squares.solve()
            self.model.decoder.weight.copy_(weight)
            self.model.decoder.bias.copy_(bias)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        log_metrics = self._ends_training_epoch(batch_idx)
        if self.least_squares is not None:
            self._fit_readout(batch)
            self._shared_step(batch, "train", log_metrics)
            return None  # nothing to back-propagate: the readout was solved, not stepped
        loss = self._shared_step(batch, "train", log_metrics)
        self._check_finite(loss, wait=log_metrics)
        return loss

    def _check_finite(self, loss: Tensor, wait: bool) -> None:
        """Raise NonFiniteLossError for a NaN or infinite training loss: on CPU at once; on CUDA without making the
        host wait for the GPU. There the loss is copied to pinned host memory as the step computes it and read once
        the copy has landed: at a later step, or at the epoch's last step (``wait``), which waits for every copy, so
        no evaluation or checkpoint follows an unchecked loss. Reading it at once (``.item()``) held the host at
        every step until the GPU had finished it, so the next step's launches could not overlap its work: the one
        synchronisation left in a training step from CUDA graphs. With several processes (DDP) each reads its loss at
        once, as before: ranks whose copies land at different steps would stop at different steps, and a rank that
        stops first leaves the others waiting in their next collective."""
        if not loss.is_cuda or self.trainer.world_size > 1:
            self._raise_if_non_finite(loss.item(), self.global_step)
            return
        copy = loss.detach().to("cpu", non_blocking=True)
        landed = torch.cuda.Event()
        landed.record()
        self._unchecked_losses.append((self.global_step, copy, landed))
        while self._unchecked_losses and (wait or self._unchecked_losses[0][2].query()):
            step, copy, landed = self._unchecked_losses.popleft()
            landed.synchronize()
            self._raise_if_non_finite(copy.item(), step)

    @staticmethod
    def _raise_if_non_finite(loss: float, step: int) -> None:
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"training loss is {loss} at step {step}")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        if self.least_squares is not None:
            return None  # closed-form readout: no parameter is trained by gradient
        optimizer = build_optimizer(self.model, self.optimizer_factory, self.recurrence_lr)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
