"""The gated static layer and its residual add as Triton kernels, one pass each way: the CUDA twin of
``ssm_lab.ops.cpu.gated_residual`` (same functions and contract; the formulas are in its C source, the plain
autograd twin is ``ssm_lab.ops.gated_residual.gated_residual_ref``):

    y = x + c act(v) sigmoid(g),   (v, g) = the two halves of z + bias,   act = tanh (LGLU) or identity (GLU),

forward reads z (rows, 2 d), x (rows, d) and writes y; backward reads z and dy and writes dL/dz (dL/dx = dy
passes through), with per-program column sums for the bias's gradient and for c's (sum of dy act(v) sigmoid(g)).
torch's path on CUDA runs glu, the residual's addcmul and their backward as some eight kernels over (rows, d)
or (rows, 2 d) volumes, plus the bias's and c's reductions; these two read and write each volume once. c is
read from device memory (no host synchronisation). Arithmetic in the input dtype; tanh is 2 sigmoid(2 v) - 1,
as in the C kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["SUPPORTED_DTYPES", "applies", "backward", "forward"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

_FORWARD_ROWS = 16
_BACKWARD_ROWS = 64  # rows per backward program (one partial column sum each), walked in tiles of _BACKWARD_TILE
_BACKWARD_TILE = 16
_BLOCK_D = 64
_NUM_WARPS = 4


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _halves(z_ptr, bias_ptr, rows, cols, mask, d, HAS_BIAS: tl.constexpr):
    """(v, g) of the tile: the two halves of z's rows, plus the bias where the layer has one."""
    at = z_ptr + rows * 2 * d + cols
    v = tl.load(at, mask=mask, other=0.0)
    g = tl.load(at + d, mask=mask, other=0.0)
    if HAS_BIAS:
        col_ok = cols < d
        v += tl.load(bias_ptr + cols, mask=col_ok, other=0.0)
        g += tl.load(bias_ptr + d + cols, mask=col_ok, other=0.0)
    return v, g


@triton.jit
def _activation(v, SATURATE: tl.constexpr):
    if SATURATE:
        v = 2.0 * _sigmoid(2.0 * v) - 1.0
    return v


@triton.jit
def _forward_kernel(
    z_ptr, bias_ptr, x_ptr, scale_ptr, y_ptr, rows, d,
    HAS_BIAS: tl.constexpr, SATURATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = (tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    mask = (row < rows) & (cols < d)
    v, g = _halves(z_ptr, bias_ptr, row, cols, mask, d, HAS_BIAS)
    x = tl.load(x_ptr + row * d + cols, mask=mask, other=0.0)
    y = x + tl.load(scale_ptr) * _activation(v, SATURATE) * _sigmoid(g)
    tl.store(y_ptr + row * d + cols, y, mask=mask)


@triton.jit
def _backward_kernel(
    z_ptr, bias_ptr, grad_ptr, scale_ptr, grad_z_ptr, partial_bias_ptr, partial_scale_ptr, rows, d,
    HAS_BIAS: tl.constexpr, SATURATE: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dL/dv = c dy sigmoid(g) act'(v), dL/dg = c dy act(v) sigmoid(g) (1 - sigmoid(g)); one partial column sum
    of each per program ((programs, 2 d)), and of dy act(v) sigmoid(g) ((programs, d): c's gradient)."""
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    c = tl.load(scale_ptr)
    sum_v = tl.zeros((BLOCK_D,), dtype=c.dtype)
    sum_g = tl.zeros((BLOCK_D,), dtype=c.dtype)
    sum_scale = tl.zeros((BLOCK_D,), dtype=c.dtype)
    first = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM
    for start in range(0, ROWS_PER_PROGRAM, BLOCK_M):
        row = (first + start + tl.arange(0, BLOCK_M))[:, None]
        mask = (row < rows) & (cols < d)
        v, g = _halves(z_ptr, bias_ptr, row, cols, mask, d, HAS_BIAS)
        dy = tl.load(grad_ptr + row * d + cols, mask=mask, other=0.0)
        a, s = _activation(v, SATURATE), _sigmoid(g)
        dv = c * dy * s
        if SATURATE:
            dv *= 1.0 - a * a  # tanh' = 1 - tanh^2
        gated = dy * a * s
        dg = c * gated * (1.0 - s)
        at = grad_z_ptr + row * 2 * d + cols
        tl.store(at, dv, mask=mask)
        tl.store(at + d, dg, mask=mask)
        sum_v += tl.sum(tl.where(mask, dv, 0.0), axis=0)
        sum_g += tl.sum(tl.where(mask, dg, 0.0), axis=0)
        sum_scale += tl.sum(tl.where(mask, gated, 0.0), axis=0)
    col = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = col < d
    partial = tl.program_id(0) * 2 * d + col
    tl.store(partial_bias_ptr + partial, sum_v, mask=col_ok)
    tl.store(partial_bias_ptr + partial + d, sum_g, mask=col_ok)
    tl.store(partial_scale_ptr + tl.program_id(0) * d + col, sum_scale, mask=col_ok)


def applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether the layer's input, weight and bias are CUDA tensors of one dtype in ``SUPPORTED_DTYPES``."""
    tensors = [x, weight] + ([] if bias is None else [bias])
    return all(t.is_cuda and t.dtype == x.dtype in SUPPORTED_DTYPES for t in tensors)


def forward(x: Tensor, projected: Tensor, bias: Tensor | None, scale: Tensor, saturate: bool) -> Tensor:
    """x + scale act(v) sigmoid(g) for (v, g) the halves of projected (+ bias): x (..., d), projected (..., 2 d),
    scale a 0-dim tensor."""
    x, projected = x.contiguous(), projected.contiguous()
    out = torch.empty_like(x)
    rows, d = x.numel() // x.shape[-1], x.shape[-1]
    if rows:
        grid = (triton.cdiv(rows, _FORWARD_ROWS), triton.cdiv(d, _BLOCK_D))
        _forward_kernel[grid](
            projected, projected if bias is None else bias.contiguous(), x, scale.detach().to(x.dtype), out, rows, d,
            HAS_BIAS=bias is not None, SATURATE=saturate, BLOCK_M=_FORWARD_ROWS, BLOCK_D=_BLOCK_D,
            num_warps=_NUM_WARPS,
        )  # fmt: skip
    return out


def backward(
    projected: Tensor, bias: Tensor | None, grad: Tensor, scale: Tensor, saturate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dprojected, dL/dbias summed over rows, dL/dscale) from dL/dout (the sums in float64)."""
    projected, grad = projected.contiguous(), grad.to(projected.dtype).contiguous()
    rows, d = grad.numel() // grad.shape[-1], grad.shape[-1]
    grad_projected = torch.empty_like(projected)
    programs = triton.cdiv(rows, _BACKWARD_ROWS)
    partial_bias = torch.empty(programs, 2 * d, dtype=projected.dtype, device=projected.device)
    partial_scale = torch.empty(programs, d, dtype=projected.dtype, device=projected.device)
    if rows:
        _backward_kernel[(programs, triton.cdiv(d, _BLOCK_D))](
            projected, projected if bias is None else bias.contiguous(), grad, scale.detach().to(projected.dtype),
            grad_projected, partial_bias, partial_scale, rows, d, HAS_BIAS=bias is not None, SATURATE=saturate,
            ROWS_PER_PROGRAM=_BACKWARD_ROWS, BLOCK_M=_BACKWARD_TILE, BLOCK_D=_BLOCK_D, num_warps=_NUM_WARPS,
        )  # fmt: skip
    return grad_projected, partial_bias.sum(0, dtype=torch.float64), partial_scale.sum(dtype=torch.float64)
