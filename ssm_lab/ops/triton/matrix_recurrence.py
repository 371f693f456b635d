"""The dense recurrence h_t = M_t h_{t-1} + v_t step by step on the GPU: the Triton twin of ``affine_steps`` in
``ssm_lab/ops/cpu/matrix_recurrence.c`` (same contract), the time loop of ``ssm_lab.ops.matrix_scan``'s sequential
path (its autograd node, ``_SequentialRecurrence``, calls it forward and, with the transposed matrices, backward).

One program per batch row walks through time with the state in registers: one N x N matrix-vector product per
step, L N^2 work per row against the parallel scan's L N^3 and its (B, L / 2^k, N, N) products. The time loop is
bound by reading M (each step's matrix is loaded while the previous step computes), so B rows read it at B times
one streaming multiprocessor's bandwidth. float32, N <= ``MAX_STATE``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssm_lab.ops.triton import holds_state

__all__ = ["MAX_STATE", "SUPPORTED_DTYPES", "affine_steps", "applies"]

SUPPORTED_DTYPES = (torch.float32,)
#: the largest state the kernel holds (its step's N x N matrix in registers, 128 per thread at 4 warps)
MAX_STATE = 128


@triton.jit
def _affine_steps_kernel(
    m_ptr, v_ptr, h0_ptr, out_ptr, length, n,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    lines, cols = tl.arange(0, BLOCK), tl.arange(0, BLOCK)
    line_ok, col_ok = lines < n, cols < n
    tile = lines[:, None] * n + cols[None, :]
    tile_ok = line_ok[:, None] & col_ok[None, :]
    if REVERSE:  # out_t = M_{t+1}^T out_{t+1} + v_t from out_L = 0: out indexed by M's columns
        out = tl.zeros([BLOCK], dtype=tl.float32)
        following = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)  # M_L = 0
        for reversed_t in range(length):
            t = length - 1 - reversed_t
            step = row * length + t
            current = tl.load(m_ptr + step * n * n + tile, mask=tile_ok, other=0.0)  # M_t, used by step t - 1
            product = tl.sum(following * out[:, None], axis=0)
            out = product + tl.load(v_ptr + step * n + cols, mask=col_ok, other=0.0)
            tl.store(out_ptr + step * n + cols, out, mask=col_ok)
            following = current
    else:  # out_t = M_t out_{t-1} + v_t from out_{-1} = h0 (or 0): out indexed by M's rows
        out = tl.load(h0_ptr + row * n + lines, mask=line_ok, other=0.0) if HAS_H0 else tl.zeros([BLOCK], tl.float32)
        matrix = tl.load(m_ptr + row * length * n * n + tile, mask=tile_ok, other=0.0)
        for t in range(length):
            step = row * length + t
            following = tl.load(m_ptr + (step + 1) * n * n + tile, mask=tile_ok & (t + 1 < length), other=0.0)
            product = tl.sum(matrix * out[None, :], axis=1)
            out = product + tl.load(v_ptr + step * n + lines, mask=line_ok, other=0.0)
            tl.store(out_ptr + step * n + lines, out, mask=line_ok)
            matrix = following


def applies(*tensors: Tensor | None) -> bool:
    """Whether the kernel takes these tensors: CUDA float32 on one device (None skipped), N <= ``MAX_STATE``."""
    return holds_state(SUPPORTED_DTYPES, MAX_STATE, *tensors)


def affine_steps(M: Tensor, v: Tensor, h0: Tensor | None, reverse: bool = False) -> Tensor:
    """Every out_t of out_t = M_t out_{t-1} + v_t from out_{-1} = h0 (or 0), or with ``reverse``
    out_t = M_{t+1}^T out_{t+1} + v_t from out_L = 0 (the adjoint's recurrence; h0 unused).
    M: (B, L, N, N), v: (B, L, N), h0: (B, N) or None -> (B, L, N)."""
    M, v = M.contiguous(), v.contiguous()
    h0 = None if h0 is None or reverse else h0.contiguous()
    out = torch.empty_like(v)
    batch, length, n = v.shape
    if length:
        _affine_steps_kernel[(batch,)](
            M, v, v if h0 is None else h0, out, length, n,
            HAS_H0=h0 is not None, REVERSE=reverse, BLOCK=triton.next_power_of_2(n), num_warps=4,
        )  # fmt: skip
    return out
