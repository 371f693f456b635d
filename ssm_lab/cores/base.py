"""Shared pieces of the core contract: input and mode checks, final states of padded batches, and the
residual skip folded into a readout."""

from __future__ import annotations

import torch
from torch import Tensor


def check_input(x: Tensor, d_model: int) -> None:
    """Raise a clear error unless x is (B, L, d_model) with at least one step."""
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"core input must be (B, L, {d_model}), got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"core input needs at least one step (L >= 1), got shape {tuple(x.shape)}")


def check_mode(mode: str, modes: tuple[str, ...], core: str) -> None:
    """Raise unless ``mode`` is one the core implements."""
    if mode not in modes:
        raise ValueError(f"{core} has no mode {mode!r}; choose one of {', '.join(modes)}")


def state_at_lengths(states: Tensor, lengths: Tensor | None) -> Tensor:
    """Final state of each sequence: states[b, lengths[b] - 1] (the last step when lengths is None).

    states: (B, L, ...) -> (B, ...). Right padding after a sequence never reaches its state.
    """
    if lengths is None:
        return states[:, -1]
    lengths = lengths.to(states.device)
    if lengths.shape != (states.shape[0],) or bool((lengths < 1).any()) or bool((lengths > states.shape[1]).any()):
        raise ValueError(
            f"lengths must be (B,) = ({states.shape[0]},) with values in 1..{states.shape[1]}, got {lengths.tolist()}"
        )
    index = (lengths - 1).view(-1, *([1] * (states.dim() - 1))).expand(-1, 1, *states.shape[2:])
    return torch.gather(states, 1, index).squeeze(1)


def fold_residual(C: Tensor, D: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(s C, I + s D) (1 + s D for a diagonal D given as a vector): the readout y = C r + D x turned into
    x + s y, for a core asked for ``residual_scale`` s."""
    identity = torch.ones_like(D) if D.dim() == 1 else torch.eye(D.shape[0], dtype=D.dtype, device=D.device)
    return scale * C, identity.addcmul(scale, D)
