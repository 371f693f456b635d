"""Diagonal linear recurrences h_t = a_t * h_{t-1} + b_t: the loop reference, a parallel scan, a GPU kernel.

All take the same arguments and return every state, so a core picks one by mode and the tests
compare them (outputs and gradients). ``a`` is either constant over time (LTI cores, shape
``(N,)``, ``(1, 1, N)`` or ``(B, 1, N)``) or per step (``(B, L, N)``); real or complex.
``linear_recurrence(..., mode="scan")`` runs the Triton kernel (``ssm_lab.ops.triton.linear_scan``)
on CUDA tensors of a dtype it supports and the torch scan otherwise (CPU, float64/complex128);
``mode="torch_scan"`` forces the torch scan and ``mode="loop"`` the reference on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of torch; CPU installs run the torch paths only
    from ssm_lab.ops.triton.linear_scan import SUPPORTED_DTYPES, linear_scan
except ImportError:
    linear_scan = None
    SUPPORTED_DTYPES = ()

__all__ = ["MODES", "kernel_applies", "linear_recurrence", "linear_recurrence_ref", "linear_recurrence_scan"]


def _as_3d(a: Tensor, b: Tensor) -> Tensor:
    """View ``a`` as (B or 1, L or 1, N) and check it broadcasts against ``b: (B, L, N)``."""
    if b.dim() != 3:
        raise ValueError(f"b must be (B, L, N), got shape {tuple(b.shape)}")
    if a.dim() == 1:
        a = a.view(1, 1, -1)
    if (
        a.dim() != 3
        or a.shape[-1] != b.shape[-1]
        or a.shape[1] not in (1, b.shape[1])
        or a.shape[0] not in (1, b.shape[0])
    ):
        raise ValueError(
            f"a of shape {tuple(a.shape)} does not broadcast against b of shape {tuple(b.shape)}; "
            "expected (N,), (1 or B, 1, N) or (1 or B, L, N)"
        )
    return a


def _with_initial_state(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """Fold h0 into the first input: h_0 = a_0 h0 + b_0."""
    if h0 is None:
        return b
    if h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"initial state must be (B, N) = {(b.shape[0], b.shape[2])}, got {tuple(h0.shape)}")
    first = b[:, :1] + a[:, :1] * h0.unsqueeze(1)
    return torch.cat([first, b[:, 1:]], dim=1)


def linear_recurrence_ref(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Plain loop: h_t = a_t * h_{t-1} + b_t, h_{-1} = h0 (zero if None). b: (B, L, N) -> h: (B, L, N)."""
    a = _as_3d(a, b)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.to(b.dtype)
    states = []
    for t in range(b.shape[1]):
        h = a[:, min(t, a.shape[1] - 1)] * h + b[:, t]
        states.append(h)
    return torch.stack(states, dim=1)


def linear_recurrence_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Parallel prefix scan (Hillis & Steele doubling) of the same recurrence.

    The pair (a, b) composes associatively: (a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2). After the
    step with offset k, position t holds the composition of the 2k inputs ending at t, so
    ceil(log2 L) steps of O(L) work give every state. Time-constant ``a`` keeps one power a^k per
    step instead of a (B, L, N) tensor.
    """
    a = _as_3d(a, b)
    h = _with_initial_state(a, b, h0)
    length = h.shape[1]
    if a.shape[1] == 1:  # LTI: the product of k consecutive a's is a^k
        power = a
        k = 1
        while k < length:
            h = torch.cat([h[:, :k], h[:, k:] + power * h[:, :-k]], dim=1)
            power = power * power
            k *= 2
        return h
    a_prod = a
    k = 1
    while k < length:
        h = torch.cat([h[:, :k], h[:, k:] + a_prod[:, k:] * h[:, :-k]], dim=1)
        a_prod = torch.cat([a_prod[:, :k], a_prod[:, k:] * a_prod[:, :-k]], dim=1)
        k *= 2
    return h


def _common_dtype(a: Tensor, b: Tensor, h0: Tensor | None) -> torch.dtype:
    dtype = torch.promote_types(a.dtype, b.dtype)
    return dtype if h0 is None else torch.promote_types(dtype, h0.dtype)


def kernel_applies(a: Tensor, b: Tensor, h0: Tensor | None = None) -> bool:
    """Whether ``mode="scan"`` runs the Triton kernel for these inputs (CUDA, Triton, a supported dtype)."""
    return linear_scan is not None and a.is_cuda and b.is_cuda and _common_dtype(a, b, h0) in SUPPORTED_DTYPES


def _linear_recurrence_kernel(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """The Triton kernel on inputs cast to one dtype (casts are differentiable, so gradients keep theirs)."""
    a = _as_3d(a, b)
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"initial state must be (B, N) = {(b.shape[0], b.shape[2])}, got {tuple(h0.shape)}")
    dtype = _common_dtype(a, b, h0)
    return linear_scan(a.to(dtype), b.to(dtype), None if h0 is None else h0.to(dtype))


def _linear_recurrence_auto(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    if kernel_applies(a, b, h0):
        return _linear_recurrence_kernel(a, b, h0)
    return linear_recurrence_scan(a, b, h0)


_MODES = {"scan": _linear_recurrence_auto, "torch_scan": linear_recurrence_scan, "loop": linear_recurrence_ref}
MODES = tuple(_MODES)


def linear_recurrence(a: Tensor, b: Tensor, h0: Tensor | None = None, mode: str = "scan") -> Tensor:
    """Dispatch on ``mode``: "scan" (GPU kernel where it applies, else torch scan), "torch_scan", "loop"."""
    if mode not in _MODES:
        raise ValueError(f"unknown recurrence mode {mode!r}; choose one of {', '.join(_MODES)}")
    return _MODES[mode](a, b, h0)
