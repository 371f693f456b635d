"""The selective scan of Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces"), channels last, with the discretisation fused:

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t,      y_t = C_t . h_t + D u_t

u, delta: (B, L, D) (delta already positive), A: (D, N), B, C: (B, L, N), D: (D,),
state: (B, D, N). ``selective_scan_ref`` is the plain loop (the reference); ``selective_scan`` the
pure-PyTorch fast path (time blocks, states recomputed in the backward). The ``signed_*`` twins use
the decay 2 exp(delta A) - 1 in (-1, 1) (Grazzi et al. 2025, "Unlocking State-Tracking in Linear
RNNs Through Negative Eigenvalues"). ``selective_scan_by_mode(..., mode="scan")`` runs the Triton
kernel (``ssm_lab.ops.triton.selective_scan``) on CUDA tensors of a dtype it supports, the C kernel
(``ssm_lab.ops.cpu.selective_scan``, ``cpu_kernel_selective_scan``) on CPU tensors of one dtype in
float32/float64, and the torch path otherwise; "torch_scan" forces the torch path, "kernel" the Triton
kernel, "loop" the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of torch; CPU installs run the torch paths only
    from ssm_lab.ops.triton import selective_scan as triton_selective_scan
except ImportError:
    triton_selective_scan = None

CPU_KERNEL_UNAVAILABLE: str | None = None
try:  # compiled on first import (ssm_lab.ops.cpu.build); no compiler, or SSM_LAB_CPU_KERNELS=0: ImportError
    from ssm_lab.ops.cpu import selective_scan as cpu_selective_scan
except ImportError as error:
    cpu_selective_scan, CPU_KERNEL_UNAVAILABLE = None, str(error)

__all__ = [
    "CPU_KERNEL_UNAVAILABLE",
    "MODES",
    "cpu_kernel_applies",
    "cpu_kernel_selective_scan",
    "kernel_applies",
    "positive_decay",
    "selective_scan",
    "selective_scan_by_mode",
    "selective_scan_ref",
    "signed_decay",
    "signed_selective_scan",
    "signed_selective_scan_ref",
]

DEFAULT_CHUNK_SIZE = 32  # steps per time block of the chunked scans


def _check_shapes(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, h0: Tensor | None
) -> None:
    batch, length, channels = u.shape
    n = B.shape[-1]
    expected = {
        "delta": (delta, (batch, length, channels)),
        "A": (A, (channels, n)),
        "B": (B, (batch, length, n)),
        "C": (C, (batch, length, n)),
    }
    if D is not None:
        expected["D"] = (D, (channels,))
    if h0 is not None:
        expected["initial_state"] = (h0, (batch, channels, n))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} for u of shape {tuple(u.shape)}, got {tuple(tensor.shape)}"
            )


def positive_decay(delta_a: Tensor) -> Tensor:
    """exp(delta A) in (0, 1): Mamba's decay."""
    return torch.exp(delta_a)


def signed_decay(delta_a: Tensor) -> Tensor:
    """2 exp(delta A) - 1 in (-1, 1): the negative-eigenvalue decay of Grazzi et al. 2025."""
    return 2 * torch.exp(delta_a) - 1


def _loop(u, delta, A, B, C, D, h0, decay_of: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    _check_shapes(u, delta, A, B, C, D, h0)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[-1]) if h0 is None else h0
    outputs = []  # steps by unbind (see ssm_lab.ops.scan.linear_recurrence_ref)
    for delta_t, u_t, B_t, C_t in zip(delta.unbind(1), u.unbind(1), B.unbind(1), C.unbind(1), strict=True):
        decay = decay_of(delta_t[:, :, None] * A)
        h = decay * h + (delta_t * u_t)[:, :, None] * B_t[:, None, :]
        outputs.append((h * C_t[:, None, :]).sum(-1))
    y = torch.stack(outputs, dim=1)
    return (y if D is None else y + D * u), h


def _decay_(exponent: Tensor, signed: bool) -> Tensor:
    """In place: exponent -> exp(exponent), or 2 exp(exponent) - 1 for the signed scan."""
    exponent.exp_()
    return exponent.mul_(2).sub_(1) if signed else exponent


def _block_states(states: Tensor, decays: Tensor, delta: Tensor, drive: Tensor, B: Tensor, A: Tensor, signed: bool):
    """One time block, time-major: with states[0] = h_{s-1} on entry, fill decays[t] = decay(delta_{s+t} A)
    and states[t + 1] = h_{s+t} for the n = delta.shape[0] steps of the block.

    states: (n + 1, B, D, N), decays: (n, B, D, N); delta, drive = delta u: (n, B, D); B: (n, B, N)."""
    _decay_(torch.mul(delta.unsqueeze(-1), A, out=decays), signed)
    torch.mul(drive.unsqueeze(-1), B.unsqueeze(-2), out=states[1:])
    for t in range(delta.shape[0]):  # h_t = decay_t h_{t-1} + delta_t B_t u_t, in place on (B, D, N) slices
        states[t + 1].addcmul_(decays[t], states[t])


def _contract(states: Tensor, vectors: Tensor) -> Tensor:
    """sum_n states[..., d, n] vectors[..., n]: (T, B, D, N), (T, B, N) -> (T, B, D), as one batched matmul."""
    steps, batch, channels, size = states.shape
    return torch.bmm(states.reshape(-1, channels, size), vectors.reshape(-1, size, 1)).view(steps, batch, channels)


def _contract_channels(states: Tensor, weights: Tensor) -> Tensor:
    """sum_d states[..., d, n] weights[..., d]: (T, B, D, N), (T, B, D) -> (T, B, N)."""
    steps, batch, channels, size = states.shape
    flat = states.reshape(-1, channels, size).transpose(1, 2)
    return torch.bmm(flat, weights.reshape(-1, channels, 1)).view(steps, batch, size)


def _time_major(*tensors: Tensor) -> list[Tensor]:
    """(B, L, ...) -> contiguous (L, B, ...): each step's slice is then one contiguous block."""
    return [x.transpose(0, 1).contiguous() for x in tensors]


class _BlockedSelectiveScan(torch.autograd.Function):
    """The selective scan over time blocks of ``block`` steps, never holding more than one block's
    (block, B, D, N) states: the forward keeps only the state entering each block (the checkpoints);
    the backward recomputes a block's states from its checkpoint, newest block first, and runs the
    adjoint g_t = C_t dy_t + decay_{t+1} g_{t+1} (g_{L-1} also gets dLoss/dh_final). With x_t = delta_t A,
    the exponent of the decay, and s_t = d decay_t / d x_t (decay_t, or decay_t + 1 when signed):

        dx_t = g_t s_t h_{t-1},   d(delta u)_t = sum_n g_t B_t,   dB_t = sum_d g_t (delta u)_t,
        dC_t = sum_d dy_t h_t,   d delta_t = sum_n dx_t A + u_t d(delta u)_t,   du_t = delta_t d(delta u)_t,
        dA = sum_{b, t} dx_t delta_t,   d initial_state = decay_0 g_0.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, block: int, signed: bool):
        delta_t, u_t, B_t, C_t = _time_major(delta, u, B, C)
        drive_t = delta_t * u_t
        length, batch, channels = delta_t.shape
        size = A.shape[1]
        block = min(block, length)
        starts = range(0, length, block)
        checkpoints = delta.new_empty(len(starts), batch, channels, size)
        states = delta.new_empty(block + 1, batch, channels, size)
        decays = delta.new_empty(block, batch, channels, size)
        y_t = delta.new_empty(length, batch, channels)
        if h0 is None:
            states[0].zero_()
        else:
            states[0].copy_(h0)
        for index, start in enumerate(starts):
            steps = slice(start, start + block)
            n = len(range(length)[steps])
            if index:
                states[0].copy_(states[block])
            checkpoints[index].copy_(states[0])
            _block_states(states[: n + 1], decays[:n], delta_t[steps], drive_t[steps], B_t[steps], A, signed)
            y_t[steps] = _contract(states[1 : n + 1], C_t[steps])
        ctx.save_for_backward(u_t, delta_t, drive_t, A, B_t, C_t, checkpoints)
        ctx.block, ctx.signed, ctx.has_h0 = block, signed, h0 is not None
        return y_t.transpose(0, 1).contiguous(), states[n].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor | None, grad_final: Tensor | None):
        u_t, delta_t, drive_t, A, B_t, C_t, checkpoints = ctx.saved_tensors
        block, signed = ctx.block, ctx.signed
        length, batch, channels = delta_t.shape
        size = A.shape[1]
        grad_y_t = torch.zeros_like(delta_t) if grad_y is None else grad_y.transpose(0, 1).contiguous()
        # dLoss/dh at the end of the current block through all later steps
        carry = delta_t.new_zeros(batch, channels, size) if grad_final is None else grad_final.clone()
        states = delta_t.new_empty(block + 1, batch, channels, size)
        decays = delta_t.new_empty(block, batch, channels, size)
        adjoints = delta_t.new_empty(block, batch, channels, size)
        grad_drive_t, grad_delta_t = torch.empty_like(delta_t), torch.empty_like(delta_t)
        grad_B_t, grad_C_t = torch.empty_like(B_t), torch.empty_like(C_t)
        grad_A = torch.zeros_like(A)
        for index in reversed(range(checkpoints.shape[0])):
            steps = slice(index * block, index * block + block)
            n = len(range(length)[steps])
            states[0].copy_(checkpoints[index])
            decay, state, adjoint = decays[:n], states[: n + 1], adjoints[:n]
            _block_states(state, decay, delta_t[steps], drive_t[steps], B_t[steps], A, signed)
            torch.mul(grad_y_t[steps].unsqueeze(-1), C_t[steps].unsqueeze(-2), out=adjoint)
            adjoint[n - 1].add_(carry)
            for t in range(n - 2, -1, -1):
                adjoint[t].addcmul_(decay[t + 1], adjoint[t + 1])
            torch.mul(decay[0], adjoint[0], out=carry)
            grad_C_t[steps] = _contract_channels(state[1:], grad_y_t[steps])
            grad_drive_t[steps] = _contract(adjoint, B_t[steps])
            grad_B_t[steps] = _contract_channels(adjoint, drive_t[steps])
            grad_exponent = (decay.add_(1) if signed else decay).mul_(adjoint).mul_(state[:n])  # dx_t, in place
            grad_delta_t[steps] = torch.mul(grad_exponent, A, out=adjoint).sum(-1)
            grad_A += grad_exponent.mul_(delta_t[steps].unsqueeze(-1)).sum((0, 1))
        grad_delta_t.addcmul_(u_t, grad_drive_t)
        grad_u_t = grad_drive_t.mul_(delta_t)
        grad_u, grad_delta, grad_B, grad_C = (x.transpose(0, 1) for x in (grad_u_t, grad_delta_t, grad_B_t, grad_C_t))
        return grad_u, grad_delta, grad_A, grad_B, grad_C, carry if ctx.has_h0 else None, None, None


def _blocked(u, delta, A, B, C, D, h0, chunk_size: int, signed: bool) -> tuple[Tensor, Tensor]:
    _check_shapes(u, delta, A, B, C, D, h0)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if u.shape[1] == 0:
        raise ValueError("the selective scan needs at least one step, got L = 0")
    tensors = [x for x in (u, delta, A, B, C, D, h0) if x is not None]
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in tensors))
    u, delta, A, B, C = (x.to(dtype) for x in (u, delta, A, B, C))
    y, final = _BlockedSelectiveScan.apply(u, delta, A, B, C, None if h0 is None else h0.to(dtype), chunk_size, signed)
    return (y if D is None else y + D * u), final


class _CpuSelectiveScan(torch.autograd.Function):
    """The C kernel (``ssm_lab.ops.cpu.selective_scan``) as an autograd node: one pass forward that keeps the
    state entering every block of ``CHECKPOINT_STEPS`` steps, one pass backward that recomputes a block's states
    from it (the adjoint of ``_BlockedSelectiveScan``, plus dD = sum dy u and D dy in du)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, signed: bool):
        y, final, checkpoints = cpu_selective_scan.forward(u, delta, A, B, C, D, h0, signed)
        ctx.save_for_backward(u, delta, A, B, C, D, checkpoints)
        ctx.signed, ctx.has_h0 = signed, h0 is not None
        return y, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, grad_final: Tensor | None):
        u, delta, A, B, C, D, checkpoints = ctx.saved_tensors
        *grads, grad_h0 = cpu_selective_scan.backward(u, delta, A, B, C, D, checkpoints, grad_y, grad_final, ctx.signed)
        return *grads, grad_h0 if ctx.has_h0 else None, None


def cpu_kernel_applies(*tensors: Tensor | None) -> bool:
    """Whether ``mode="scan"`` runs the C kernel: it was built (``CPU_KERNEL_UNAVAILABLE`` says why not) and every
    given tensor is a CPU tensor of one dtype it takes (float32, float64); None entries are skipped."""
    return cpu_selective_scan is not None and cpu_selective_scan.applies(*tensors)


def cpu_kernel_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    signed: bool = False,
) -> tuple[Tensor, Tensor]:
    """The selective scan by the C kernel (signed: decay 2 exp(delta A) - 1): CPU tensors of one dtype in
    float32/float64, else a ValueError naming them. Returns (y: (B, L, D), final_state: (B, D, N))."""
    if cpu_selective_scan is None:
        raise ValueError(f"the C selective scan is not available here: {CPU_KERNEL_UNAVAILABLE}")
    _check_shapes(u, delta, A, B, C, D, initial_state)
    if u.shape[1] == 0:
        raise ValueError("the selective scan needs at least one step, got L = 0")
    return _CpuSelectiveScan.apply(u, delta, A, B, C, D, initial_state, signed)


def selective_scan_ref(u, delta, A, B, C, D=None, initial_state=None) -> tuple[Tensor, Tensor]:
    """The plain loop over time (the reference). Returns (y: (B, L, D), final_state: (B, D, N))."""
    return _loop(u, delta, A, B, C, D, initial_state, positive_decay)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch scan in time blocks of ``chunk_size`` steps (``_BlockedSelectiveScan``): the same
    results as ``selective_scan_ref``, with (chunk_size, B, D, N) states in memory instead of (B, L, D, N).
    Inputs are promoted to one dtype; returns (y: (B, L, D), final_state: (B, D, N))."""
    return _blocked(u, delta, A, B, C, D, initial_state, chunk_size, signed=False)


def signed_selective_scan_ref(u, delta, A, B, C, D=None, initial_state=None) -> tuple[Tensor, Tensor]:
    """Loop reference with decay 2 exp(delta A) - 1 in (-1, 1) (Grazzi et al. 2025)."""
    return _loop(u, delta, A, B, C, D, initial_state, signed_decay)


def signed_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Blocked twin of ``signed_selective_scan_ref``."""
    return _blocked(u, delta, A, B, C, D, initial_state, chunk_size, signed=True)


def kernel_applies(*tensors: Tensor | None) -> bool:
    """Whether ``mode="scan"`` runs the Triton kernel: Triton imports and every given tensor is a CUDA
    tensor of a dtype the kernel takes (``SUPPORTED_DTYPES``: fp32, bf16, fp16); None entries are skipped."""
    if triton_selective_scan is None:
        return False
    given = [x for x in tensors if x is not None]
    return all(x.is_cuda and x.dtype in triton_selective_scan.SUPPORTED_DTYPES for x in given)


def _kernel(signed: bool) -> Callable[..., tuple[Tensor, Tensor]]:
    if triton_selective_scan is None:
        raise ValueError(
            "selective scan mode 'kernel' needs Triton (a CUDA build of torch); use 'scan' or 'torch_scan'"
        )
    return triton_selective_scan.signed_selective_scan if signed else triton_selective_scan.selective_scan


MODES = ("scan", "torch_scan", "kernel", "loop")


def selective_scan_by_mode(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    mode: str = "scan",
    signed: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Dispatch on ``mode``: "scan" (the Triton kernel where ``kernel_applies``, the C kernel where
    ``cpu_kernel_applies``, else the torch path), "torch_scan" (``selective_scan``, any device), "kernel" (Triton;
    CUDA tensors of fp32/bf16/fp16 only, a ValueError elsewhere), "loop" (``selective_scan_ref``). ``signed``
    picks the 2 exp(delta A) - 1 decay."""
    if mode not in MODES:
        raise ValueError(f"unknown selective scan mode {mode!r}; choose one of {', '.join(MODES)}")
    args = (u, delta, A, B, C, D, initial_state)
    if mode == "kernel" or (mode == "scan" and kernel_applies(*args)):
        _check_shapes(*args)
        return _kernel(signed)(*args)
    if mode == "scan" and cpu_kernel_applies(*args):
        return cpu_kernel_selective_scan(*args, signed=signed)
    if mode == "loop":
        return (signed_selective_scan_ref if signed else selective_scan_ref)(*args)
    return (signed_selective_scan if signed else selective_scan)(*args, chunk_size=chunk_size)
