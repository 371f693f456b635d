"""The flow of a piecewise-constant affine ODE, h' = M_t h + v_t on step t's unit interval (the Linear CDE's
exact solver): every state of

    h_t = e^{M_t} h_{t-1} + phi_1(M_t) v_t,   phi_1(M) = sum_k M^k / (k + 1)!

M: (B, L, N, N), v: (B, L, N), h0: (B, N) -> (B, L, N). Two ways to the same values:
- forming the maps: ``affine_exp`` (scaling and squaring, ~(5 + s) products of N^3 per step) and then
  ``matrix_recurrence``. The parallel scan needs the maps, so this is the CUDA path, and the reference.
- the action of the exponential on the state (Al-Mohy & Higham 2011, "Computing the action of the matrix
  exponential", SIAM J. Sci. Comput.): with s from ||M_t||_1 as in ``affine_exp`` (``scaling_squarings``: the
  fewest halvings to ``TAYLOR_RADIUS``), apply 2^s times the flow over 2^-s, each the same degree-m Taylor
  polynomial of the augmented exponential on [h; 1] by Horner in matrix-vector products, m 2^s products of
  N^2 per step: the sequential CPU path (``ssm_lab/ops/cpu/exp_action.c``), forward and backward in C. The
  truncation error is ``affine_exp``'s (the same polynomial, applied instead of squared).
"""

from __future__ import annotations

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

__all__ = ["MAX_ACTION_SQUARINGS", "affine_flow_recurrence", "exp_action_recurrence"]

#: The action path's cost grows as 2^s, forming the maps' as 5 + s: past this many halvings (||M_t||_1 > 64, where
#: e^{M_t} may grow by e^64 in one step) the maps are formed instead. At N = 64 the two cost the same
#: multiply-adds at s = 6.
MAX_ACTION_SQUARINGS = 6


def _squarings(M: Tensor) -> Tensor:
    """Each step's halvings s (int32, ``scaling_squarings`` of ||M_t||_1, as ``affine_exp`` takes them)."""
    return scaling_squarings(cpu_kernel.one_norms(M)).to(torch.int32)


def exp_action_recurrence(M: Tensor, v: Tensor, h0: Tensor | None = None) -> Tensor:
    """Every state by the action of the exponentials (the C kernel; CPU tensors, float32 or float64), with its
    hand-written backward. Costs m 2^s matrix-vector products per step: for ||M_t||_1 past 2^6
    ``affine_flow_recurrence`` forms the maps instead."""
    if cpu_kernel is None:
        raise RuntimeError(f"the exp-action CPU kernel is unavailable: {CPU_KERNEL_UNAVAILABLE}")
    if not cpu_kernel.applies(M, v, h0):
        raise ValueError(f"the exp-action kernel takes CPU float32/float64 tensors, got {M.dtype} on {M.device}")
    check_shapes(M, v, h0)
    return _ExpActionRecurrence.apply(M, v, h0, _squarings(M))


def affine_flow_recurrence(
    M: Tensor, v: Tensor, h0: Tensor | None = None, mode: str = "scan", max_exp_batch: int | str | None = "auto"
) -> Tensor:
    """Every state of the flow. ``mode`` "scan": by the action of the exponentials on CPU (where the C kernel
    builds and every ||M_t||_1 <= 2^``MAX_ACTION_SQUARINGS``), else the maps formed by ``batched_affine_exp``
    (at most ``max_exp_batch`` per call) and run by ``matrix_recurrence`` in ``mode`` (any of its modes)."""
    if mode == "scan" and cpu_kernel is not None and cpu_kernel.applies(M, v, h0):
        squarings = _squarings(M)
        if squarings.numel() == 0 or int(squarings.max()) <= MAX_ACTION_SQUARINGS:
            return _ExpActionRecurrence.apply(M, v, h0, squarings)
    return matrix_recurrence(*batched_affine_exp(M, v, max_exp_batch), h0, mode=mode)


class _ExpActionRecurrence(torch.autograd.Function):
    """Forward: the C kernel's substeps. Backward: its adjoint, which recomputes every step's substeps and Horner
    terms from h_{t-1} (the forward keeps only the states): with rho_0 = dLoss/dr_0 and p_k = 2^-s rho_k / (k + 1),
    rho_{k+1} = M^T p_k, so dLoss/du = sum_{k<m} rho_k + rho_m, dv += sum_k p_k and dM += sum_k p_k r_{k+1}^T."""

    @staticmethod
    def forward(ctx, M: Tensor, v: Tensor, h0: Tensor | None, squarings: Tensor) -> Tensor:
        ctx.degree = taylor_degree(M.dtype)
        states = cpu_kernel.exp_action_forward(M, v, h0, squarings, ctx.degree)
        ctx.save_for_backward(M, v, h0, squarings, states)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None, None]:
        M, v, h0, squarings, states = ctx.saved_tensors
        grad_M, grad_v, grad_h0 = cpu_kernel.exp_action_backward(
            M, v, h0, squarings, states, grad_states, ctx.degree, need_grad_M=ctx.needs_input_grad[0]
        )
        return grad_M, grad_v, grad_h0, None
