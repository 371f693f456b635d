"""The Linear CDE's exact solver on the GPU without forming any matrix exponential: the Triton twin of
``ssm_lab/ops/cpu/exp_action.c`` (same contract, same arithmetic; its docstring has the method).

Every step applies the flow of h' = M_t h + v_t over unit time, h_t = e^{M_t} h_{t-1} + phi_1(M_t) v_t, as the
action of the exponential on the state (Al-Mohy & Higham 2011): 2^s substeps (s from ||M_t||_1), each the
degree-m Taylor polynomial of the augmented exponential on [h; 1] by Horner, r_m = u, r_k = u + sigma / (k + 1)
(M r_{k+1} + v), in matrix-vector products. The time loop is sequential, so one program runs one batch row
with its step's N x N matrix in registers (N <= ``MAX_STATE``): m 2^s products of N^2 per step, against the
~(5 + s) products of N^3 per step, the (B, L, N, N) exponentials and their parallel scan that the formed-map
path (``ssm_lab.ops.matrix_scan``) makes and differentiates. The backward sweeps time in reverse: it recomputes a
step's substeps from h_{t-1}, keeping the Horner terms r_{k+1} in a per-row scratch buffer, then runs the
adjoint, rho_{k+1} = M^T p_k with p_k = sigma / (k + 1) rho_k, dLoss/du = sum_k rho_k + rho_m, dv += sum_k p_k,
and writes dM = sum_{j,k} p_k r_{k+1}^T (rank m 2^s) in the column-major layout M was read in.

M is read column by column, as ``T = M^T`` row-major (``M.mT`` of a contiguous tensor is read in place).
float32 only: float64 stays on the formed-map path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssm_lab.ops.triton import holds_state

__all__ = ["MAX_STATE", "SUPPORTED_DTYPES", "applies", "exp_action_backward", "exp_action_forward", "one_norms"]

SUPPORTED_DTYPES = (torch.float32,)
#: the largest state the kernels hold (its N x N matrix in registers: 128 per thread at 4 warps)
MAX_STATE = 128


def _warps(block: int, backward: bool) -> int:
    """Warps per program, timed on an H100 (1, 2, 4, 8): one warp reduces its matrix-vector products without a
    barrier, and is fastest forward up to N = 64 (0.55x the time of four) and backward up to N = 32; past that a
    warp's share of the matrix no longer fits its registers, and four are fastest (eight took 1.4-2.7x)."""
    return 1 if block <= (32 if backward else 64) else 4


@triton.jit
def _tile(n, BLOCK: tl.constexpr):
    """(lines, cols, col_ok, tile, tile_ok): the offsets of an N x N row-major matrix in a BLOCK x BLOCK tile."""
    lines, cols = tl.arange(0, BLOCK), tl.arange(0, BLOCK)
    col_ok = cols < n
    return lines, cols, col_ok, lines[:, None] * n + cols[None, :], (lines[:, None] < n) & col_ok[None, :]


@triton.jit
def _horner_flow(T, v, u, sigma, scratch, cols, DEGREE: tl.constexpr, STORE: tl.constexpr, BLOCK: tl.constexpr):
    """The degree-DEGREE Taylor flow over sigma from u (T = M^T, so M r = sum_j T[j, :] r_j); with STORE the terms
    r_1 .. r_m are written at scratch + (k - 1) BLOCK."""
    if STORE:
        tl.store(scratch + (DEGREE - 1) * BLOCK + cols, u)
    out = u
    for k in tl.static_range(DEGREE - 1, -1, -1):
        product = tl.sum(T * out[:, None], axis=0) + v
        out = u + (sigma / (k + 1)) * product
        if STORE and k > 0:
            tl.store(scratch + (k - 1) * BLOCK + cols, out)
    return out


@triton.jit
def _one_norms_kernel(mt_ptr, norms_ptr, n, BLOCK: tl.constexpr):
    matrix = tl.program_id(0).to(tl.int64)
    _, _, _, tile, tile_ok = _tile(n, BLOCK)
    T = tl.load(mt_ptr + matrix * n * n + tile, mask=tile_ok, other=0.0)
    tl.store(norms_ptr + matrix, tl.max(tl.sum(tl.abs(T), axis=1), axis=0))  # row j of T is column j of M


@triton.jit
def _forward_kernel(
    mt_ptr, v_ptr, h0_ptr, squarings_ptr, states_ptr, length, n, max_substeps,
    HAS_H0: tl.constexpr, DEGREE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    _, cols, col_ok, tile, tile_ok = _tile(n, BLOCK)
    h = tl.load(h0_ptr + row * n + cols, mask=col_ok, other=0.0) if HAS_H0 else tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(length):
        step = row * length + t
        T = tl.load(mt_ptr + step * n * n + tile, mask=tile_ok, other=0.0)
        v = tl.load(v_ptr + step * n + cols, mask=col_ok, other=0.0)
        squarings = tl.load(squarings_ptr + step)
        sigma = tl.exp2(-squarings.to(tl.float32))
        for j in range(max_substeps):
            if j < (1 << squarings):
                h = _horner_flow(T, v, h, sigma, mt_ptr, cols, DEGREE, False, BLOCK)
        tl.store(states_ptr + step * n + cols, h, mask=col_ok)


@triton.jit
def _backward_kernel(
    mt_ptr, v_ptr, h0_ptr, squarings_ptr, states_ptr, grad_states_ptr, grad_mt_ptr, grad_v_ptr, grad_h0_ptr,
    scratch_ptr, length, n, max_substeps,
    HAS_H0: tl.constexpr, NEED_GRAD_M: tl.constexpr, DEGREE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    lines, cols, col_ok, tile, tile_ok = _tile(n, BLOCK)
    terms = max_substeps * DEGREE
    horner = scratch_ptr + row * 2 * terms * BLOCK  # r_{k+1} of substep j at row j m + k
    adjoints = horner + terms * BLOCK  # p_k of substep j at row j m + k
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    for reversed_t in range(length):
        t = length - 1 - reversed_t
        step = row * length + t
        T = tl.load(mt_ptr + step * n * n + tile, mask=tile_ok, other=0.0)
        v = tl.load(v_ptr + step * n + cols, mask=col_ok, other=0.0)
        squarings = tl.load(squarings_ptr + step)
        substeps = 1 << squarings
        sigma = tl.exp2(-squarings.to(tl.float32))
        u = tl.load(states_ptr + (step - 1) * n + cols, mask=col_ok & (t > 0), other=0.0)
        if HAS_H0:
            u += tl.load(h0_ptr + row * n + cols, mask=col_ok & (t == 0), other=0.0)
        upstream = carry + tl.load(grad_states_ptr + step * n + cols, mask=col_ok, other=0.0)
        dv = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(max_substeps):
            if j < substeps:
                u = _horner_flow(T, v, u, sigma, horner + j * DEGREE * BLOCK, cols, DEGREE, True, BLOCK)
        for reversed_j in range(max_substeps):
            j = max_substeps - 1 - reversed_j
            if j < substeps:
                rho = upstream
                total = tl.zeros([BLOCK], dtype=tl.float32)
                for k in tl.static_range(DEGREE):
                    total += rho
                    p = (sigma / (k + 1)) * rho
                    dv += p
                    if NEED_GRAD_M:
                        tl.store(adjoints + (j * DEGREE + k) * BLOCK + cols, p)
                    rho = tl.sum(T * p[None, :], axis=1)  # M^T p: sum_i M[i, :] p_i = sum_i T[:, i] p_i
                upstream = total + rho
        if NEED_GRAD_M:
            tl.debug_barrier()  # every thread's terms are written before any is read
            grad = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
            for q in range(substeps * DEGREE):  # (dM^T)[a, b] = sum_q r_q[a] p_q[b]
                grad += tl.load(horner + q * BLOCK + lines)[:, None] * tl.load(adjoints + q * BLOCK + cols)[None, :]
            tl.store(grad_mt_ptr + step * n * n + tile, grad, mask=tile_ok)
            tl.debug_barrier()  # and read before the next step writes its own
        tl.store(grad_v_ptr + step * n + cols, dv, mask=col_ok)
        carry = upstream
    if HAS_H0:
        tl.store(grad_h0_ptr + row * n + cols, carry, mask=col_ok)


def applies(*tensors: Tensor | None) -> bool:
    """Whether the kernels take these tensors: CUDA float32 (None skipped), a state of at most ``MAX_STATE``."""
    return holds_state(SUPPORTED_DTYPES, MAX_STATE, *tensors)


def one_norms(M: Tensor) -> Tensor:
    """||M||_1 (the largest column sum of |M|) of each matrix of M: (..., N, N) -> (...), in one read of M."""
    MT = M.detach().mT.contiguous()
    n = M.shape[-1]
    norms = torch.empty(M.shape[:-2], dtype=M.dtype, device=M.device)
    if norms.numel():
        block = triton.next_power_of_2(n)
        _one_norms_kernel[(norms.numel(),)](MT, norms, n, BLOCK=block, num_warps=4)
    return norms


def _launch_sizes(M: Tensor, squarings: Tensor, backward: bool) -> tuple[Tensor, int, int, int]:
    """(M^T contiguous, block, max substeps, warps)."""
    block = triton.next_power_of_2(M.shape[-1])
    max_substeps = 2 ** int(squarings.max()) if squarings.numel() else 1
    return M.mT.contiguous(), block, max_substeps, _warps(block, backward)


def exp_action_forward(M: Tensor, v: Tensor, h0: Tensor | None, squarings: Tensor, degree: int) -> Tensor:
    """Every h_t = e^{M_t} h_{t-1} + phi_1(M_t) v_t from h_{-1} = h0 (or 0), as ``ssm_lab.ops.cpu.exp_action``.
    M: (B, L, N, N), v: (B, L, N), h0: (B, N) or None, squarings: (B, L) -> (B, L, N)."""
    MT, block, max_substeps, warps = _launch_sizes(M, squarings, backward=False)
    v, squarings = v.contiguous(), squarings.to(torch.int32).contiguous()
    states = torch.empty_like(v)
    batch, length, n = v.shape
    _forward_kernel[(batch,)](
        MT, v, v if h0 is None else h0.contiguous(), squarings, states, length, n, max_substeps,
        HAS_H0=h0 is not None, DEGREE=degree, BLOCK=block, num_warps=warps,
    )  # fmt: skip
    return states


def exp_action_backward(
    M: Tensor,
    v: Tensor,
    h0: Tensor | None,
    squarings: Tensor,
    states: Tensor,
    grad_states: Tensor,
    degree: int,
    need_grad_M: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(dLoss/dM or None, dLoss/dv, dLoss/dh0 or None) of ``exp_action_forward`` given dLoss/dstates; dLoss/dM is
    laid out column-major like the M the kernel reads."""
    MT, block, max_substeps, warps = _launch_sizes(M, squarings, backward=True)
    v, squarings = v.contiguous(), squarings.to(torch.int32).contiguous()
    states, grad_states = states.contiguous(), grad_states.contiguous().to(v.dtype)
    batch, length, n = v.shape
    grad_MT = torch.empty_like(MT) if need_grad_M else None
    grad_v = torch.empty_like(v)
    grad_h0 = None if h0 is None else torch.empty_like(h0)
    scratch = torch.empty(batch, 2, max_substeps * degree, block, dtype=torch.float32, device=v.device)
    _backward_kernel[(batch,)](
        MT, v, v if h0 is None else h0.contiguous(), squarings, states, grad_states,
        MT if grad_MT is None else grad_MT, grad_v, v if grad_h0 is None else grad_h0, scratch,
        length, n, max_substeps,
        HAS_H0=h0 is not None, NEED_GRAD_M=need_grad_M, DEGREE=degree, BLOCK=block, num_warps=warps,
    )  # fmt: skip
    return None if grad_MT is None else grad_MT.mT, grad_v, grad_h0
