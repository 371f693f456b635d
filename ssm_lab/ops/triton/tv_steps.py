"""Triton kernels for the step matrices of the tv core (``ssm_lab.cores.tv``): one pass forward, one backward.

Per token t and state coordinate n, from the selection's pre-activations (delta, beta, kappa):

    s = delta + delta_bias_n,   a = exp(-softplus(s) softplus(alpha_n)),   b = tanh(beta),   c = tanh(kappa),
    p = |a + i(b - c)|,   q = |a + i(b + c)|,   k = 1 / (max(1, (p + q) / 2) (1 + 4 eps)),

the step matrix [[a, b], [c, 0]] divided by max(1, its spectral norm (p + q) / 2) (``normalize_2x2`` has the
proof), and the kernel writes the scan's inputs a k and b k u_t (u the drive input) and the readout's c k.
The backward writes dL/d(delta, beta, kappa) and dL/du from dL/d(a k), dL/d(b k u), dL/d(c k) by the chain
rule of ``ssm_lab.cores.tv._step_matrices_backward`` (the torch twin, with the derivation), and per-block
column sums for dL/ddelta_bias and dL/dalpha. The torch path makes some fifteen full passes over (B, L, N)
tensors forward and thirty backward, each a kernel launch; these two kernels read their inputs once and
write their outputs once. The pre-activations are read in place from the selection layer's (B, L, 3 N)
output (any layout whose batch and time axes merge), so no component-major copy is made either.
Arithmetic is fp32 whatever the input dtype; tiny and eps are those of the input dtype, as in the twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssm_lab.ops import tv_layout

__all__ = ["SUPPORTED_DTYPES", "tv_steps", "tv_steps_applies", "tv_steps_backward"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Tile sizes: 16 x 64 forward (64 registers per thread at 4 warps, no spills); the backward keeps ~40 values
# per element alive, so it walks 64 rows per program in tiles of 4 (2 values per thread, 94 registers) and writes one
# partial column sum per program. A 64 x 64 tile spilled 9 KB per thread (ptxas, sm_90).
_FORWARD_ROWS = 16
_BACKWARD_ROWS = 64
_BACKWARD_TILE = 4
_BLOCK_N = 64
_NUM_WARPS = 4


@triton.jit
def _log1p(x):
    """log(1 + x) to full precision for x >= 0 (Goldberg's correction of the rounded 1 + x)."""
    one_plus = 1.0 + x
    rounded = one_plus - 1.0
    return tl.where(rounded == 0.0, x, tl.log(one_plus) * (x / tl.where(rounded == 0.0, 1.0, rounded)))


@triton.jit
def _softplus(x):
    """torch's softplus (beta 1, threshold 20): x above 20, else max(x, 0) + log1p(exp(-|x|))."""
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x))))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _steps(delta, beta, kappa, delta_bias, softplus_alpha, tiny, eps):
    """(shifted s, a, b, c before normalisation, p, q, k) of each element (see the module docstring)."""
    shifted = delta + delta_bias[None, :]
    a = tl.exp(-_softplus(shifted) * softplus_alpha[None, :])
    b = 2.0 * _sigmoid(2.0 * beta) - 1.0  # tanh
    c = 2.0 * _sigmoid(2.0 * kappa) - 1.0
    a_squared = a * a + tiny
    p = tl.sqrt(a_squared + (b - c) * (b - c))
    q = tl.sqrt(a_squared + (b + c) * (b + c))
    k = 1.0 / (tl.maximum(0.5 * (p + q), 1.0) * (1.0 + 4.0 * eps))
    return shifted, a, b, c, p, q, k


@triton.jit
def _tile(tokens, channels, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """(rows (BLOCK_T, 1) as int64, columns (BLOCK_N,), mask) of this program's tile of the (T, N) plane."""
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None]
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols, (rows < tokens) & (cols[None, :] < channels)


@triton.jit
def _load_selected(selected_ptr, stride_component, stride_token, rows, cols, mask):
    at = selected_ptr + rows * stride_token + cols[None, :]
    delta = tl.load(at, mask=mask, other=0.0).to(tl.float32)
    beta = tl.load(at + stride_component, mask=mask, other=0.0).to(tl.float32)
    kappa = tl.load(at + 2 * stride_component, mask=mask, other=0.0).to(tl.float32)
    return delta, beta, kappa


@triton.jit
def _load_channel_parameters(delta_bias_ptr, alpha_ptr, cols, channels):
    col_ok = cols < channels
    delta_bias = tl.load(delta_bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    alpha = tl.load(alpha_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return delta_bias, alpha


@triton.jit
def _forward_kernel(
    selected_ptr, drive_input_ptr, delta_bias_ptr, alpha_ptr, a_ptr, drive_ptr, c_ptr,
    tokens, channels, stride_component, stride_token, tiny, eps,
    WITH_DRIVE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    rows, cols, mask = _tile(tokens, channels, BLOCK_T, BLOCK_N)
    delta, beta, kappa = _load_selected(selected_ptr, stride_component, stride_token, rows, cols, mask)
    delta_bias, alpha = _load_channel_parameters(delta_bias_ptr, alpha_ptr, cols, channels)
    _, a, b, c, _, _, k = _steps(delta, beta, kappa, delta_bias, _softplus(alpha), tiny, eps)
    out = rows * channels + cols[None, :]
    tl.store(a_ptr + out, (a * k).to(a_ptr.dtype.element_ty), mask=mask)
    tl.store(c_ptr + out, (c * k).to(c_ptr.dtype.element_ty), mask=mask)
    if WITH_DRIVE:
        u = tl.load(drive_input_ptr + out, mask=mask, other=0.0).to(tl.float32)
        tl.store(drive_ptr + out, (b * k * u).to(drive_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_rows(
    selected_ptr, drive_input_ptr, grad_a_ptr, grad_drive_ptr, grad_c_ptr, grad_selected_ptr, grad_drive_input_ptr,
    rows, cols, mask, delta_bias, softplus_alpha, channels, stride_component, stride_token, grad_stride_component,
    grad_stride_token, tiny, eps,
):  # fmt: skip
    """The backward on one tile of rows; returns its column sums of dL/ds and of grad_rate softplus(s)."""
    delta, beta, kappa = _load_selected(selected_ptr, stride_component, stride_token, rows, cols, mask)
    shifted, a, b, c, p, q, k = _steps(delta, beta, kappa, delta_bias, softplus_alpha, tiny, eps)
    out = rows * channels + cols[None, :]
    u = tl.load(drive_input_ptr + out, mask=mask, other=0.0).to(tl.float32)
    grad_drive = tl.load(grad_drive_ptr + out, mask=mask, other=0.0).to(tl.float32)
    # dL/d of the normalised entries (a k, b k, c k); u's gradient is d(b k u) b k
    grad_a = tl.load(grad_a_ptr + out, mask=mask, other=0.0).to(tl.float32)
    grad_b = grad_drive * u
    grad_c = tl.load(grad_c_ptr + out, mask=mask, other=0.0).to(tl.float32)
    tl.store(grad_drive_input_ptr + out, (grad_drive * b * k).to(grad_drive_input_ptr.dtype.element_ty), mask=mask)
    # through s = 1 / k: dL/ds = -(g . (a, b, c)) k^2, ds/dp = ds/dq = (1 + 4 eps) / 2 where the norm is active
    grad_half = tl.where(p + q >= 2.0, -(grad_a * a + grad_b * b + grad_c * c) * k * k * (0.5 + 2.0 * eps), 0.0)
    weight_p = grad_half / p
    weight_q = grad_half / q
    grad_raw_a = grad_a * k + (weight_p + weight_q) * a
    difference = weight_p * (b - c)
    total = weight_q * (b + c)
    grad_beta = (grad_b * k + total + difference) * (1.0 - b * b)  # tanh' = 1 - tanh^2
    grad_kappa = (grad_c * k + total - difference) * (1.0 - c * c)
    grad_rate = grad_raw_a * a  # dL/d(-rate), rate = softplus(s) softplus(alpha)
    grad_shifted = -grad_rate * _sigmoid(shifted) * softplus_alpha[None, :]
    at = grad_selected_ptr + rows * grad_stride_token + cols[None, :]
    dtype = grad_selected_ptr.dtype.element_ty
    tl.store(at, grad_shifted.to(dtype), mask=mask)
    tl.store(at + grad_stride_component, grad_beta.to(dtype), mask=mask)
    tl.store(at + 2 * grad_stride_component, grad_kappa.to(dtype), mask=mask)
    rate_weight = tl.where(mask, grad_rate * _softplus(shifted), 0.0)
    return tl.sum(tl.where(mask, grad_shifted, 0.0), axis=0), tl.sum(rate_weight, axis=0)


@triton.jit
def _backward_kernel(
    selected_ptr, drive_input_ptr, delta_bias_ptr, alpha_ptr, grad_a_ptr, grad_drive_ptr, grad_c_ptr,
    grad_selected_ptr, grad_drive_input_ptr, partial_delta_bias_ptr, partial_alpha_ptr,
    tokens, channels, stride_component, stride_token, grad_stride_component, grad_stride_token, tiny, eps,
    ROWS_PER_PROGRAM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """ROWS_PER_PROGRAM rows in tiles of BLOCK_T (few values per thread: the chain rule keeps many alive),
    then one partial column sum per program for dL/ddelta_bias = sum dL/ds and dL/dalpha (the caller
    multiplies the second by -sigmoid(alpha))."""
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < channels
    delta_bias, alpha = _load_channel_parameters(delta_bias_ptr, alpha_ptr, cols, channels)
    softplus_alpha = _softplus(alpha)
    sum_shifted = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sum_rate = tl.zeros((BLOCK_N,), dtype=tl.float32)
    first = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM
    for start in range(0, ROWS_PER_PROGRAM, BLOCK_T):
        rows = (first + start + tl.arange(0, BLOCK_T))[:, None]
        mask = (rows < tokens) & col_ok[None, :]
        shifted_part, rate_part = _backward_rows(
            selected_ptr, drive_input_ptr, grad_a_ptr, grad_drive_ptr, grad_c_ptr, grad_selected_ptr,
            grad_drive_input_ptr, rows, cols, mask, delta_bias, softplus_alpha, channels, stride_component,
            stride_token, grad_stride_component, grad_stride_token, tiny, eps,
        )  # fmt: skip
        sum_shifted += shifted_part
        sum_rate += rate_part
    partial = tl.program_id(0) * channels + cols
    tl.store(partial_delta_bias_ptr + partial, sum_shifted, mask=col_ok)
    tl.store(partial_alpha_ptr + partial, sum_rate, mask=col_ok)


def tv_steps_applies(selected: Tensor, drive_input: Tensor) -> bool:
    """Whether the kernels run for these inputs: CUDA tensors of one dtype in ``SUPPORTED_DTYPES``."""
    return selected.is_cuda and drive_input.is_cuda and selected.dtype == drive_input.dtype in SUPPORTED_DTYPES


def _grid(tokens: int, channels: int, rows_per_program: int) -> tuple[int, int]:
    return triton.cdiv(tokens, rows_per_program), triton.cdiv(channels, _BLOCK_N)


def tv_steps(
    selected: Tensor, drive_input: Tensor, delta_bias: Tensor, alpha: Tensor, with_drive: bool = True
) -> tuple[Tensor, Tensor | None, Tensor, None]:
    """(a k, b k u or None, c k, saved), the first three (B, L, N) contiguous in the input dtype, from the
    pre-activations selected (3, B, L, N), the drive input u (B, L, N) and the per-coordinate delta_bias, alpha
    (N,). ``saved`` (what the backward needs beyond its inputs) is None: this backward recomputes the step
    matrices from the pre-activations (GPU memory, not arithmetic, is what limits long sequences)."""
    planes, stride_component, stride_token = tv_layout.planes(selected)
    drive_input = drive_input.contiguous()
    tokens, channels = planes.shape[1:]
    a, c = torch.empty_like(drive_input), torch.empty_like(drive_input)
    drive = torch.empty_like(drive_input) if with_drive else None
    _forward_kernel[_grid(tokens, channels, _FORWARD_ROWS)](
        planes, drive_input, delta_bias.contiguous(), alpha.contiguous(), a, a if drive is None else drive, c,
        tokens, channels, stride_component, stride_token, *tv_layout.precision(drive_input.dtype),
        WITH_DRIVE=with_drive, BLOCK_T=_FORWARD_ROWS, BLOCK_N=_BLOCK_N, num_warps=_NUM_WARPS,
    )  # fmt: skip
    return a, drive, c, None


def tv_steps_backward(
    selected: Tensor,
    drive_input: Tensor,
    delta_bias: Tensor,
    alpha: Tensor,
    grad_a: Tensor,
    grad_drive: Tensor,
    grad_c: Tensor,
    saved: None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dL/dselected in selected's layout, dL/du, dL/ddelta_bias, dL/dalpha) from the gradients of the three
    outputs of ``tv_steps`` (each (B, L, N)); ``saved`` is its None (the step matrices are recomputed here)."""
    planes, stride_component, stride_token = tv_layout.planes(selected)
    drive_input = drive_input.contiguous()
    tokens, channels = planes.shape[1:]
    grid = _grid(tokens, channels, _BACKWARD_ROWS)
    grad_planes = torch.empty_like(planes)  # planes' strides where they are dense, else contiguous
    grad_drive_input = torch.empty_like(drive_input)
    partials = torch.empty(2, grid[0], channels, dtype=torch.float32, device=planes.device)
    _backward_kernel[grid](
        planes, drive_input, delta_bias.contiguous(), alpha.contiguous(), grad_a.contiguous(),
        grad_drive.contiguous(), grad_c.contiguous(), grad_planes, grad_drive_input, partials[0], partials[1],
        tokens, channels, stride_component, stride_token, grad_planes.stride(0), grad_planes.stride(1),
        *tv_layout.precision(drive_input.dtype), ROWS_PER_PROGRAM=_BACKWARD_ROWS, BLOCK_T=_BACKWARD_TILE,
        BLOCK_N=_BLOCK_N, num_warps=_NUM_WARPS,
    )  # fmt: skip
    grad_delta_bias, weighted_rate = partials.sum(1)
    grad_alpha = -weighted_rate * torch.sigmoid(alpha.float())
    grad_selected = grad_planes.unflatten(1, selected.shape[1:3])
    return grad_selected, grad_drive_input, grad_delta_bias.to(delta_bias.dtype), grad_alpha.to(alpha.dtype)
