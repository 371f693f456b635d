"""Shared pieces of the core contract: input, mode, state and lengths checks, padding, final states of padded
batches, and the residual skip folded into a readout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


# process-wide, not per thread: the autograd engine runs a CUDA backward, and activation checkpointing's
# recomputation with it, on threads of its own
_deferred_depth = 0


@contextmanager
def host_checks_deferred() -> Iterator[None]:
    """Within this context the cores skip the checks that read values back to the host (the bounds of
    ``lengths``, positive ``integration_timesteps``): a CUDA graph being captured cannot read values, and whoever
    replays the graph makes those checks on every batch instead (``ssm_lab.cuda_graphs.GraphedTraining``)."""
    global _deferred_depth
    _deferred_depth += 1
    try:
        yield
    finally:
        _deferred_depth -= 1


def host_checks_allowed() -> bool:
    """False inside ``host_checks_deferred``."""
    return _deferred_depth == 0


def check_lengths(lengths: Tensor, batch: int, length: int) -> Tensor:
    """``lengths`` on its own device after checking that it is (B,) = (batch,) with values in 1..length (one read
    back to the host, a GPU synchronisation, for both bounds; the values are not read inside
    ``host_checks_deferred``)."""
    if lengths.shape != (batch,) or (host_checks_allowed() and bool(((lengths < 1) | (lengths > length)).any())):
        raise ValueError(f"lengths must be (B,) = ({batch},) with values in 1..{length}, got {lengths.tolist()}")
    return lengths


def real_steps(x: Tensor, lengths: Tensor | None) -> Tensor | None:
    """(B, L, 1, ...) True at the real steps of x: (B, L, ...), broadcasting against x (None when lengths is None)."""
    if lengths is None:
        return None
    lengths = check_lengths(lengths, x.shape[0], x.shape[1]).to(x.device)
    real = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)
    return real.view(*real.shape, *([1] * (x.dim() - 2)))


def zero_padding(x: Tensor, lengths: Tensor | None, real: Tensor | None = None) -> Tensor:
    """x: (B, L, ...) with every step at or after its sequence's length set to 0 (x itself when lengths is None);
    ``real``: the mask ``real_steps`` made for these lengths already.

    Each core takes its input through this: right padding then reaches no real output, final state or gradient,
    whatever it holds. Where a mode mixes all steps (FFT convolutions, attention, the adaptive solver), padding
    would otherwise leak into real outputs through rounding, and NaN or inf padding through 0 * inf; through a
    recurrence, a non-finite padded step makes the backward's 0 * inf too. ``torch.where``, not a product with the
    mask, so that non-finite padding goes as well; its gradient is 0 on the padding."""
    real = real_steps(x, lengths) if real is None else real
    return x if real is None else torch.where(real, x, x.new_zeros(()))


def check_state(core: Any, state: Any, batch: int, name: str | None = None) -> None:
    """Raise unless ``state`` has the structure and shapes of ``core.default_state(batch)`` (made on the meta device:
    shapes only, nothing allocated): a state of another batch size would otherwise broadcast silently in some
    modes. ``name``: the core's name in the message (its class name by default)."""
    shapes, expected = _shapes(state), _shapes(core.default_state(batch, torch.device("meta")))
    if shapes != expected:
        name = name or type(core).__name__
        raise ValueError(f"{name} state must have shape {expected} (default_state(B)), got {shapes}")


def _shapes(state: Any) -> Any:
    if isinstance(state, Tensor):
        return tuple(state.shape)
    if isinstance(state, (tuple, list)):
        return tuple(_shapes(part) for part in state)
    return type(state).__name__


def state_at_lengths(states: Tensor, lengths: Tensor | None, checked: bool = False) -> Tensor:
    """Final state of each sequence: states[b, lengths[b] - 1] (the last step when lengths is None).

    states: (B, L, ...) -> (B, ...). Right padding after a sequence never reaches its state. ``checked``: the
    caller's ``zero_padding`` or ``real_steps`` checked these lengths already, so they are not read back to the
    host a second time (a GPU synchronisation each).
    """
    if lengths is None:
        return states[:, -1]
    if not checked:
        lengths = check_lengths(lengths, states.shape[0], states.shape[1])
    lengths = lengths.to(states.device)
    index = (lengths - 1).view(-1, *([1] * (states.dim() - 1))).expand(-1, 1, *states.shape[2:])
    return torch.gather(states, 1, index).squeeze(1)


def fold_residual(C: Tensor, D: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(s C, I + s D) (1 + s D for a diagonal D given as a vector): the readout y = C r + D x turned into
    x + s y, for a core asked for ``residual_scale`` s."""
    identity = torch.ones_like(D) if D.dim() == 1 else torch.eye(D.shape[0], dtype=D.dtype, device=D.device)
    return scale * C, identity.addcmul(scale, D)
