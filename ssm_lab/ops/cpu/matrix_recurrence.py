"""The time loops of the dense sequential recurrences (``ssm_lab.ops.matrix_scan``: the Linear CDE's and IDS4's
CPU path) as a C kernel (``matrix_recurrence.c``): one call per pass instead of a few tensor operations per
step; IDS4's also factorises its matrices and writes their gradient in the same pass. No autograd here:
``_SequentialRecurrence`` and ``_BilinearRecurrence`` call these in their forward and backward. Importing this
module compiles the kernel (``ssm_lab.ops.cpu.build``) or raises ImportError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ssm_lab.ops.cpu.build import INT, LONG, POINTER, bind, load_library, on_cpu_in_one_dtype, pointer

__all__ = ["SUPPORTED_DTYPES", "affine_steps", "applies", "bilinear_adjoint", "bilinear_forward"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

_LIBRARY = load_library(Path(__file__).with_name("matrix_recurrence.c"))
# (M, v, h0, out, B, L, N, reverse, threads)
_AFFINE = bind(_LIBRARY, "affine_steps", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 4, *[LONG] * 3, INT, INT])
# (S, u, h0, factors, pivots, states, scratch, singular, B, L, N, ld, threads)
_BILINEAR_FORWARD = bind(
    _LIBRARY, "bilinear_forward", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 8, *[LONG] * 4, INT]
)
# (factors, pivots, states, h0, grad_states, q, r0, grad_S, scratch, B, L, N, ld, threads)
_BILINEAR_ADJOINT = bind(
    _LIBRARY, "bilinear_adjoint", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 9, *[LONG] * 4, INT]
)
#: matrix_recurrence.c's VECTOR_BYTES: the rows of the LU factors are padded to whole vectors of this many bytes,
#: so that the factorisation's row updates run without remainder loops
VECTOR_BYTES = 64


def applies(*tensors: Tensor | None) -> bool:
    """Whether the kernels take these tensors: all on the CPU, in one dtype of ``SUPPORTED_DTYPES`` (None skipped)."""
    return on_cpu_in_one_dtype(SUPPORTED_DTYPES, *tensors)


def affine_steps(M: Tensor, v: Tensor, h0: Tensor | None, reverse: bool = False) -> Tensor:
    """Every out_t of out_t = M_t out_{t-1} + v_t from out_{-1} = h0 (or 0), or with ``reverse``
    out_t = M_{t+1}^T out_{t+1} + v_t from out_L = 0 (the adjoint's recurrence; h0 unused).
    M: (B, L, N, N), v: (B, L, N), h0: (B, N) or None -> (B, L, N)."""
    M, v = M.contiguous(), v.contiguous()
    h0 = None if h0 is None or reverse else h0.contiguous()
    out = torch.empty_like(v)
    batch, length, n = v.shape
    _AFFINE[v.dtype](M.data_ptr(), v.data_ptr(), pointer(h0), out.data_ptr(), batch, length, n, int(reverse),
                     torch.get_num_threads())  # fmt: skip
    return out


def _row_stride(n: int, dtype: torch.dtype) -> int:
    """ld: the distance between rows of the LU factors, n rounded up to whole vectors of ``VECTOR_BYTES``."""
    lanes = VECTOR_BYTES // dtype.itemsize
    return -(-n // lanes) * lanes


def bilinear_forward(half_step_A: Tensor, inputs: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(factors, pivots, states): K_t = I - S_t = P L U factorised with partial pivoting (S = half_step_A:
    (B, L, N, N); factors (B, L, N, ld), rows padded to ``_row_stride``, L unit lower below the diagonal and U on
    and above it; pivots (B, L, N) int32, 0-based: step k swapped rows k and pivots[k]) and every
    h_t = z_t - h_{t-1} with z_t = K_t^{-1} (2 h_{t-1} + u_t), u = inputs (B, L, N), h0 (B, N) or None. Raises
    torch.linalg.LinAlgError (a RuntimeError, like torch.linalg.lu_factor's) where a K_t is singular."""
    half_step_A, inputs = half_step_A.contiguous(), inputs.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    batch, length, n = inputs.shape
    stride = _row_stride(n, inputs.dtype)
    factors = torch.empty(batch, length, n, stride, dtype=inputs.dtype)
    pivots = torch.empty(batch, length, n, dtype=torch.int32)
    states, scratch = torch.empty_like(inputs), torch.empty(batch, stride, dtype=inputs.dtype)
    singular = torch.empty((), dtype=torch.long)
    _BILINEAR_FORWARD[inputs.dtype](
        half_step_A.data_ptr(), inputs.data_ptr(), pointer(h0), factors.data_ptr(), pivots.data_ptr(),
        states.data_ptr(), scratch.data_ptr(), singular.data_ptr(), batch, length, n, stride,
        torch.get_num_threads(),
    )  # fmt: skip
    if int(singular) < batch * length:
        b, t = divmod(int(singular), length)
        raise torch.linalg.LinAlgError(f"I - half_step_A is singular at batch element {b}, step {t}: no bilinear map")
    return factors, pivots, states


def bilinear_adjoint(
    factors: Tensor, pivots: Tensor, states: Tensor, h0: Tensor | None, grad_states: Tensor, with_grad_S: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(q, r_0, dS) of the adjoint of ``bilinear_forward`` (its factors, pivots and states): g_t = dh_t - r_{t+1}
    (r_L = 0), q_t = K_t^{-T} g_t, r_t = g_t - 2 q_t; dLoss/du = q, dLoss/dh0 = -r_0 and, with ``with_grad_S``,
    dLoss/dS_t = q_t z_t^T with z_t = h_t + h_{t-1} (h_{-1} = h0 or 0), else None."""
    grad_states = grad_states.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    batch, length, n = grad_states.shape
    q = torch.empty_like(grad_states)
    r0 = torch.empty(batch, n, dtype=grad_states.dtype)
    grad_S = torch.empty(batch, length, n, n, dtype=grad_states.dtype) if with_grad_S else None
    scratch = torch.zeros(batch, 2 * n, dtype=grad_states.dtype)
    _BILINEAR_ADJOINT[grad_states.dtype](
        factors.data_ptr(), pivots.data_ptr(), states.data_ptr(), pointer(h0), grad_states.data_ptr(),
        q.data_ptr(), r0.data_ptr(), pointer(grad_S), scratch.data_ptr(), batch, length, n, factors.shape[-1],
        torch.get_num_threads(),
    )  # fmt: skip
    return q, r0, grad_S
