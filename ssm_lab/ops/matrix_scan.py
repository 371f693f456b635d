"""Dense input-dependent linear recurrences h_t = M_t h_{t-1} + v_t (Linear CDE, IDS4): the loop
reference and a work-efficient parallel scan over matrix products.

M: (B, L, N, N), v: (B, L, N), h0: (B, N) -> every state (B, L, N). The pair (M, v) composes
associatively, (M2, v2) o (M1, v1) = (M2 M1, M2 v1 + v2), which is what the scan uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["matrix_recurrence", "matrix_recurrence_ref", "matrix_recurrence_scan"]


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
