"""The one optimizer builder: parameter groups from tags set where parameters are made, and the
learning-rate schedule. Recurrence parameters (eigenvalues, step sizes) get their own lr and no
weight decay, as in S4, LRU and Mamba."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

_RECURRENCE_TAG = "_ssm_recurrence"


def mark_recurrence(*params: nn.Parameter) -> None:
    """Tag parameters that set a recurrence's dynamics: own lr, no weight decay."""
    for p in params:
        setattr(p, _RECURRENCE_TAG, True)


def param_groups(model: nn.Module, recurrence_lr: float | None) -> list[dict]:
    """Two groups: the rest (optimizer defaults) and tagged recurrence parameters (wd 0)."""
    regular, recurrence = [], []
    for p in model.parameters():
        if p.requires_grad:
            (recurrence if getattr(p, _RECURRENCE_TAG, False) else regular).append(p)
    groups = [{"params": regular, "name": "default"}]
    if recurrence:
        group = {"params": recurrence, "weight_decay": 0.0, "name": "recurrence"}
        if recurrence_lr is not None:
            if isinstance(recurrence_lr, bool) or not isinstance(recurrence_lr, int | float) or not recurrence_lr > 0:
                # torch checks the default lr only: a negative group lr would climb the loss
                raise ValueError(f"optim.recurrence_lr must be a positive number or null, got {recurrence_lr!r}")
            group["lr"] = recurrence_lr
        groups.append(group)
    return groups


def build_optimizer(
    model: nn.Module, optimizer: Callable[[Iterable], torch.optim.Optimizer], recurrence_lr: float | None = None
) -> torch.optim.Optimizer:
    """``optimizer`` is a partial from the optim config (``_partial_: true``)."""
    return optimizer(param_groups(model, recurrence_lr))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x lr at ``total_steps``."""
    if total_steps <= 0 or warmup_steps < 0:
        raise ValueError(
            f"optim.scheduler needs total_steps > 0 and warmup_steps >= 0 (set by trainer.max_steps and "
            f"scale.warmup_steps), got total_steps={total_steps}, warmup_steps={warmup_steps}"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
