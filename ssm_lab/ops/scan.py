"""Diagonal linear recurrences h_t = a_t * h_{t-1} + b_t: the loop reference, a parallel scan, a
chunked scan, a GPU kernel.

All take the same arguments and return every state, so a core picks one by mode and the tests
compare them (outputs and gradients). ``a`` is either constant over time (LTI cores, shape
``(N,)``, ``(1, 1, N)`` or ``(B, 1, N)``) or per step (``(B, L, N)``); real or complex.
``linear_recurrence(..., mode="scan")`` runs a kernel where one applies: the Triton kernel
(``ssm_lab.ops.triton.linear_scan``) on CUDA tensors of a dtype it supports, the C kernel
(``ssm_lab.ops.cpu.linear_scan``, compiled on first import) on CPU tensors; otherwise the torch scan on
CUDA and the chunked scan on CPU. ``mode="torch_scan"``, ``"chunked"`` and ``"loop"`` (the reference)
force one on any device. The C kernel is not built where no C compiler is found or where the environment
sets ``SSM_LAB_CPU_KERNELS=0``; ``CPU_KERNEL_UNAVAILABLE`` then says why, and CPU tensors take the chunked scan.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of torch; CPU installs run the torch paths only
    from ssm_lab.ops.triton import linear_scan as triton_scan
except ImportError:
    triton_scan = None

CPU_KERNEL_UNAVAILABLE: str | None = None
try:  # compiled on first import (ssm_lab.ops.cpu.build); no compiler, or SSM_LAB_CPU_KERNELS=0: ImportError
    from ssm_lab.ops.cpu import linear_scan as cpu_scan
except ImportError as error:
    cpu_scan, CPU_KERNEL_UNAVAILABLE = None, str(error)

__all__ = [
    "MODES",
    "kernel_applies",
    "linear_recurrence",
    "linear_recurrence_adjoint",
    "linear_recurrence_chunked",
    "linear_recurrence_ref",
    "linear_recurrence_scan",
]


def _as_3d(a: Tensor, b: Tensor) -> Tensor:
    """View ``a`` as (B or 1, L or 1, N) and check it broadcasts against ``b: (B, L, N)``."""
    if b.dim() != 3:
        raise ValueError(f"b must be (B, L, N), got shape {tuple(b.shape)}")
    if a.dim() == 1:
        a = a.view(1, 1, -1)
    if (
        a.dim() != 3
        or a.shape[-1] != b.shape[-1]
        or a.shape[1] not in (1, b.shape[1])
        or a.shape[0] not in (1, b.shape[0])
    ):
        raise ValueError(
            f"a of shape {tuple(a.shape)} does not broadcast against b of shape {tuple(b.shape)}; "
            "expected (N,), (1 or B, 1, N) or (1 or B, L, N)"
        )
    return a


def check_initial_state(b: Tensor, h0: Tensor | None) -> None:
    """Raise unless h0 is None or (B, N) for b: (B, L, N): a state of another batch size would broadcast."""
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"initial state must be (B, N) = {(b.shape[0], b.shape[2])}, got {tuple(h0.shape)}")


def _with_initial_state(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """Fold h0 into the first input: h_0 = a_0 h0 + b_0."""
    check_initial_state(b, h0)
    if h0 is None:
        return b
    first = b[:, :1] + a[:, :1] * h0.unsqueeze(1)
    return torch.cat([first, b[:, 1:]], dim=1)


def linear_recurrence_ref(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Plain loop: h_t = a_t * h_{t-1} + b_t, h_{-1} = h0 (zero if None). b: (B, L, N) -> h: (B, L, N).
    The steps are taken with ``unbind`` (one autograd node whose backward stacks the step gradients): an
    indexed step's backward would allocate and add a zero-filled (B, L, N) gradient per step, O(L^2)."""
    a_steps = _as_3d(a, b).unbind(1)
    check_initial_state(b, h0)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.to(b.dtype)
    states = []
    for t, b_t in enumerate(b.unbind(1)):
        h = a_steps[min(t, len(a_steps) - 1)] * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)


def linear_recurrence_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Parallel prefix scan (Hillis & Steele doubling) of the same recurrence.

    The pair (a, b) composes associatively: (a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2). After the
    step with offset k, position t holds the composition of the 2k inputs ending at t, so
    ceil(log2 L) steps of O(L) work give every state. Time-constant ``a`` keeps one power a^k per
    step instead of a (B, L, N) tensor.
    """
    a = _as_3d(a, b)
    h = _with_initial_state(a, b, h0)
    length = h.shape[1]
    if a.shape[1] == 1:  # LTI: the product of k consecutive a's is a^k
        power = a
        k = 1
        while k < length:
            h = torch.cat([h[:, :k], h[:, k:] + power * h[:, :-k]], dim=1)
            power = power * power
            k *= 2
        return h
    a_prod = a
    k = 1
    while k < length:
        h = torch.cat([h[:, :k], h[:, k:] + a_prod[:, k:] * h[:, :-k]], dim=1)
        a_prod = torch.cat([a_prod[:, :k], a_prod[:, k:] * a_prod[:, :-k]], dim=1)
        k *= 2
    return h


CHUNK_SIZE = 32


def linear_recurrence_chunked(a: Tensor, b: Tensor, h0: Tensor | None = None, chunk_size: int = CHUNK_SIZE) -> Tensor:
    """The same recurrence in chunks of T steps, the fastest torch path on CPU.

    With l = c T + t: pass 1 runs the recurrence inside every chunk at once from a zero state
    (T vectorised steps on the strided (B, C, N) slices of b viewed as (B, C, T, N), no copies),
    pass 2 carries the chunk-end states across the C chunks (carry_c = P_c carry_{c-1} + end_c,
    P_c the product of the chunk's decays: a^T when a is constant), pass 3 adds
    (prod_{s<=t} a_s) carry_{c-1} to every state. Only products of decays appear, never a division
    by one, so it is stable for any |a| <= 1. T + C sequential steps of vectorised work instead of
    L; T = 32 balances them for L ~ 1000. The backward pass (``_ChunkedRecurrence``) is the same
    algorithm run backwards in time on the incoming gradients, with the states kept once.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    a = _as_3d(a, b)
    check_initial_state(b, h0)
    dtype = _common_dtype(a, b, h0)
    return _ChunkedRecurrence.apply(a.to(dtype), b.to(dtype), None if h0 is None else h0.to(dtype), chunk_size)


def _chunked_states(a: Tensor, b: Tensor, h0: Tensor | None, chunk: int, reverse: bool) -> Tensor:
    """Every state of h_l = a_l h_{l-1} + b_l (reverse: h_l = a_l h_{l+1} + b_l, from the end) for
    b: (B, L, N) and a: (B or 1, L or 1, N); h0 enters before the first step taken. No autograd."""
    batch, length, n = b.shape
    chunk = min(chunk, length)
    pad = (-length) % chunk
    constant = a.shape[1] == 1
    if pad:  # identity steps (decay 1, input 0) where the recurrence finishes, so they change nothing
        padding = (0, 0, pad, 0) if reverse else (0, 0, 0, pad)
        b = torch.nn.functional.pad(b, padding)
        if not constant:
            a = torch.nn.functional.pad(a, padding, value=1.0)
    n_chunks = (length + pad) // chunk
    b = b.reshape(batch, n_chunks, chunk, n)
    a = a.reshape(a.shape[0], 1, 1, n) if constant else a.reshape(a.shape[0], n_chunks, chunk, n)
    steps = range(chunk - 1, -1, -1) if reverse else range(chunk)
    states = torch.empty_like(b)
    previous = None
    for t in steps:  # pass 1: inside every chunk, from a zero state
        a_t = a[:, :, 0] if constant else a[:, :, t]
        if previous is None:
            states[:, :, t] = b[:, :, t]
        else:
            torch.addcmul(b[:, :, t], a_t, states[:, :, previous], out=states[:, :, t])
        previous = t
    # decay from the chunk's entry to every step: prod of a over the steps taken so far
    if constant:
        powers = torch.cumprod(a.expand(a.shape[0], 1, chunk, n), dim=2)
        decays = powers.flip(2) if reverse else powers
    else:
        decays = torch.cumprod(a.flip(2), dim=2).flip(2) if reverse else torch.cumprod(a, dim=2)
    last = 0 if reverse else chunk - 1
    chunk_decay, chunk_end = decays[:, :, last], states[:, :, last]  # (B or 1, C, N), (B, C, N)
    carry = torch.zeros_like(b[:, 0, 0]) if h0 is None else h0
    incoming = torch.empty_like(chunk_end)
    for c in range(n_chunks - 1, -1, -1) if reverse else range(n_chunks):  # pass 2: across chunks
        incoming[:, c] = carry
        carry = torch.addcmul(chunk_end[:, c], chunk_decay[:, 0 if constant else c], carry)
    states.addcmul_(decays, incoming.unsqueeze(2))  # pass 3
    states = states.reshape(batch, length + pad, n)
    return states[:, pad:] if reverse else states[:, :length]


class _ChunkedRecurrence(torch.autograd.Function):
    """Backward: g_l = dLoss/dh_l through all later steps obeys g_l = grad_l + conj(a_{l+1}) g_{l+1},
    the recurrence reversed in time; then dLoss/db_l = g_l, dLoss/da_l = g_l conj(h_{l-1}) (summed
    over the axes a broadcasts along), dLoss/dh0 = conj(a_0) g_0 (PyTorch's complex convention)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, chunk: int) -> Tensor:
        states = _chunked_states(a, b, h0, chunk, reverse=False)
        ctx.save_for_backward(a, states, h0)
        ctx.chunk = chunk
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: Tensor):
        a, states, h0 = ctx.saved_tensors
        reverse = functools.partial(_chunked_states, chunk=ctx.chunk, reverse=True)
        return (*_adjoint(a, states, h0, grad_states, reverse, need_a=ctx.needs_input_grad[0]), None)


def _adjoint(
    a: Tensor, states: Tensor, h0: Tensor | None, grad_states: Tensor, reverse: Callable, need_a: bool = True
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(grad_a, grad_b, grad_h0) of the recurrence from its states: g_l = grad_l + conj(a_{l+1}) g_{l+1}
    run by ``reverse(coefficients, inputs, None)`` (a recurrence from the end), then dLoss/db_l = g_l,
    dLoss/da_l = g_l conj(h_{l-1}) (summed over the axes a broadcasts along), dLoss/dh0 = conj(a_0) g_0
    (PyTorch's complex convention)."""
    conj_a = a.conj()
    successor = conj_a if a.shape[1] == 1 else torch.nn.functional.pad(conj_a[:, 1:], (0, 0, 0, 1))
    g = reverse(successor, grad_states.contiguous(), None)
    grad_a = None
    if need_a:
        if a.shape[1] == 1:  # constant a: sum over time of g_l conj(h_{l-1}), on slices (no shifted copy)
            grad_a = torch.linalg.vecdot(states[:, :-1], g[:, 1:], dim=1)
            if h0 is not None:
                grad_a = grad_a + h0.conj() * g[:, 0]
            grad_a = grad_a.unsqueeze(1)
        else:  # g_l conj(h_{l-1}) on slices, h_{-1} = h0 or 0
            grad_a = torch.empty_like(g)
            torch.mul(g[:, 1:], states[:, :-1].conj(), out=grad_a[:, 1:])
            grad_a[:, 0] = 0 if h0 is None else g[:, 0] * h0.conj()
        if a.shape[0] == 1:
            grad_a = grad_a.sum(0, keepdim=True)
    return grad_a, g, None if h0 is None else conj_a[:, 0] * g[:, 0]


def _time_reversed(recurrence: Callable) -> Callable:
    """A recurrence from the end, h_l = a_l h_{l+1} + b_l, made of a forward one on time-flipped inputs."""

    def reverse(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        a = a if a.shape[1] == 1 else a.flip(1)
        return recurrence(a, b.flip(1), h0).flip(1)

    return reverse


def _common_dtype(a: Tensor, b: Tensor, h0: Tensor | None) -> torch.dtype:
    dtype = torch.promote_types(a.dtype, b.dtype)
    return dtype if h0 is None else torch.promote_types(dtype, h0.dtype)


def _kernel(b: Tensor) -> ModuleType | None:
    """The kernel module for b's device (Triton on CUDA, C on CPU), or None where none was built."""
    return triton_scan if b.is_cuda else cpu_scan if b.device.type == "cpu" else None


def kernel_applies(a: Tensor, b: Tensor, h0: Tensor | None = None) -> bool:
    """Whether ``mode="scan"`` runs a kernel for these inputs: the device's kernel was built, every tensor is
    on b's device and the common dtype is one it supports."""
    kernel = _kernel(b)
    on_device = a.device == b.device and (h0 is None or h0.device == b.device)
    return kernel is not None and on_device and _common_dtype(a, b, h0) in kernel.SUPPORTED_DTYPES


def _linear_recurrence_kernel(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """The device's kernel on inputs cast to one dtype (casts are differentiable, so gradients keep theirs)."""
    a = _as_3d(a, b)
    check_initial_state(b, h0)
    dtype = _common_dtype(a, b, h0)
    return _kernel(b).linear_scan(a.to(dtype), b.to(dtype), None if h0 is None else h0.to(dtype))


#: The paths a mode runs on; "scan" picks one by device and dtype (``_path``).
_PATHS = {
    "kernel": _linear_recurrence_kernel,
    "torch_scan": linear_recurrence_scan,
    "chunked": linear_recurrence_chunked,
    "loop": linear_recurrence_ref,
}
MODES = ("scan", "torch_scan", "chunked", "loop")


def _path(mode: str, a: Tensor, b: Tensor, h0: Tensor | None) -> str:
    """The path ``mode`` runs: "scan" is the device's kernel where it applies, else the torch scan on CUDA
    (log L full-width passes beat T + C small launches on a GPU) and the chunked scan on CPU."""
    if mode not in MODES:
        raise ValueError(f"unknown recurrence mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "scan":
        return mode
    if kernel_applies(a, b, h0):
        return "kernel"
    return "torch_scan" if b.is_cuda else "chunked"


def linear_recurrence_adjoint(
    a: Tensor, states: Tensor, h0: Tensor | None, grad_states: Tensor, mode: str = "scan"
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(grad_a, grad_b, grad_h0) of ``states = linear_recurrence(a, b, h0, mode)`` from the states and
    dLoss/dstates, without an autograd graph: for a fused node that keeps the states itself. The
    backward of the path ``mode`` runs (the kernel's, the chunked scan's, or the path's forward on
    time-reversed inputs); grad_a has a's broadcast shape (1 or B, 1 or L, N)."""
    a = _as_3d(a, states)
    path = _path(mode, a, states, h0)
    with torch.no_grad():
        if path == "kernel":
            dtype = _common_dtype(a, states, h0)
            h0 = None if h0 is None else h0.to(dtype)
            adjoint = _kernel(states).linear_scan_adjoint
            return adjoint(a.to(dtype).contiguous(), states.to(dtype), h0, grad_states)
        if path == "chunked":
            reverse = functools.partial(_chunked_states, chunk=CHUNK_SIZE, reverse=True)
        else:
            reverse = _time_reversed(_PATHS[path])
        return _adjoint(a, states, h0, grad_states, reverse)


def linear_recurrence(a: Tensor, b: Tensor, h0: Tensor | None = None, mode: str = "scan") -> Tensor:
    """Dispatch on ``mode``: "scan" (the device's kernel where it applies, else torch scan on CUDA, chunked
    on CPU), "torch_scan", "chunked", "loop"."""
    return _PATHS[_path(mode, a, b, h0)](a, b, h0)
