"""Pooling of per-step features into one vector per sequence, for per-sequence tasks."""

from __future__ import annotations

import torch
from torch import Tensor

POOLS = ("mean", "last")


def pool_sequence(x: Tensor, lengths: Tensor | None, how: str = "mean") -> Tensor:
    """x: (B, L, H) -> (B, H): the mean over the valid positions, or the last valid one.
    ``lengths`` (B,) marks right padding; None means every position is valid."""
    if how not in POOLS:
        raise ValueError(f"unknown pool {how!r}; choose one of {', '.join(POOLS)}")
    if lengths is None:
        return x.mean(dim=1) if how == "mean" else x[:, -1]
    if how == "last":
        return x[torch.arange(x.shape[0], device=x.device), lengths - 1]
    mask = (torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)).unsqueeze(-1)
    return (x * mask).sum(dim=1) / lengths.unsqueeze(1).to(x.dtype)
