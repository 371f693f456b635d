"""The time loops of the dense sequential recurrences (``ssm_lab.ops.matrix_scan``: the Linear CDE's and IDS4's
CPU path) as a C kernel (``matrix_recurrence.c``): one call per pass instead of a few tensor operations per
step. No autograd here: ``_SequentialRecurrence`` and ``_BilinearRecurrence`` call these in their forward and
backward. Importing this module compiles the kernel (``ssm_lab.ops.cpu.build``) or raises ImportError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ssm_lab.ops.cpu.build import INT, LONG, POINTER, bind, load_library

__all__ = ["SUPPORTED_DTYPES", "affine_steps", "applies", "bilinear_adjoint", "bilinear_forward"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

_LIBRARY = load_library(Path(__file__).with_name("matrix_recurrence.c"))
# (M, v, h0, out, B, L, N, reverse, threads)
_AFFINE = bind(_LIBRARY, "affine_steps", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 4, *[LONG] * 3, INT, INT])
# (lu, lu_sb, lu_st, lu_rs, lu_cs, pivots, u, h0, states, B, L, N, threads)
_BILINEAR_FORWARD = bind(
    _LIBRARY, "bilinear_forward", SUPPORTED_DTYPES,
    lambda real: [POINTER, *[LONG] * 4, *[POINTER] * 4, *[LONG] * 3, INT],
)  # fmt: skip
# (lu, lu_sb, lu_st, lu_rs, lu_cs, pivots, grad_states, q, r0, scratch, B, L, N, threads)
_BILINEAR_ADJOINT = bind(
    _LIBRARY, "bilinear_adjoint", SUPPORTED_DTYPES,
    lambda real: [POINTER, *[LONG] * 4, *[POINTER] * 5, *[LONG] * 3, INT],
)  # fmt: skip


def applies(*tensors: Tensor | None) -> bool:
    """Whether the kernels take these tensors: all on the CPU, in one dtype of ``SUPPORTED_DTYPES`` (None skipped)."""
    given = [x for x in tensors if x is not None]
    return all(x.device.type == "cpu" and x.dtype == given[0].dtype in SUPPORTED_DTYPES for x in given)


def _pointer(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def affine_steps(M: Tensor, v: Tensor, h0: Tensor | None, reverse: bool = False) -> Tensor:
    """Every out_t of out_t = M_t out_{t-1} + v_t from out_{-1} = h0 (or 0), or with ``reverse``
    out_t = M_{t+1}^T out_{t+1} + v_t from out_L = 0 (the adjoint's recurrence; h0 unused).
    M: (B, L, N, N), v: (B, L, N), h0: (B, N) or None -> (B, L, N)."""
    M, v = M.contiguous(), v.contiguous()
    h0 = None if h0 is None or reverse else h0.contiguous()
    out = torch.empty_like(v)
    batch, length, n = v.shape
    _AFFINE[v.dtype](M.data_ptr(), v.data_ptr(), _pointer(h0), out.data_ptr(), batch, length, n, int(reverse),
                     torch.get_num_threads())  # fmt: skip
    return out


def _factor_strides(factors: Tensor) -> tuple[int, int, int, int]:
    """(batch, time, row, column) element strides of the (B, L, N, N) LU factors, in whatever layout torch made."""
    return factors.stride(0), factors.stride(1), factors.stride(2), factors.stride(3)


def bilinear_forward(factors: Tensor, pivots: Tensor, inputs: Tensor, h0: Tensor | None) -> Tensor:
    """Every h_t = z_t - h_{t-1} with z_t = K_t^{-1} (2 h_{t-1} + u_t), from the LU factors of K_t = I - S_t
    (``torch.linalg.lu_factor``: factors (B, L, N, N), pivots (B, L, N)), u = inputs (B, L, N), h0 (B, N) or None."""
    inputs, pivots = inputs.contiguous(), pivots.to(torch.int32).contiguous()
    h0 = None if h0 is None else h0.contiguous()
    states = torch.empty_like(inputs)
    batch, length, n = inputs.shape
    _BILINEAR_FORWARD[inputs.dtype](
        factors.data_ptr(), *_factor_strides(factors), pivots.data_ptr(), inputs.data_ptr(), _pointer(h0),
        states.data_ptr(), batch, length, n, torch.get_num_threads(),
    )  # fmt: skip
    return states


def bilinear_adjoint(factors: Tensor, pivots: Tensor, grad_states: Tensor) -> tuple[Tensor, Tensor]:
    """(q, r_0) of the adjoint of ``bilinear_forward``: g_t = dh_t - r_{t+1} (r_L = 0), q_t = K_t^{-T} g_t,
    r_t = g_t - 2 q_t; dLoss/du = q and dLoss/dh0 = -r_0."""
    grad_states, pivots = grad_states.contiguous(), pivots.to(torch.int32).contiguous()
    batch, length, n = grad_states.shape
    q = torch.empty_like(grad_states)
    r0 = torch.empty(batch, n, dtype=grad_states.dtype)
    scratch = torch.zeros(batch, 2 * n, dtype=grad_states.dtype)
    _BILINEAR_ADJOINT[grad_states.dtype](
        factors.data_ptr(), *_factor_strides(factors), pivots.data_ptr(), grad_states.data_ptr(), q.data_ptr(),
        r0.data_ptr(), scratch.data_ptr(), batch, length, n, torch.get_num_threads(),
    )  # fmt: skip
    return q, r0
