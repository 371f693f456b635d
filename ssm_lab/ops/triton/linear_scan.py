"""Triton kernels for the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (real or complex).

Layout is channels-last, as everywhere in ssm_lab: ``b, h: (B, L, N)``; ``a`` is ``(1 or B, 1 or L, N)``
(constant over time for LTI cores, per step for time-varying ones); ``h0: (B, N)``. One program owns
one batch row and ``BLOCK_N`` channels and walks the sequence in chunks of ``BLOCK_T`` steps: each
chunk is loaded as one tile, scanned in parallel with the associative operator of Blelloch (1990),
(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2), and joined to the carry of the previous chunk, so every
input is read once and every state written once (the memory floor of the forward: read a, b; write h).
There are only B * N / BLOCK_N programs (the time axis is sequential across chunks), so each keeps
the loads of its next two chunks in flight while it scans the current one: small chunks, many bytes
moving (the chunk size and the depth were chosen by timing, see ``ssm_lab/bench/scan.py``).

The backward is the reverse recurrence of the adjoint (Martin & Cundy 2018, "Parallelizing linear
recurrent neural nets over sequence length", section 2.2). With g_t = dL/dh_t accumulated over all
later steps and PyTorch's convention for complex gradients (grad of z is dL/d conj(z)):

    g_t = dh_t + conj(a_{t+1}) g_{t+1},    db_t = g_t,    da_t = g_t conj(h_{t-1}),    dh0 = conj(a_0) g_0,

a recurrence of the same form run from the end, reading a, h, dh and writing da, db: the floor of
the backward. States are fp32 inside the kernel whatever the input dtype (bf16 inputs, fp32 state).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["linear_scan", "linear_scan_adjoint", "SUPPORTED_DTYPES"]

# complex64 is the only complex dtype: bf16/fp16 have no complex counterpart in torch, and complex128
# (like float64) stays on the torch path, where double precision is what the caller asked for.
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.complex64)

# Chosen on an H200 (B=32, N=256 complex, L 1024 and 16384; ssm_lab/bench/scan.py times it); on an H100
# BLOCK_N=32 with 4 warps did as well (1.56x the floor at L=16384).
_BLOCK_T = 8
_BLOCK_N = 16
_NUM_WARPS = 2


@triton.jit
def _combine_real(a_left, b_left, a_right, b_right):
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _combine_complex(ar_left, ai_left, br_left, bi_left, ar_right, ai_right, br_right, bi_right):
    a_r = ar_left * ar_right - ai_left * ai_right
    a_i = ar_left * ai_right + ai_left * ar_right
    b_r = ar_right * br_left - ai_right * bi_left + br_right
    b_i = ar_right * bi_left + ai_right * br_left + bi_right
    return a_r, a_i, b_r, b_i


@triton.jit
def _last_row(x, rows, BLOCK_T: tl.constexpr):
    """x[BLOCK_T - 1, :] as a (BLOCK_N,) vector (Triton has no static row indexing)."""
    return tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, x, 0.0), axis=0)


@triton.jit
def _load(ptr, offsets, mask, IS_COMPLEX: tl.constexpr):
    """Load a (BLOCK_T, BLOCK_N) tile at element ``offsets`` as fp32 (real, imag); imag is 0 when real."""
    if IS_COMPLEX:
        parts = tl.arange(0, 2)
        pair = tl.load(ptr + offsets[:, :, None] * 2 + parts[None, None, :], mask=mask[:, :, None], other=0.0)
        real, imag = tl.split(pair.to(tl.float32))
    else:
        real = tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        imag = tl.zeros_like(real)
    return real, imag


@triton.jit
def _store(ptr, offsets, mask, real, imag, IS_COMPLEX: tl.constexpr):
    if IS_COMPLEX:
        parts = tl.arange(0, 2)
        pair = tl.join(real, imag).to(ptr.dtype.element_ty)
        tl.store(ptr + offsets[:, :, None] * 2 + parts[None, None, :], pair, mask=mask[:, :, None])
    else:
        tl.store(ptr + offsets, real.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scan_tile(a_r, a_i, b_r, b_i, carry_r, carry_i, rows, IS_COMPLEX: tl.constexpr, BLOCK_T: tl.constexpr):
    """States of one tile given the state before it: h = (prefix of b) + (prefix product of a) * carry."""
    if IS_COMPLEX:
        prod_r, prod_i, h_r, h_i = tl.associative_scan((a_r, a_i, b_r, b_i), axis=0, combine_fn=_combine_complex)
        h_r = h_r + prod_r * carry_r[None, :] - prod_i * carry_i[None, :]
        h_i = h_i + prod_r * carry_i[None, :] + prod_i * carry_r[None, :]
        carry_i = _last_row(h_i, rows, BLOCK_T)
    else:
        prod_r, h_r = tl.associative_scan((a_r, b_r), axis=0, combine_fn=_combine_real)
        h_r = h_r + prod_r * carry_r[None, :]
        h_i = h_r
    carry_r = _last_row(h_r, rows, BLOCK_T)
    return h_r, h_i, carry_r, carry_i


@triton.jit
def _forward_kernel(
    a_ptr, b_ptr, h0_ptr, h_ptr,
    length, channels, a_stride_batch, a_stride_time,
    HAS_H0: tl.constexpr, IS_COMPLEX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_T)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < channels
    seq_base = pid_b * length * channels
    a_base = pid_b * a_stride_batch
    carry_r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    carry_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_H0:
        carry_r, carry_i = _load(h0_ptr, pid_b * channels + cols[None, :], col_ok[None, :], IS_COMPLEX)
        carry_r = tl.sum(carry_r, axis=0)
        carry_i = tl.sum(carry_i, axis=0)
    # the loads of the next two chunks are in flight while this chunk is scanned: with B * N lanes
    # only, that is what keeps enough bytes moving to approach the copy bandwidth
    a_r, a_i, b_r, b_i = _forward_inputs(a_ptr, b_ptr, 0, rows, cols, col_ok, seq_base, a_base, length, channels,
                                         a_stride_time, IS_COMPLEX)  # fmt: skip
    a1_r, a1_i, b1_r, b1_i = _forward_inputs(a_ptr, b_ptr, BLOCK_T, rows, cols, col_ok, seq_base, a_base, length,
                                             channels, a_stride_time, IS_COMPLEX)  # fmt: skip
    for start in tl.range(0, length, BLOCK_T):
        a2_r, a2_i, b2_r, b2_i = _forward_inputs(
            a_ptr, b_ptr, start + 2 * BLOCK_T, rows, cols, col_ok, seq_base, a_base, length, channels, a_stride_time,
            IS_COMPLEX,
        )  # fmt: skip
        t = start + rows
        mask = (t[:, None] < length) & col_ok[None, :]
        offsets = seq_base + t[:, None] * channels + cols[None, :]
        h_r, h_i, carry_r, carry_i = _scan_tile(a_r, a_i, b_r, b_i, carry_r, carry_i, rows, IS_COMPLEX, BLOCK_T)
        _store(h_ptr, offsets, mask, h_r, h_i, IS_COMPLEX)
        a_r, a_i, b_r, b_i = a1_r, a1_i, b1_r, b1_i
        a1_r, a1_i, b1_r, b1_i = a2_r, a2_i, b2_r, b2_i


@triton.jit
def _forward_inputs(a_ptr, b_ptr, start, rows, cols, col_ok, seq_base, a_base, length, channels, a_stride_time,
                    IS_COMPLEX: tl.constexpr):  # fmt: skip
    """a and b of the chunk starting at ``start``; past the end, the identity step (a = 1, b = 0)."""
    t = start + rows
    mask = (t[:, None] < length) & col_ok[None, :]
    a_r, a_i = _load(a_ptr, a_base + t[:, None] * a_stride_time + cols[None, :], mask, IS_COMPLEX)
    b_r, b_i = _load(b_ptr, seq_base + t[:, None] * channels + cols[None, :], mask, IS_COMPLEX)
    return tl.where(mask, a_r, 1.0), a_i, b_r, b_i


@triton.jit
def _backward_kernel(
    a_ptr, h_ptr, h0_ptr, grad_h_ptr, grad_a_ptr, grad_b_ptr, grad_h0_ptr,
    length, channels, a_stride_batch, a_stride_time,
    HAS_H0: tl.constexpr, A_PER_STEP: tl.constexpr, IS_COMPLEX: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_T)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < channels
    seq_base = pid_b * length * channels
    a_base = pid_b * a_stride_batch
    carry_r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    carry_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    # time-constant a: its gradient is a sum over time, kept per (batch, channel) and reduced by the caller
    grad_a_sum_r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    grad_a_sum_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    c_r, c_i, d_r, d_i, p_r, p_i = _backward_inputs(
        a_ptr, h_ptr, h0_ptr, grad_h_ptr, 0, rows, cols, col_ok, pid_b, seq_base, a_base, length, channels,
        a_stride_time, HAS_H0, IS_COMPLEX,
    )  # fmt: skip
    c1_r, c1_i, d1_r, d1_i, p1_r, p1_i = _backward_inputs(
        a_ptr, h_ptr, h0_ptr, grad_h_ptr, BLOCK_T, rows, cols, col_ok, pid_b, seq_base, a_base, length, channels,
        a_stride_time, HAS_H0, IS_COMPLEX,
    )  # fmt: skip
    for end in tl.range(0, length, BLOCK_T):
        c2_r, c2_i, d2_r, d2_i, p2_r, p2_i = _backward_inputs(
            a_ptr, h_ptr, h0_ptr, grad_h_ptr, end + 2 * BLOCK_T, rows, cols, col_ok, pid_b, seq_base, a_base, length,
            channels, a_stride_time, HAS_H0, IS_COMPLEX,
        )  # fmt: skip
        t = length - 1 - end - rows
        valid = (t[:, None] >= 0) & col_ok[None, :]
        offsets = seq_base + t[:, None] * channels + cols[None, :]
        g_r, g_i, carry_r, carry_i = _scan_tile(c_r, -c_i, d_r, d_i, carry_r, carry_i, rows, IS_COMPLEX, BLOCK_T)
        _store(grad_b_ptr, offsets, valid, g_r, g_i, IS_COMPLEX)
        if IS_COMPLEX:
            da_r = g_r * p_r + g_i * p_i
            da_i = g_i * p_r - g_r * p_i
        else:
            da_r = g_r * p_r
            da_i = da_r
        if A_PER_STEP:
            _store(grad_a_ptr, offsets, valid, da_r, da_i, IS_COMPLEX)
        else:
            grad_a_sum_r += tl.sum(da_r, axis=0)
            if IS_COMPLEX:
                grad_a_sum_i += tl.sum(da_i, axis=0)
        c_r, c_i, d_r, d_i, p_r, p_i = c1_r, c1_i, d1_r, d1_i, p1_r, p1_i
        c1_r, c1_i, d1_r, d1_i, p1_r, p1_i = c2_r, c2_i, d2_r, d2_i, p2_r, p2_i
    col_offsets = pid_b * channels + cols[None, :]
    if not A_PER_STEP:
        _store(grad_a_ptr, col_offsets, col_ok[None, :], grad_a_sum_r[None, :], grad_a_sum_i[None, :], IS_COMPLEX)
    if HAS_H0:
        # the carry is now g_0; dh0 = conj(a_0) g_0
        a0_r, a0_i = _load(a_ptr, a_base + cols[None, :], col_ok[None, :], IS_COMPLEX)
        g0_r = carry_r[None, :]
        g0_i = carry_i[None, :]
        if IS_COMPLEX:
            dh0_r = a0_r * g0_r + a0_i * g0_i
            dh0_i = a0_r * g0_i - a0_i * g0_r
        else:
            dh0_r = a0_r * g0_r
            dh0_i = dh0_r
        _store(grad_h0_ptr, col_offsets, col_ok[None, :], dh0_r, dh0_i, IS_COMPLEX)


@triton.jit
def _backward_inputs(a_ptr, h_ptr, h0_ptr, grad_h_ptr, end, rows, cols, col_ok, pid_b, seq_base, a_base, length,
                     channels, a_stride_time, HAS_H0: tl.constexpr, IS_COMPLEX: tl.constexpr):  # fmt: skip
    """For the chunk ending ``end`` steps before L, rows reversed (row i is step L-1-end-i): the adjoint's
    coefficient a_{t+1} (0 at t = L-1, 1 on padding rows), dh_t, and h_{t-1} (h0 or 0 at t = 0)."""
    t = length - 1 - end - rows
    valid = (t[:, None] >= 0) & col_ok[None, :]
    offsets = seq_base + t[:, None] * channels + cols[None, :]
    next_ok = (t[:, None] + 1 < length) & valid
    c_r, c_i = _load(a_ptr, a_base + (t[:, None] + 1) * a_stride_time + cols[None, :], next_ok, IS_COMPLEX)
    c_r = tl.where(valid, c_r, 1.0)
    d_r, d_i = _load(grad_h_ptr, offsets, valid, IS_COMPLEX)
    prev_ok = (t[:, None] >= 1) & valid
    p_r, p_i = _load(h_ptr, offsets - channels, prev_ok, IS_COMPLEX)
    if HAS_H0:
        first = (t[:, None] == 0) & valid
        q_r, q_i = _load(h0_ptr, pid_b * channels + cols[None, :] + 0 * t[:, None], first, IS_COMPLEX)
        p_r += q_r
        p_i += q_i
    return c_r, c_i, d_r, d_i, p_r, p_i


def _float_view(x: Tensor) -> Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _grid(batch: int, channels: int) -> tuple[int, int]:
    return (triton.cdiv(channels, _BLOCK_N), batch)


class _LinearScan(torch.autograd.Function):
    """Autograd wrapper: a (Ba, La, N) contiguous with Ba in {1, B}, La in {1, L}; b (B, L, N); h0 (B, N) or None."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        batch, length, channels = b.shape
        h = torch.empty_like(b)
        a_stride_batch, a_stride_time = _a_strides(a, batch, length, channels)
        _forward_kernel[_grid(batch, channels)](
            _float_view(a), _float_view(b), _float_view(h0 if h0 is not None else b), _float_view(h),
            length, channels, a_stride_batch, a_stride_time,
            HAS_H0=h0 is not None, IS_COMPLEX=b.is_complex(), BLOCK_T=_BLOCK_T, BLOCK_N=_BLOCK_N,
            num_warps=_NUM_WARPS,
        )  # fmt: skip
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return linear_scan_adjoint(*ctx.saved_tensors, grad_h)


def _a_strides(a: Tensor, batch: int, length: int, channels: int) -> tuple[int, int]:
    """Element strides of a (Ba, La, N) contiguous ``a`` along batch and time; 0 where it broadcasts."""
    a_stride_batch = a.shape[1] * channels if a.shape[0] == batch and batch > 1 else 0
    a_stride_time = channels if a.shape[1] == length and length > 1 else 0
    return a_stride_batch, a_stride_time


def linear_scan_adjoint(
    a: Tensor, h: Tensor, h0: Tensor | None, grad_h: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(grad_a, grad_b, grad_h0) of ``linear_scan`` from its states ``h`` and dLoss/dh, by the backward
    kernel (one pass reading a, h, dh, writing da, db): what its autograd node runs, callable by a
    fused node that kept the states itself. a: contiguous (1 or B, 1 or L, N) in h's dtype."""
    batch, length, channels = h.shape
    a_stride_batch, a_stride_time = _a_strides(a, batch, length, channels)
    grad_h = grad_h.contiguous().to(h.dtype)
    a_per_step = a_stride_time != 0
    grad_b = torch.empty_like(h)
    # per-step da is written in a's dtype; a time-constant da is an fp32 sum over time
    accumulate = torch.complex64 if a.is_complex() else torch.float32
    grad_a = torch.empty_like(h, dtype=a.dtype) if a_per_step else h.new_empty((batch, channels), dtype=accumulate)
    grad_h0 = torch.empty_like(h0) if h0 is not None else None
    _backward_kernel[_grid(batch, channels)](
        _float_view(a), _float_view(h), _float_view(h0 if h0 is not None else h), _float_view(grad_h),
        _float_view(grad_a), _float_view(grad_b), _float_view(grad_h0 if h0 is not None else h),
        length, channels, a_stride_batch, a_stride_time,
        HAS_H0=h0 is not None, A_PER_STEP=a_per_step, IS_COMPLEX=h.is_complex(),
        BLOCK_T=_BLOCK_T, BLOCK_N=_BLOCK_N, num_warps=_NUM_WARPS,
    )  # fmt: skip
    if not a_per_step:
        grad_a = grad_a.unsqueeze(1)
    if a.shape[0] == 1 and batch > 1:
        grad_a = grad_a.sum(0, keepdim=True)
    return grad_a.to(a.dtype), grad_b, grad_h0


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """All states of h_t = a_t * h_{t-1} + b_t on the GPU; same contract as ``linear_recurrence_ref``.

    a: (1 or B, 1 or L, N), b: (B, L, N), h0: (B, N) or None (zero), all CUDA tensors of one dtype in
    ``SUPPORTED_DTYPES`` (checked by the caller, ``ssm_lab.ops.scan``) -> h: (B, L, N) in b's dtype.
    Gradients flow to a, b and h0; the final state is h[:, -1].
    """
    if b.shape[1] == 0:
        return b.clone()
    return _LinearScan.apply(a.contiguous(), b.contiguous(), h0.contiguous() if h0 is not None else None)
