"""Triton kernels for the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (real or complex).

Layout is channels-last, as everywhere in ssm_lab: ``b, h: (B, L, N)``; ``a`` is ``(1 or B, 1 or L, N)``
(constant over time for LTI cores, per step for time-varying ones); ``h0: (B, N)``.

Single-pass scan with decoupled look-back (Merrill & Garland 2016, "Single-pass Parallel Prefix Scan
with Decoupled Look-back"): the time axis is cut into segments of ``SEGMENT`` steps and every (segment,
batch row, block of ``BLOCK_N`` channels) is one program, so there are L / SEGMENT times more programs
than sequences and the whole GPU streams memory. A program loads its segment as one tile, scans it
with the associative operator of Blelloch (1990), (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2), from a
zero state, publishes the segment's map h -> A h + B (its last row), then finds the state before the
segment by walking back over the earlier segments' published maps until one has published its final
state (``_carry_in``), joins it, h_t = h_t^local + (prod_{s<=t} a_s) carry, publishes its own final
state and writes h. Inputs are read once and states written once: the memory floor of the forward
(read a, b; write h). Programs take their (segment, row) from a global ticket counter in the order
they start, so every program a program waits for has started before it, whatever order the hardware
schedules blocks in. Measured on an H100 (B=32, N=256 complex, per-step a, fwd+bwd): 1.26x the
8-volume floor at L=4096, 1.25x at L=16384; at L=1024 (25 us per volume) launch overheads dominate.

The backward is the reverse recurrence of the adjoint (Martin & Cundy 2018, "Parallelizing linear
recurrent neural nets over sequence length", section 2.2). With g_t = dL/dh_t accumulated over all
later steps and PyTorch's convention for complex gradients (grad of z is dL/d conj(z)):

    g_t = dh_t + conj(a_{t+1}) g_{t+1},    db_t = g_t,    da_t = g_t conj(h_{t-1}),    dh0 = conj(a_0) g_0,

a recurrence of the same form run from the end (segments chained from the last one), reading a, h, dh
and writing da, db: the floor of the backward. States are fp32 inside the kernel whatever the input
dtype (bf16 inputs, fp32 state).
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

# Steps and channels per program, warps: chosen by timing on an H100 (segments of 16-64 steps, blocks of
# 16-64 channels, 2-8 warps: 32 x 32 with 4 warps was best or within 5% of it at every L).
_SEGMENT = 32
_BLOCK_N = 32
_NUM_WARPS = 4


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
def _last_row(x, rows, SEGMENT: tl.constexpr):
    """x[SEGMENT - 1, :] as a (BLOCK_N,) vector (Triton has no static row indexing)."""
    return tl.sum(tl.where(rows[:, None] == SEGMENT - 1, x, 0.0), axis=0)


@triton.jit
def _load(ptr, row_starts, row_ok, col0, channels, IS_COMPLEX: tl.constexpr, BLOCK_N: tl.constexpr):
    """The (R, BLOCK_N) tile of channels col0.. on the rows starting at element offsets ``row_starts: (R, 1)``,
    as fp32 (real, imag); imag is 0 when real. A complex row is read as its 2 BLOCK_N contiguous floats (one
    coalesced access; a (R, BLOCK_N, 2) tile of pointers ran at a quarter of the bandwidth) and split after."""
    if IS_COMPLEX:
        floats = 2 * col0 + tl.arange(0, 2 * BLOCK_N)
        mask = row_ok & (floats[None, :] < 2 * channels)
        pairs = tl.load(ptr + 2 * row_starts + floats[None, :], mask=mask, other=0.0).to(tl.float32)
        real, imag = tl.split(tl.reshape(pairs, (row_starts.shape[0], BLOCK_N, 2)))
    else:
        cols = col0 + tl.arange(0, BLOCK_N)
        mask = row_ok & (cols[None, :] < channels)
        real = tl.load(ptr + row_starts + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        imag = tl.zeros_like(real)
    return real, imag


@triton.jit
def _store(ptr, row_starts, row_ok, col0, channels, real, imag, IS_COMPLEX: tl.constexpr, BLOCK_N: tl.constexpr):
    """Store a tile laid out as ``_load`` reads it."""
    if IS_COMPLEX:
        floats = 2 * col0 + tl.arange(0, 2 * BLOCK_N)
        mask = row_ok & (floats[None, :] < 2 * channels)
        pairs = tl.reshape(tl.join(real, imag), (row_starts.shape[0], 2 * BLOCK_N))
        tl.store(ptr + 2 * row_starts + floats[None, :], pairs.to(ptr.dtype.element_ty), mask=mask)
    else:
        cols = col0 + tl.arange(0, BLOCK_N)
        mask = row_ok & (cols[None, :] < channels)
        tl.store(ptr + row_starts + cols[None, :], real.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _local_scan(a_r, a_i, b_r, b_i, IS_COMPLEX: tl.constexpr):
    """Prefix products of a and states from a zero state along the tile's time axis (axis 0)."""
    if IS_COMPLEX:
        prod_r, prod_i, h_r, h_i = tl.associative_scan((a_r, a_i, b_r, b_i), axis=0, combine_fn=_combine_complex)
    else:
        prod_r, h_r = tl.associative_scan((a_r, b_r), axis=0, combine_fn=_combine_real)
        prod_i, h_i = prod_r, h_r
    return prod_r, prod_i, h_r, h_i


@triton.jit
def _join(prod_r, prod_i, h_r, h_i, carry_r, carry_i, IS_COMPLEX: tl.constexpr):
    """States given the state before the tile: h + prod * carry."""
    if IS_COMPLEX:
        out_r = h_r + prod_r * carry_r[None, :] - prod_i * carry_i[None, :]
        out_i = h_i + prod_r * carry_i[None, :] + prod_i * carry_r[None, :]
    else:
        out_r = h_r + prod_r * carry_r[None, :]
        out_i = out_r
    return out_r, out_i


@triton.jit
def _program(sync_ptr, batch, channels, BLOCK_N: tl.constexpr):
    """(segment, batch row, first channel) of this program, numbered by a ticket in the order programs
    start (see the module docstring)."""
    col_blocks = tl.cdiv(channels, BLOCK_N)
    ticket = tl.atomic_add(sync_ptr, 1)
    row = ticket % (batch * col_blocks)
    return ticket // (batch * col_blocks), (row // col_blocks).to(tl.int64), (row % col_blocks) * BLOCK_N


@triton.jit
def _segment_states(
    prefix_ptr, flag_ptr, coef_r, coef_i, x_r, x_i, first_r, first_i, segment, n_segments, pid_b, batch, col0,
    channels, IS_COMPLEX: tl.constexpr, SEGMENT: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """States of the segment's tile (rows in the order the recurrence runs): local scan, carry in, join."""
    rows = tl.arange(0, SEGMENT)
    cols = col0 + tl.arange(0, BLOCK_N)
    prod_r, prod_i, h_r, h_i = _local_scan(coef_r, coef_i, x_r, x_i, IS_COMPLEX)
    carry_r, carry_i = _carry_in(
        prefix_ptr, flag_ptr, segment, n_segments, batch * channels, n_segments * batch * channels,
        pid_b * channels + cols, cols < channels, _last_row(prod_r, rows, SEGMENT), _last_row(prod_i, rows, SEGMENT),
        _last_row(h_r, rows, SEGMENT), _last_row(h_i, rows, SEGMENT), first_r, first_i, IS_COMPLEX,
    )  # fmt: skip
    return _join(prod_r, prod_i, h_r, h_i, carry_r, carry_i, IS_COMPLEX)


@triton.jit
def _complex_mul(x_r, x_i, y_r, y_i):
    return x_r * y_r - x_i * y_i, x_r * y_i + x_i * y_r


@triton.jit
def _times_conj(x_r, x_i, y_r, y_i, IS_COMPLEX: tl.constexpr):
    """x conj(y); for real inputs (imaginary parts aliased to the real ones) x y in both returns."""
    if IS_COMPLEX:
        return x_r * y_r + x_i * y_i, x_i * y_r - x_r * y_i
    product = x_r * y_r
    return product, product


@triton.jit
def _raise_flags(flag_ptr, offsets, col_ok, value):
    tl.debug_barrier()  # every thread's part of the published values is written before any flag goes up
    tl.atomic_xchg(flag_ptr + offsets, value, mask=col_ok, sem="release")


@triton.jit
def _carry_in(
    prefix_ptr, flag_ptr, segment, n_segments, stride, plane, state_offsets, col_ok,
    agg_a_r, agg_a_i, agg_b_r, agg_b_i, first_r, first_i, IS_COMPLEX: tl.constexpr,
):  # fmt: skip
    """The state before this segment, by decoupled look-back, publishing this segment's values for
    the later ones (real inputs run the same arithmetic with zero imaginary parts). ``agg`` is the
    segment's own map h -> agg_a h + agg_b (its local scan's last row), ``first`` the state before
    segment 0. Per channel and segment, the prefix buffer holds 6 planes:
    the aggregate (a_r, a_i, b_r, b_i) behind flag 1 and the inclusive state (r, i) behind flag 2.

    Walking back from the predecessor, a channel folds in aggregates (flag 1) until it meets an
    inclusive state (flag 2), and waits only where a predecessor has not finished its local scan
    (flag 0). Segment 0 publishes its inclusive state at once, so the walk always ends."""
    if not IS_COMPLEX:  # the real kernels alias the imaginary parts to the real ones
        agg_a_i = tl.zeros_like(agg_a_r)
        agg_b_i = tl.zeros_like(agg_a_r)
        first_i = tl.zeros_like(agg_a_r)
    own = segment * stride + state_offsets
    if segment == 0:
        carry_r, carry_i = first_r, first_i
    else:
        tl.store(prefix_ptr + own, agg_a_r, mask=col_ok)
        tl.store(prefix_ptr + plane + own, agg_a_i, mask=col_ok)
        tl.store(prefix_ptr + 2 * plane + own, agg_b_r, mask=col_ok)
        tl.store(prefix_ptr + 3 * plane + own, agg_b_i, mask=col_ok)
        _raise_flags(flag_ptr, own, col_ok, 1)
        # (acc_a, acc_b): the map of the segments between the one looked at and this one
        acc_a_r = tl.full(agg_a_r.shape, 1.0, tl.float32)
        acc_a_i = tl.zeros_like(agg_a_r)
        acc_b_r = tl.zeros_like(agg_a_r)
        acc_b_i = tl.zeros_like(agg_a_r)
        carry_r = tl.zeros_like(agg_a_r)
        carry_i = tl.zeros_like(agg_a_r)
        looking = col_ok
        at = (segment - 1) * stride + state_offsets
        pending = 1
        while pending > 0:
            flags = tl.atomic_add(flag_ptr + at, 0, mask=looking, sem="acquire")
            found = looking & (flags == 2)
            folded = looking & (flags == 1)
            state_r = tl.load(prefix_ptr + 4 * plane + at, mask=found, other=0.0, volatile=True)
            state_i = tl.load(prefix_ptr + 5 * plane + at, mask=found, other=0.0, volatile=True)
            prod_r, prod_i = _complex_mul(acc_a_r, acc_a_i, state_r, state_i)
            carry_r = tl.where(found, prod_r + acc_b_r, carry_r)
            carry_i = tl.where(found, prod_i + acc_b_i, carry_i)
            a_r = tl.load(prefix_ptr + at, mask=folded, other=1.0, volatile=True)
            a_i = tl.load(prefix_ptr + plane + at, mask=folded, other=0.0, volatile=True)
            b_r = tl.load(prefix_ptr + 2 * plane + at, mask=folded, other=0.0, volatile=True)
            b_i = tl.load(prefix_ptr + 3 * plane + at, mask=folded, other=0.0, volatile=True)
            # the earlier segment's map runs first: acc o agg = (acc_a a, acc_a b + acc_b)
            next_b_r, next_b_i = _complex_mul(acc_a_r, acc_a_i, b_r, b_i)
            acc_b_r = tl.where(folded, next_b_r + acc_b_r, acc_b_r)
            acc_b_i = tl.where(folded, next_b_i + acc_b_i, acc_b_i)
            next_a_r, next_a_i = _complex_mul(acc_a_r, acc_a_i, a_r, a_i)
            acc_a_r = tl.where(folded, next_a_r, acc_a_r)
            acc_a_i = tl.where(folded, next_a_i, acc_a_i)
            at = tl.where(folded, at - stride, at)
            looking = looking & ~found
            pending = tl.sum(looking.to(tl.int32), axis=0)
    if segment < n_segments - 1:
        state_r, state_i = _complex_mul(agg_a_r, agg_a_i, carry_r, carry_i)
        tl.store(prefix_ptr + 4 * plane + own, state_r + agg_b_r, mask=col_ok)
        tl.store(prefix_ptr + 5 * plane + own, state_i + agg_b_i, mask=col_ok)
        _raise_flags(flag_ptr, own, col_ok, 2)
    return carry_r, carry_i


@triton.jit
def _forward_kernel(
    a_ptr, b_ptr, h0_ptr, h_ptr, prefix_ptr, sync_ptr, flag_ptr,
    batch, length, channels, n_segments, a_stride_batch, a_stride_time,
    HAS_H0: tl.constexpr, IS_COMPLEX: tl.constexpr, SEGMENT: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    segment, pid_b, col0 = _program(sync_ptr, batch, channels, BLOCK_N)
    t = (segment * SEGMENT + tl.arange(0, SEGMENT))[:, None]
    in_range = t < length
    row_starts = pid_b * length * channels + t * channels
    a_r, a_i = _load(a_ptr, pid_b * a_stride_batch + t * a_stride_time, in_range, col0, channels, IS_COMPLEX, BLOCK_N)
    a_r = tl.where(in_range, a_r, 1.0)  # past the end: identity steps (a = 1, b = 0)
    b_r, b_i = _load(b_ptr, row_starts, in_range, col0, channels, IS_COMPLEX, BLOCK_N)
    zero_row = tl.zeros((1, 1), dtype=tl.int64)
    first_r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    first_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_H0:
        h0_r, h0_i = _load(h0_ptr, pid_b * channels + zero_row, zero_row == 0, col0, channels, IS_COMPLEX, BLOCK_N)
        first_r = tl.sum(h0_r, axis=0)
        first_i = tl.sum(h0_i, axis=0)
    h_r, h_i = _segment_states(
        prefix_ptr, flag_ptr, a_r, a_i, b_r, b_i, first_r, first_i, segment, n_segments, pid_b, batch, col0, channels,
        IS_COMPLEX, SEGMENT, BLOCK_N,
    )  # fmt: skip
    _store(h_ptr, row_starts, in_range, col0, channels, h_r, h_i, IS_COMPLEX, BLOCK_N)


@triton.jit
def _backward_kernel(
    a_ptr, h_ptr, h0_ptr, grad_h_ptr, grad_a_ptr, grad_b_ptr, grad_h0_ptr, prefix_ptr, sync_ptr, flag_ptr,
    batch, length, channels, n_segments, a_stride_batch, a_stride_time,
    HAS_H0: tl.constexpr, A_PER_STEP: tl.constexpr, IS_COMPLEX: tl.constexpr,
    SEGMENT: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    segment, pid_b, col0 = _program(sync_ptr, batch, channels, BLOCK_N)  # segment 0 is the last in time
    rows = tl.arange(0, SEGMENT)
    t = (length - 1 - segment * SEGMENT - rows)[:, None]  # rows reversed: row i is step L - 1 - segment * SEGMENT - i
    valid = t >= 0
    row_starts = pid_b * length * channels + t * channels
    a_rows = pid_b * a_stride_batch + (t + 1) * a_stride_time
    # the adjoint's coefficient conj(a_{t+1}): 0 at t = L - 1, 1 on padding rows
    c_r, c_i = _load(a_ptr, a_rows, (t + 1 < length) & valid, col0, channels, IS_COMPLEX, BLOCK_N)
    c_r = tl.where(valid, c_r, 1.0)
    d_r, d_i = _load(grad_h_ptr, row_starts, valid, col0, channels, IS_COMPLEX, BLOCK_N)
    # h_{t-1}: h0 (or 0) at t = 0
    p_r, p_i = _load(h_ptr, row_starts - channels, (t >= 1) & valid, col0, channels, IS_COMPLEX, BLOCK_N)
    zero_row = tl.zeros((1, 1), dtype=tl.int64)
    if HAS_H0:
        q_r, q_i = _load(h0_ptr, pid_b * channels + 0 * t, t == 0, col0, channels, IS_COMPLEX, BLOCK_N)
        p_r += q_r
        p_i += q_i
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    g_r, g_i = _segment_states(
        prefix_ptr, flag_ptr, c_r, -c_i, d_r, d_i, zero, zero, segment, n_segments, pid_b, batch, col0, channels,
        IS_COMPLEX, SEGMENT, BLOCK_N,
    )  # fmt: skip
    _store(grad_b_ptr, row_starts, valid, col0, channels, g_r, g_i, IS_COMPLEX, BLOCK_N)
    da_r, da_i = _times_conj(g_r, g_i, p_r, p_i, IS_COMPLEX)
    if A_PER_STEP:
        _store(grad_a_ptr, row_starts, valid, col0, channels, da_r, da_i, IS_COMPLEX, BLOCK_N)
    else:  # time-constant a: this segment's share of the sum over time, reduced by the caller
        partial = segment * batch * channels + pid_b * channels + zero_row
        _store(grad_a_ptr, partial, zero_row == 0, col0, channels, tl.sum(da_r, axis=0)[None, :],
               tl.sum(da_i, axis=0)[None, :], IS_COMPLEX, BLOCK_N)  # fmt: skip
    if HAS_H0 and segment == n_segments - 1:  # the segment holding t = 0: dh0 = conj(a_0) g_0
        a0_r, a0_i = _load(a_ptr, pid_b * a_stride_batch + zero_row, zero_row == 0, col0, channels, IS_COMPLEX, BLOCK_N)
        g0_r = tl.sum(tl.where(t == 0, g_r, 0.0), axis=0)[None, :]
        g0_i = tl.sum(tl.where(t == 0, g_i, 0.0), axis=0)[None, :]
        dh0_r, dh0_i = _times_conj(g0_r, g0_i, a0_r, a0_i, IS_COMPLEX)
        _store(
            grad_h0_ptr, pid_b * channels + zero_row, zero_row == 0, col0, channels, dh0_r, dh0_i, IS_COMPLEX, BLOCK_N
        )


def _float_view(x: Tensor) -> Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _launch(
    batch: int, length: int, channels: int, device: torch.device
) -> tuple[tuple[int], int, Tensor, Tensor, Tensor]:
    """(grid, number of segments, carry buffer, ticket, flags) of one chained pass: the ticket and the
    flags must start at zero (one memset); the carries are written before they are read."""
    n_segments = triton.cdiv(length, _SEGMENT)
    grid = (n_segments * batch * triton.cdiv(channels, _BLOCK_N),)
    prefixes = torch.empty(6 * n_segments * batch * channels, dtype=torch.float32, device=device)
    sync = torch.zeros(4 + n_segments * batch * channels, dtype=torch.int32, device=device)
    return grid, n_segments, prefixes, sync[:1], sync[4:]  # flags 16-byte aligned


class _LinearScan(torch.autograd.Function):
    """Autograd wrapper: a (Ba, La, N) contiguous with Ba in {1, B}, La in {1, L}; b (B, L, N); h0 (B, N) or None."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        batch, length, channels = b.shape
        h = torch.empty_like(b)
        a_stride_batch, a_stride_time = _a_strides(a, batch, length, channels)
        grid, n_segments, prefixes, ticket, flags = _launch(batch, length, channels, b.device)
        _forward_kernel[grid](
            _float_view(a), _float_view(b), _float_view(h0 if h0 is not None else b), _float_view(h),
            prefixes, ticket, flags, batch, length, channels, n_segments, a_stride_batch, a_stride_time,
            HAS_H0=h0 is not None, IS_COMPLEX=b.is_complex(), SEGMENT=_SEGMENT, BLOCK_N=_BLOCK_N,
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
    grid, n_segments, prefixes, ticket, flags = _launch(batch, length, channels, h.device)
    grad_b = torch.empty_like(h)
    # per-step da is written in a's dtype; a time-constant da is summed in fp32, per segment, then over segments
    accumulate = torch.complex64 if a.is_complex() else torch.float32
    shape = h.shape if a_per_step else (n_segments, batch, channels)
    grad_a = torch.empty(shape, dtype=a.dtype if a_per_step else accumulate, device=h.device)
    grad_h0 = torch.empty_like(h0) if h0 is not None else None
    _backward_kernel[grid](
        _float_view(a), _float_view(h), _float_view(h0 if h0 is not None else h), _float_view(grad_h),
        _float_view(grad_a), _float_view(grad_b), _float_view(grad_h0 if h0 is not None else h),
        prefixes, ticket, flags, batch, length, channels, n_segments, a_stride_batch, a_stride_time,
        HAS_H0=h0 is not None, A_PER_STEP=a_per_step, IS_COMPLEX=h.is_complex(),
        SEGMENT=_SEGMENT, BLOCK_N=_BLOCK_N, num_warps=_NUM_WARPS,
    )  # fmt: skip
    if not a_per_step:
        grad_a = grad_a.sum(0).unsqueeze(1)
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
