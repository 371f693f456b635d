"""The inverses of many small matrices at once on the GPU: Gauss-Jordan elimination with partial pivoting, one
program per matrix, the matrix and its inverse held in registers. The kernel of ``ssm_lab.ops.inverse`` (its twin
there is torch.linalg.inv), which IDS4's bilinear maps take on CUDA.

For k = 0, ..., N - 1 on the pair [K | X] (X = I at first): among the rows not yet pivots, the row p with the
largest |K_pk| is divided by its pivot K_pk, and every other row i loses K_ik times row p. The rows are never
swapped: K ends as a permutation P (row p holds e_k) and X as P K^{-1}, so row p of X is written as row k of the
inverse. N^3 multiply-adds against LU's N^3 / 3 plus its triangular solves, but in one pass that reads each matrix
once and writes its inverse once, where a batched LU (cuBLAS getrf) and its solves are separate kernels that each
read and write every matrix. 32768 matrices on an H100, fp32, forward (forward + backward), from
``python -m ssm_lab.bench.inverse``:

    N                   16             32             64
    this kernel         0.14 (0.88)    0.73 (1.44)    7.1 (9.9) ms    1, 1, 2 warps (4 took 0.56, 2.1, 10.9 ms)
    torch.linalg.inv    0.44 (1.09)    3.0 (3.9)      23.4 (27.6) ms
    solve, N + 1 rhs    0.93 (1.94)    3.6 (6.5)      26.9 (39.1) ms  (what IDS4's maps took before)

Errors against the float64 inverse are alike: 1.3-2.4e-7 normwise here, 1.2-1.4e-7 for torch's.

Past N = 64 the two tiles no longer fit in registers (N = 128: 190 ms at 4 warps, against torch's 89 ms).

A singular matrix (a zero pivot) gives non-finite entries; its inverse is not defined. float32, N <= ``MAX_SIZE``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssm_lab.ops.triton import holds_state

__all__ = ["MAX_SIZE", "SUPPORTED_DTYPES", "applies", "inverse"]

SUPPORTED_DTYPES = (torch.float32,)
#: the largest matrix the kernel holds (the matrix and its inverse in registers)
MAX_SIZE = 64


@triton.jit
def _gauss_jordan_kernel(k_ptr, out_ptr, n, BLOCK: tl.constexpr):
    matrix = tl.program_id(0).to(tl.int64)
    rows, cols = tl.arange(0, BLOCK), tl.arange(0, BLOCK)
    tile = rows[:, None] * n + cols[None, :]
    tile_ok = (rows[:, None] < n) & (cols[None, :] < n)
    left = tl.load(k_ptr + matrix * n * n + tile, mask=tile_ok, other=0.0)
    right = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
    pivot_of = tl.full([BLOCK], BLOCK, tl.int32)  # the step at which each row was the pivot (BLOCK: not yet)
    for k in range(n):
        column = tl.sum(tl.where(cols[None, :] == k, left, 0.0), axis=1)  # K[:, k]
        pivot_row = tl.argmax(tl.where((pivot_of == BLOCK) & (rows < n), tl.abs(column), -1.0), axis=0)
        is_pivot = rows == pivot_row
        pivot = tl.sum(tl.where(is_pivot, column, 0.0), axis=0)
        new_left = tl.sum(tl.where(is_pivot[:, None], left, 0.0), axis=0) / pivot
        new_right = tl.sum(tl.where(is_pivot[:, None], right, 0.0), axis=0) / pivot
        column = tl.where(is_pivot, 0.0, column)
        left = tl.where(is_pivot[:, None], new_left[None, :], left - column[:, None] * new_left[None, :])
        right = tl.where(is_pivot[:, None], new_right[None, :], right - column[:, None] * new_right[None, :])
        pivot_of = tl.where(is_pivot, k, pivot_of)
    # row i holds row pivot_of[i] of the inverse (with NaN entries a row may never have been a pivot)
    stored = tile_ok & (pivot_of[:, None] < n)
    tl.store(out_ptr + matrix * n * n + pivot_of[:, None] * n + cols[None, :], right, mask=stored)


def applies(K: Tensor) -> bool:
    """Whether the kernel takes K: a CUDA float32 tensor of square matrices, N <= ``MAX_SIZE``."""
    return K.dim() >= 2 and K.shape[-1] == K.shape[-2] and holds_state(SUPPORTED_DTYPES, MAX_SIZE, K)


def inverse(K: Tensor) -> Tensor:
    """K^{-1} of every matrix of K: (..., N, N) (no autograd: ``ssm_lab.ops.inverse`` differentiates it)."""
    K = K.contiguous()
    out = torch.full_like(K, float("nan"))  # what a singular matrix leaves unwritten stays NaN
    n = K.shape[-1]
    count = K.numel() // (n * n) if n else 0
    if count:
        block = triton.next_power_of_2(n)
        _gauss_jordan_kernel[(count,)](K, out, n, BLOCK=block, num_warps=1 if block <= 32 else 2)
    return out
