"""Mamba's selective scan (discretisation fused) as a C kernel (``selective_scan.c``), one pass forward and one
backward; the CPU counterpart of ``ssm_lab.ops.triton.selective_scan``. The autograd node that calls them and
the torch twins are in ``ssm_lab.ops.selective_scan``. Measured on 2 threads (B=16, L=1024, D=128, N=16,
float32): ~8 ms forward + ~16 ms backward, against ~32 + ~76 ms for the blocked torch scan. Importing this
module compiles the kernel (``ssm_lab.ops.cpu.build``) or raises ImportError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ssm_lab.ops.cpu.build import INT, LONG, POINTER, bind, load_library, on_cpu_in_one_dtype, pointer

__all__ = ["CHECKPOINT_STEPS", "SUPPORTED_DTYPES", "applies", "backward", "forward"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)
#: steps between the saved states; the backward recomputes at most this many states at a time per job
CHECKPOINT_STEPS = 16
_LANES = 64  # channels per job, as LANES in selective_scan.c

_LIBRARY = load_library(Path(__file__).with_name("selective_scan.c"))
# (u, delta, A, B, C, D, h0, y, final, checkpoints, batch, L, D, N, steps, signed, threads) and
# (u, delta, A, B, C, D, checkpoints, dy, dfinal, du, ddelta, dA, dB, dC, dD, dh0, batch, L, D, N, steps, signed,
# threads)
_FORWARD = bind(
    _LIBRARY, "selective_scan_forward", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 10, *[LONG] * 5, INT, INT]
)
_BACKWARD = bind(
    _LIBRARY, "selective_scan_backward", SUPPORTED_DTYPES, lambda real: [*[POINTER] * 16, *[LONG] * 5, INT, INT]
)


def applies(*tensors: Tensor | None) -> bool:
    """Whether the given tensors (None skipped) are CPU tensors of one dtype in ``SUPPORTED_DTYPES``."""
    return on_cpu_in_one_dtype(SUPPORTED_DTYPES, *tensors)


def _check(tensors: dict[str, Tensor | None]) -> None:
    if not applies(*tensors.values()):
        found = ", ".join(f"{name}: {x.dtype} on {x.device}" for name, x in tensors.items() if x is not None)
        allowed = ", ".join(str(dtype) for dtype in SUPPORTED_DTYPES)
        raise ValueError(f"the C selective scan takes CPU tensors of one dtype among {allowed}; got {found}")


def forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    initial_state: Tensor | None,
    signed: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """h_t = a_t h_{t-1} + delta_t B_t u_t, y_t = C_t . h_t + D u_t, a_t = exp(delta_t A) (signed: 2 exp(delta_t A)
    - 1), in one pass. u, delta: (B, L, D), A: (D, N), B, C: (B, L, N), D: (D,) or None, initial_state:
    (B, D, N) or None; shapes checked by the caller, L >= 1. Returns (y: (B, L, D), final state: (B, D, N),
    checkpoints: (B, ceil(L / CHECKPOINT_STEPS), D, N), the state entering each block of ``CHECKPOINT_STEPS`` steps,
    for ``backward``)."""
    _check({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "initial_state": initial_state})
    batch, length, channels = u.shape
    size = A.shape[1]
    u, delta, A, B, C = (x.contiguous() for x in (u, delta, A, B, C))
    D, initial_state = (None if x is None else x.contiguous() for x in (D, initial_state))
    y = torch.empty_like(u)
    final = u.new_empty(batch, channels, size)
    checkpoints = u.new_empty(batch, -(-length // CHECKPOINT_STEPS), channels, size)
    _FORWARD[u.dtype](
        u.data_ptr(), delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(), pointer(D), pointer(initial_state),
        y.data_ptr(), final.data_ptr(), checkpoints.data_ptr(), batch, length, channels, size, CHECKPOINT_STEPS,
        int(signed), torch.get_num_threads(),
    )  # fmt: skip
    return y, final, checkpoints


def backward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    checkpoints: Tensor,
    grad_y: Tensor,
    grad_final: Tensor | None,
    signed: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """(du, d delta, dA, dB, dC, dD or None, d initial_state) from ``forward``'s inputs and checkpoints (made with
    ``CHECKPOINT_STEPS``) and dLoss/dy, dLoss/d final state (None: zero), in one pass that recomputes the states a
    block at a time. Channel sums (dB, dC) come per block of channels and batch sums (dA, dD) per
    batch row, summed here in a fixed order: deterministic."""
    batch, length, channels = u.shape
    size = A.shape[1]
    u, delta, A, B, C, grad_y = (x.contiguous() for x in (u, delta, A, B, C, grad_y.to(u.dtype)))
    D, grad_final = (None if x is None else x.to(u.dtype).contiguous() for x in (D, grad_final))
    blocks = -(-channels // _LANES)
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
    grad_A, grad_initial = (u.new_empty(batch, channels, size) for _ in range(2))
    grad_B, grad_C = (u.new_empty(blocks, batch, length, size) for _ in range(2))
    grad_D = u.new_empty(batch, channels)
    _BACKWARD[u.dtype](
        u.data_ptr(), delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(), pointer(D), checkpoints.data_ptr(),
        grad_y.data_ptr(), pointer(grad_final), grad_u.data_ptr(), grad_delta.data_ptr(), grad_A.data_ptr(),
        grad_B.data_ptr(), grad_C.data_ptr(), grad_D.data_ptr(), grad_initial.data_ptr(), batch, length, channels,
        size, CHECKPOINT_STEPS, int(signed), torch.get_num_threads(),
    )  # fmt: skip
    grad_D = None if D is None else grad_D.sum(0)
    return grad_u, grad_delta, grad_A.sum(0), grad_B.sum(0), grad_C.sum(0), grad_D, grad_initial
