"""The Linear CDE's exact solver step by step as a C kernel (``exp_action.c``): the action of each step's
augmented exponential on the state, never the exponential itself. No autograd here:
``ssm_lab.ops.exp_action`` calls these in its forward and backward. Importing this module compiles the kernel
(``ssm_lab.ops.cpu.build``) or raises ImportError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ssm_lab.ops.cpu.build import INT, LONG, POINTER, bind, load_library, on_cpu_in_one_dtype, pointer

__all__ = ["SUPPORTED_DTYPES", "applies", "exp_action_backward", "exp_action_forward", "one_norms"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)

_LIBRARY = load_library(Path(__file__).with_name("exp_action.c"))
# (MT, norms, count, N, threads): MT holds each M transposed
_NORMS = bind(_LIBRARY, "one_norms", SUPPORTED_DTYPES, lambda real: [POINTER, POINTER, LONG, LONG, INT])
# (MT, v, h0, squarings, states, B, L, N, degree, threads)
_FORWARD = bind(_LIBRARY, "exp_action_forward", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 5, *[LONG] * 3, INT, INT])
# (MT, v, h0, squarings, states, grad_states, grad_MT, grad_v, grad_h0, B, L, N, degree, max_substeps, threads)
_BACKWARD = bind(
    _LIBRARY, "exp_action_backward", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 9, *[LONG] * 3, INT, INT, INT]
)


def applies(*tensors: Tensor | None) -> bool:
    """Whether the kernels take these tensors: all on the CPU, in one dtype of ``SUPPORTED_DTYPES`` (None skipped)."""
    return on_cpu_in_one_dtype(SUPPORTED_DTYPES, *tensors)


def _transposed(M: Tensor) -> Tensor:
    """M^T contiguous: the kernels read each M column by column (a copy unless M is stored column-major)."""
    return M.mT.contiguous()


def one_norms(M: Tensor) -> Tensor:
    """||M||_1 (the largest column sum of |M|) of each matrix of M: (..., N, N) -> (...), in one read of M."""
    MT = _transposed(M.detach())
    norms = torch.empty(M.shape[:-2], dtype=M.dtype)
    _NORMS[M.dtype](MT.data_ptr(), norms.data_ptr(), norms.numel(), M.shape[-1], torch.get_num_threads())
    return norms


def exp_action_forward(M: Tensor, v: Tensor, h0: Tensor | None, squarings: Tensor, degree: int) -> Tensor:
    """Every h_t = e^{M_t} h_{t-1} + phi_1(M_t) v_t from h_{-1} = h0 (or 0): 2^s_t substeps of the degree-``degree``
    Taylor flow over 2^-s_t each (s = ``squarings``). M: (B, L, N, N), v: (B, L, N), h0: (B, N) or None,
    squarings: (B, L) -> (B, L, N). M is read column by column: stored column-major (``X.mT`` of a contiguous X)
    it is not copied."""
    MT, v, squarings = _transposed(M), v.contiguous(), squarings.to(torch.int32).contiguous()
    h0 = None if h0 is None else h0.contiguous()
    states = torch.empty_like(v)
    batch, length, n = v.shape
    _FORWARD[v.dtype](MT.data_ptr(), v.data_ptr(), pointer(h0), squarings.data_ptr(), states.data_ptr(),
                      batch, length, n, degree, torch.get_num_threads())  # fmt: skip
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
    MT, v, squarings = _transposed(M), v.contiguous(), squarings.to(torch.int32).contiguous()
    h0 = None if h0 is None else h0.contiguous()
    states, grad_states = states.contiguous(), grad_states.contiguous()
    batch, length, n = v.shape
    grad_MT = torch.empty_like(MT) if need_grad_M else None
    grad_v = torch.empty_like(v)
    grad_h0 = None if h0 is None else torch.empty_like(h0)
    max_substeps = 2 ** int(squarings.max()) if squarings.numel() else 1
    _BACKWARD[v.dtype](
        MT.data_ptr(), v.data_ptr(), pointer(h0), squarings.data_ptr(), states.data_ptr(), grad_states.data_ptr(),
        pointer(grad_MT), grad_v.data_ptr(), pointer(grad_h0), batch, length, n, degree, max_substeps,
        torch.get_num_threads(),
    )  # fmt: skip
    return None if grad_MT is None else grad_MT.mT, grad_v, grad_h0
