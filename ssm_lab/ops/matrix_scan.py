"""Dense input-dependent linear recurrences h_t = M_t h_{t-1} + v_t (Linear CDE, IDS4): the loop
reference and a work-efficient parallel scan over matrix products.

M: (B, L, N, N), v: (B, L, N), h0: (B, N) -> every state (B, L, N). The pair (M, v) composes
associatively, (M2, v2) o (M1, v1) = (M2 M1, M2 v1 + v2), which is what the scan uses.

Large batches: ``batched_matrix_exp`` bounds how many matrices one ``torch.linalg.matrix_exp`` call
sees, and ``chunked_matrix_recurrence`` builds and scans the maps one time window at a time
(optionally recomputing them in the backward pass), so memory grows with the window, not with L.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "batched_matrix_exp",
    "chunked_matrix_recurrence",
    "matrix_recurrence",
    "matrix_recurrence_ref",
    "matrix_recurrence_scan",
]


def _check(M: Tensor, v: Tensor, h0: Tensor | None) -> None:
    if v.dim() != 3 or M.shape != (*v.shape, v.shape[-1]):
        raise ValueError(f"need M: (B, L, N, N) and v: (B, L, N), got {tuple(M.shape)} and {tuple(v.shape)}")
    if h0 is not None and h0.shape != (v.shape[0], v.shape[2]):
        raise ValueError(f"initial state must be (B, N) = {(v.shape[0], v.shape[2])}, got {tuple(h0.shape)}")


def _apply(M: Tensor, h: Tensor) -> Tensor:
    return (M @ h.unsqueeze(-1)).squeeze(-1)


def matrix_recurrence_ref(M: Tensor, v: Tensor, h0: Tensor | None = None) -> Tensor:
    """Plain loop: h_t = M_t h_{t-1} + v_t, h_{-1} = h0 (zero if None)."""
    _check(M, v, h0)
    h = torch.zeros_like(v[:, 0]) if h0 is None else h0
    states = []
    for t in range(v.shape[1]):
        h = _apply(M[:, t], h) + v[:, t]
        states.append(h)
    return torch.stack(states, dim=1)


def _odd_even_scan(M: Tensor, v: Tensor) -> Tensor:
    """States from a zero initial state (h0 already folded into v_0).

    Odd-even reduction (Blelloch-style): combine neighbouring pairs, solve the half-length
    problem for the odd positions recursively, then fill the even positions with one step each.
    Matrix products total L N^3 (not L log L N^3) and depth is 2 log2 L.
    """
    length = v.shape[1]
    if length == 1:
        return v
    if length % 2:  # an identity step at the end keeps the pairing simple
        eye = torch.eye(v.shape[-1], dtype=M.dtype, device=M.device).expand(M.shape[0], 1, -1, -1)
        return _odd_even_scan(torch.cat([M, eye], 1), torch.cat([v, torch.zeros_like(v[:, :1])], 1))[:, :length]
    M_even, M_odd, v_even, v_odd = M[:, 0::2], M[:, 1::2], v[:, 0::2], v[:, 1::2]
    odd_states = _odd_even_scan(M_odd @ M_even, _apply(M_odd, v_even) + v_odd)  # states at t = 1, 3, 5, ...
    previous = torch.cat([torch.zeros_like(v_even[:, :1]), odd_states[:, :-1]], dim=1)
    even_states = _apply(M_even, previous) + v_even
    return torch.stack([even_states, odd_states], dim=2).reshape(v.shape)


def matrix_recurrence_scan(M: Tensor, v: Tensor, h0: Tensor | None = None) -> Tensor:
    """Parallel scan of the same recurrence; equals ``matrix_recurrence_ref``."""
    _check(M, v, h0)
    if h0 is not None:
        v = torch.cat([v[:, :1] + _apply(M[:, 0], h0).unsqueeze(1), v[:, 1:]], dim=1)
    return _odd_even_scan(M, v)


_MODES = {"loop": matrix_recurrence_ref, "scan": matrix_recurrence_scan}


def matrix_recurrence(M: Tensor, v: Tensor, h0: Tensor | None = None, mode: str = "scan") -> Tensor:
    """Dispatch on ``mode`` ("loop" reference or "scan"); unknown modes are an error."""
    if mode not in _MODES:
        raise ValueError(f"unknown matrix recurrence mode {mode!r}; choose one of {', '.join(_MODES)}")
    return _MODES[mode](M, v, h0)


def batched_matrix_exp(matrices: Tensor, max_batch: int | None = None) -> Tensor:
    """torch.linalg.matrix_exp over (..., N, N) in calls of at most ``max_batch`` matrices (None: one call).

    One call over a huge batch allocates the scaling-and-squaring temporaries for every matrix at
    once (and has crashed on CUDA); slices of the flattened batch give the same values."""
    if max_batch is None:
        return torch.linalg.matrix_exp(matrices)
    if not isinstance(max_batch, int) or max_batch <= 0:
        raise ValueError(f"max_batch must be a positive integer or None, got {max_batch!r}")
    flat = matrices.reshape(-1, *matrices.shape[-2:])
    if flat.shape[0] <= max_batch:
        return torch.linalg.matrix_exp(matrices)
    return torch.cat([torch.linalg.matrix_exp(part) for part in flat.split(max_batch)]).view(matrices.shape)


def chunked_matrix_recurrence(
    maps: Callable[[int, int], tuple[Tensor, Tensor]],
    length: int,
    h0: Tensor,
    chunk_length: int | None = None,
    recompute: bool = False,
) -> Tensor:
    """Every state of h_t = M_t h_{t-1} + v_t, t < length, from h0: (B, N) -> (B, length, N).

    ``maps(start, stop)`` returns (M, v) of the steps start..stop-1: (B, stop - start, N, N), (B, stop - start, N).
    Each window of ``chunk_length`` steps (None: the whole sequence) is scanned in parallel from the
    state the previous window ended in. With ``recompute`` (and autograd on) a window's maps are
    not kept for the backward pass but rebuilt there (activation checkpointing), so the memory
    held is the states plus one window's maps instead of all L of them."""
    if chunk_length is not None and (not isinstance(chunk_length, int) or chunk_length <= 0):
        raise ValueError(f"chunk_length must be a positive integer or None, got {chunk_length!r}")
    step = length if chunk_length is None else chunk_length

    def window(start: int, stop: int, state: Tensor) -> Tensor:
        M, v = maps(start, stop)
        return matrix_recurrence_scan(M, v, state)

    outputs, state = [], h0
    for start in range(0, length, step):
        stop = min(start + step, length)
        if recompute and torch.is_grad_enabled():
            states = checkpoint(window, start, stop, state, use_reentrant=False)
        else:
            states = window(start, stop, state)
        outputs.append(states)
        state = states[:, -1]
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
