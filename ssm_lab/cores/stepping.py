"""Running a core's ``step`` over a sequence: the "loop" reference mode shared by every core, with
right padding handled by freezing the state of sequences that have ended."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ssm_lab.cores.base import host_checks_allowed

State = Any  # a tensor or a tuple of tensors, each (B, ...)


def _where(keep_new: Tensor, new: State, old: State) -> State:
    if isinstance(new, tuple):
        return tuple(_where(keep_new, n, o) for n, o in zip(new, old, strict=True))
    return torch.where(keep_new.view(-1, *([1] * (new.dim() - 1))), new, old)


def step_through(
    step: Callable[..., tuple[Tensor, State]],
    x: Tensor,
    state: State,
    lengths: Tensor | None = None,
    per_step: dict[str, Tensor | None] | None = None,
) -> tuple[Tensor, State]:
    """y_t, s_t = step(x_t, s_{t-1}) for t < L. x: (B, L, H) -> (y: (B, L, H_out), final state).

    ``per_step`` holds extra (B, L) inputs (e.g. integration_timesteps) passed to ``step`` at t.
    With ``lengths``, a sequence's state stops changing after its last real token, so the final
    state is the state at ``lengths - 1``."""
    outputs = []  # steps by unbind (see ssm_lab.ops.scan.linear_recurrence_ref)
    extras = {key: value.unbind(1) for key, value in (per_step or {}).items() if value is not None}
    for t, x_t in enumerate(x.unbind(1)):
        y_t, new_state = step(x_t, state, **{key: value[t] for key, value in extras.items()})
        state = new_state if lengths is None else _where(lengths.to(x.device) > t, new_state, state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state


def check_timesteps(timesteps: Tensor | None, x: Tensor) -> None:
    """integration_timesteps must be (B, L) and positive, matching x: (B, L, H) (positivity is not read back to the
    host inside ``host_checks_deferred``)."""
    if timesteps is None:
        return
    if timesteps.shape != x.shape[:2]:
        raise ValueError(f"integration_timesteps must be (B, L) = {tuple(x.shape[:2])}, got {tuple(timesteps.shape)}")
    if host_checks_allowed() and bool((timesteps <= 0).any()):
        raise ValueError("integration_timesteps must be positive")
