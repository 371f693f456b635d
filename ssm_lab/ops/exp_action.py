"""The flow of a piecewise-constant affine ODE, h' = M_t h + v_t on step t's unit interval (the Linear CDE's
exact solver): every state of

    h_t = e^{M_t} h_{t-1} + phi_1(M_t) v_t,   phi_1(M) = sum_k M^k / (k + 1)!

M: (B, L, N, N), v: (B, L, N), h0: (B, N) -> (B, L, N). Two ways to the same values:
- forming the maps: ``affine_exp`` (scaling and squaring, ~(5 + s) products of N^3 per step) and then
  ``matrix_recurrence`` (its parallel scan on CUDA): the reference, and the path where no kernel below applies
  (float64 or N > 128 on CUDA, no compiler, norms past ``MAX_ACTION_SQUARINGS``).
- the action of the exponential on the state (Al-Mohy & Higham 2011, "Computing the action of the matrix
  exponential", SIAM J. Sci. Comput.): with s from ||M_t||_1 as in ``affine_exp`` (``scaling_squarings``: the
  fewest halvings to ``TAYLOR_RADIUS``), apply 2^s times the flow over 2^-s, each the same degree-m Taylor
  polynomial of the augmented exponential on [h; 1] by Horner in matrix-vector products, m 2^s products of
  N^2 per step, sequential in time: a kernel forward and backward, in C on CPU (``ssm_lab/ops/cpu/exp_action.c``)
  and in Triton on CUDA (``ssm_lab/ops/triton/exp_action.py``: float32, N <= 128, one program per batch row).
  The truncation error is ``affine_exp``'s (the same polynomial, applied instead of squared).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from ssm_lab.ops.matrix_scan import (
    batched_affine_exp,
    check_shapes,
    matrix_recurrence,
    scaling_squarings,
    taylor_degree,
)

CPU_KERNEL_UNAVAILABLE: str | None = None
try:  # compiled on first import (ssm_lab.ops.cpu.build)
    from ssm_lab.ops.cpu import exp_action as cpu_kernel
except ImportError as error:
    cpu_kernel, CPU_KERNEL_UNAVAILABLE = None, str(error)
try:  # Triton ships with CUDA builds of torch
    from ssm_lab.ops.triton import exp_action as gpu_kernel
except ImportError:
    gpu_kernel = None

__all__ = ["GPU_MIN_BATCH", "MAX_ACTION_SQUARINGS", "affine_flow_recurrence", "exp_action_recurrence"]

#: The action path's cost grows as 2^s, forming the maps' as 5 + s: past this many halvings (||M_t||_1 > 64, where
#: e^{M_t} may grow by e^64 in one step) the maps are formed instead. At N = 64 the two cost the same
#: multiply-adds at s = 6.
MAX_ACTION_SQUARINGS = 6


#: On CUDA the kernel runs one program per batch row through time; the formed maps are made for every step at once
#: (then run by ``matrix_recurrence``'s Triton time loop), so they win on few rows: H100, L = 1024, fwd + bwd of the
#: Linear CDE core, the two cross between 12 and 16 rows at N = 32, 64 and 128; at 32 rows the kernel takes 0.5x the
#: time (N = 64: 35 against 66 ms).
GPU_MIN_BATCH = 14


def _kernel(M: Tensor, v: Tensor, h0: Tensor | None) -> ModuleType | None:
    """The kernel module that takes these tensors (C on CPU, Triton on CUDA), or None."""
    for kernel in (cpu_kernel, gpu_kernel):
        if kernel is not None and kernel.applies(M, v, h0):
            return kernel
    return None


def _squarings(M: Tensor, kernel: ModuleType) -> Tensor:
    """Each step's halvings s (int32, ``scaling_squarings`` of ||M_t||_1, as ``affine_exp`` takes them)."""
    return scaling_squarings(kernel.one_norms(M)).to(torch.int32)


def exp_action_recurrence(M: Tensor, v: Tensor, h0: Tensor | None = None) -> Tensor:
    """Every state by the action of the exponentials (the C kernel on CPU float32/float64 tensors, the Triton
    kernel on CUDA float32 tensors with N <= 128), with its hand-written backward. Costs m 2^s matrix-vector
    products per step: for ||M_t||_1 past 2^6 ``affine_flow_recurrence`` forms the maps instead."""
    if cpu_kernel is None and M.device.type == "cpu":
        raise RuntimeError(f"the exp-action CPU kernel is unavailable: {CPU_KERNEL_UNAVAILABLE}")
    kernel = _kernel(M, v, h0)
    if kernel is None:
        gpu = f"CUDA float32 tensors with N <= {gpu_kernel.MAX_STATE}" if gpu_kernel else "no CUDA tensors (no Triton)"
        raise ValueError(
            f"the exp-action kernels take CPU float32/float64 tensors or {gpu}; got {M.dtype} on {M.device}, "
            f"N = {M.shape[-1]}"
        )
    check_shapes(M, v, h0)
    return _ExpActionRecurrence.apply(M, v, h0, _squarings(M, kernel), kernel)


def affine_flow_recurrence(
    M: Tensor, v: Tensor, h0: Tensor | None = None, mode: str = "scan", max_exp_batch: int | str | None = "auto"
) -> Tensor:
    """Every state of the flow. ``mode`` "scan": by the action of the exponentials where a kernel takes the
    tensors (``exp_action_recurrence``; on CUDA from ``GPU_MIN_BATCH`` rows) and every ||M_t||_1 <=
    2^``MAX_ACTION_SQUARINGS``; else the maps formed by ``batched_affine_exp`` (at most ``max_exp_batch`` per
    call) and run by ``matrix_recurrence`` in ``mode`` (any of its modes)."""
    kernel = _kernel(M, v, h0) if mode == "scan" else None
    if kernel is not None and not (kernel is gpu_kernel and v.shape[0] < GPU_MIN_BATCH):
        squarings = _squarings(M, kernel)
        if squarings.numel() == 0 or int(squarings.max()) <= MAX_ACTION_SQUARINGS:
            return _ExpActionRecurrence.apply(M, v, h0, squarings, kernel)
    return matrix_recurrence(*batched_affine_exp(M, v, max_exp_batch), h0, mode=mode)


class _ExpActionRecurrence(torch.autograd.Function):
    """Forward: the kernel's substeps. Backward: its adjoint, which recomputes every step's substeps and Horner
    terms from h_{t-1} (the forward keeps only the states): with rho_0 = dLoss/dr_0 and p_k = 2^-s rho_k / (k + 1),
    rho_{k+1} = M^T p_k, so dLoss/du = sum_{k<m} rho_k + rho_m, dv += sum_k p_k and dM += sum_k p_k r_{k+1}^T."""

    @staticmethod
    def forward(ctx, M: Tensor, v: Tensor, h0: Tensor | None, squarings: Tensor, kernel: ModuleType) -> Tensor:
        ctx.degree, ctx.kernel = taylor_degree(M.dtype), kernel
        states = kernel.exp_action_forward(M, v, h0, squarings, ctx.degree)
        ctx.save_for_backward(M, v, h0, squarings, states)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None, None, None]:
        M, v, h0, squarings, states = ctx.saved_tensors
        grad_M, grad_v, grad_h0 = ctx.kernel.exp_action_backward(
            M, v, h0, squarings, states, grad_states, ctx.degree, need_grad_M=ctx.needs_input_grad[0]
        )
        return grad_M, grad_v, grad_h0, None, None
