"""Dense input-dependent linear recurrences h_t = M_t h_{t-1} + v_t (Linear CDE, IDS4): the loop
reference, a work-efficient parallel scan over matrix products and a sequential recurrence with a
hand-written backward.

M: (B, L, N, N), v: (B, L, N), h0: (B, N) -> every state (B, L, N). The pair (M, v) composes
associatively, (M2, v2) o (M1, v1) = (M2 M1, M2 v1 + v2), which is what the parallel scan uses: O(L N^3)
work in depth O(log L). The sequential recurrence does O(L N^2) work and is bound by reading M once; where a
kernel runs its time loop (C on CPU; Triton on CUDA for float32 and N <= 128, one program per batch row) it is
the faster of the two at every batch size measured (H100, L = 1024, N = 64, fwd + bwd: 1.3-2.2 ms against
11-15 ms for 1 to 32 rows), and ``matrix_recurrence(..., mode="scan")`` takes it; the parallel scan is the CUDA
path where no kernel applies.

Exponentials of affine maps (the Linear CDE's exact solver): ``affine_exp``, scaling and squaring with a
Taylor polynomial (Paterson-Stockmeyer) in plain products, whose autograd backward is cheaper than
torch.linalg.matrix_exp's.
Large batches: ``batched_affine_exp`` bounds how many matrices one call sees, and
``chunked_matrix_recurrence`` builds and runs the maps one time window at a time (optionally
recomputing them in the backward pass), so memory grows with the window, not with L; on CPU windows
under glibc's mmap ceiling also keep the maps in reused heap memory (``window_steps``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ssm_lab.ops.inverse import batched_inverse

CPU_LOOPS_UNAVAILABLE: str | None = None
try:  # the time loops in C, compiled on first import (ssm_lab.ops.cpu.build); else the Python loops below
    from ssm_lab.ops.cpu import matrix_recurrence as cpu_loops
except ImportError as error:
    cpu_loops, CPU_LOOPS_UNAVAILABLE = None, str(error)
try:  # Triton ships with CUDA builds of torch
    from ssm_lab.ops.triton import matrix_recurrence as gpu_loops
except ImportError:
    gpu_loops = None

__all__ = [
    "AUTO_EXP_BATCH",
    "MODES",
    "affine_exp",
    "affine_step",
    "batched_affine_exp",
    "bilinear_maps",
    "bilinear_recurrence",
    "check_shapes",
    "CPU_WINDOW_BYTES",
    "chunked_matrix_recurrence",
    "matrix_recurrence",
    "matrix_recurrence_ref",
    "matrix_recurrence_scan",
    "matrix_recurrence_sequential",
    "scaling_squarings",
    "taylor_degree",
    "window_steps",
    "without_autocast",
]


def without_autocast(function: Callable) -> Callable:
    """``function`` run with autocast off on the device of its first tensor argument, in its inputs' dtype. The
    dense recurrences invert, exponentiate and multiply L maps, which bf16 would not survive: under autocast
    (``trainer.precision=bf16-mixed``) the cores hand them float32 maps, and every product here stays float32."""

    @functools.wraps(function)
    def in_input_precision(*args: Any, **kwargs: Any) -> Any:
        device = next(arg.device.type for arg in (*args, *kwargs.values()) if isinstance(arg, Tensor))
        with torch.autocast(device, enabled=False):
            return function(*args, **kwargs)

    return in_input_precision


def check_shapes(M: Tensor, v: Tensor, h0: Tensor | None) -> None:
    """Raise a clear error unless M: (B, L, N, N), v: (B, L, N) and h0: (B, N) or None."""
    if v.dim() != 3 or M.shape != (*v.shape, v.shape[-1]):
        raise ValueError(f"need M: (B, L, N, N) and v: (B, L, N), got {tuple(M.shape)} and {tuple(v.shape)}")
    if h0 is not None and h0.shape != (v.shape[0], v.shape[2]):
        raise ValueError(f"initial state must be (B, N) = {(v.shape[0], v.shape[2])}, got {tuple(h0.shape)}")


def _apply(M: Tensor, h: Tensor) -> Tensor:
    return (M @ h.unsqueeze(-1)).squeeze(-1)


@without_autocast
def affine_step(M: Tensor, v: Tensor, h: Tensor) -> Tensor:
    """One step M h + v: M (..., N, N), v and h (..., N) (the cores' ``step``)."""
    return _apply(M, h) + v


@without_autocast
def matrix_recurrence_ref(M: Tensor, v: Tensor, h0: Tensor | None = None) -> Tensor:
    """Plain loop: h_t = M_t h_{t-1} + v_t, h_{-1} = h0 (zero if None); steps by ``unbind`` (see
    ``ssm_lab.ops.scan.linear_recurrence_ref``)."""
    check_shapes(M, v, h0)
    h = torch.zeros_like(v[:, 0]) if h0 is None else h0
    states = []
    for M_t, v_t in zip(M.unbind(1), v.unbind(1), strict=True):
        h = _apply(M_t, h) + v_t
        states.append(h)
    return torch.stack(states, dim=1)


def _odd_even_scan(M: Tensor, v: Tensor) -> Tensor:
    """States from a zero initial state (h0 already folded into v_0).

    Odd-even reduction (Blelloch-style): combine neighbouring pairs, solve the half-length
    problem for the odd positions recursively, then fill the even positions with one step each.
    Matrix products total L N^3 (not L log L N^3) and depth is 2 log2 L.
    """
    length = v.shape[1]
    if length == 1:
        return v
    if length % 2:  # an identity step at the end keeps the pairing simple
        eye = torch.eye(v.shape[-1], dtype=M.dtype, device=M.device).expand(M.shape[0], 1, -1, -1)
        return _odd_even_scan(torch.cat([M, eye], 1), torch.cat([v, torch.zeros_like(v[:, :1])], 1))[:, :length]
    M_even, M_odd, v_even, v_odd = M[:, 0::2], M[:, 1::2], v[:, 0::2], v[:, 1::2]
    odd_states = _odd_even_scan(M_odd @ M_even, _apply(M_odd, v_even) + v_odd)  # states at t = 1, 3, 5, ...
    previous = torch.cat([torch.zeros_like(v_even[:, :1]), odd_states[:, :-1]], dim=1)
    even_states = _apply(M_even, previous) + v_even
    return torch.stack([even_states, odd_states], dim=2).reshape(v.shape)


@without_autocast
def matrix_recurrence_scan(M: Tensor, v: Tensor, h0: Tensor | None = None) -> Tensor:
    """Parallel scan of the same recurrence; equals ``matrix_recurrence_ref``."""
    check_shapes(M, v, h0)
    if h0 is not None:
        v = torch.cat([v[:, :1] + _apply(M[:, 0], h0).unsqueeze(1), v[:, 1:]], dim=1)
    return _odd_even_scan(M, v)


@without_autocast
def matrix_recurrence_sequential(M: Tensor, v: Tensor, h0: Tensor | None = None) -> Tensor:
    """The same recurrence step by step as one autograd node with a hand-written backward.

    O(L N^2) work (one batched mat-vec per step) against the scan's O(L N^3): the faster path where
    nothing runs in parallel anyway (CPU). Equals ``matrix_recurrence_ref``."""
    check_shapes(M, v, h0)
    return _SequentialRecurrence.apply(M, v, h0)


def _in_c(*tensors: Tensor | None) -> bool:
    """Whether the time loops run in C (``ssm_lab.ops.cpu.matrix_recurrence``): built, and CPU tensors of one
    float dtype it takes; else the Python loops (the same steps, a few tensor operations each)."""
    return cpu_loops is not None and cpu_loops.applies(*tensors)


def _loops(*tensors: Tensor | None) -> ModuleType | None:
    """The kernel that runs ``affine_steps`` on these tensors (C on CPU, Triton on CUDA), or None: Python loops."""
    if _in_c(*tensors):
        return cpu_loops
    return gpu_loops if gpu_loops is not None and gpu_loops.applies(*tensors) else None


def _affine_steps(matrix: Callable[[int], Tensor], v: Tensor, times: range, h: Tensor | None) -> Tensor:
    """h <- matrix(t) h + v_t for t in ``times`` from h (None: zero, so the first step gives v_t);
    every state in time order, (B, L, N), with no autograd graph."""
    states = torch.empty_like(v)
    for t in times:
        h = v[:, t] if h is None else torch.baddbmm(v[:, t].unsqueeze(-1), matrix(t), h.unsqueeze(-1)).squeeze(-1)
        states[:, t] = h
    return states


class _SequentialRecurrence(torch.autograd.Function):
    """Backward: g_t = dLoss/dh_t through all later steps obeys g_t = dh_t + M_{t+1}^T g_{t+1}, the
    recurrence run backwards in time with transposed matrices; then dv_t = g_t, dM_t = g_t h_{t-1}^T
    (h_{-1} = h0 or 0; one batched outer product for every step), dh0 = M_0^T g_0."""

    @staticmethod
    def forward(ctx, M: Tensor, v: Tensor, h0: Tensor | None) -> Tensor:
        loops = _loops(M, v, h0)
        if loops is not None:
            states = loops.affine_steps(M, v, h0)
        else:
            states = _affine_steps(lambda t: M[:, t], v, range(v.shape[1]), h0)
        ctx.save_for_backward(M, states, h0)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None]:
        M, states, h0 = ctx.saved_tensors
        loops = _loops(M, grad_states)
        if loops is not None:
            g = loops.affine_steps(M, grad_states, None, reverse=True)
        else:
            g = _affine_steps(lambda t: M[:, t + 1].mT, grad_states, range(states.shape[1] - 1, -1, -1), None)
        grad_M = None
        if ctx.needs_input_grad[0]:
            initial = torch.zeros_like(states[:, :1]) if h0 is None else h0.unsqueeze(1)
            previous = torch.cat([initial, states[:, :-1]], dim=1)
            grad_M = g.unsqueeze(-1) * previous.unsqueeze(-2)
        grad_h0 = None if h0 is None else _apply(M[:, 0].mT, g[:, 0])
        return grad_M, g, grad_h0


#: The paths a mode runs on; "scan" picks one by device (``_path``).
_PATHS = {
    "parallel": matrix_recurrence_scan,
    "sequential": matrix_recurrence_sequential,
    "loop": matrix_recurrence_ref,
}
MODES = ("scan", *_PATHS)


def _path(mode: str, M: Tensor, v: Tensor, h0: Tensor | None) -> str:
    """The path ``mode`` runs: "scan" is the sequential recurrence where a kernel runs its time loop (C on CPU,
    Triton on CUDA for float32 and N <= 128: L N^2 work, bound by reading M once), else the parallel scan on CUDA
    (depth 2 log2 L hides its L N^3 work) and the sequential recurrence's Python loop on CPU."""
    if mode not in MODES:
        raise ValueError(f"unknown matrix recurrence mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "scan":
        return mode
    return "parallel" if v.is_cuda and _loops(M, v, h0) is None else "sequential"


def matrix_recurrence(M: Tensor, v: Tensor, h0: Tensor | None = None, mode: str = "scan") -> Tensor:
    """Dispatch on ``mode``: "scan" (``_path``: sequential where a kernel runs the loop, else parallel on CUDA),
    "parallel", "sequential", "loop" (the reference); unknown modes are an error."""
    return _PATHS[_path(mode, M, v, h0)](M, v, h0)


@without_autocast
def bilinear_maps(half_step_A: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """The bilinear (trapezoidal) discretisation, S = dt/2 A: (..., N, N), u = dt B x: (..., N) ->
    (Abar = (I - S)^{-1} (I + S): (..., N, N), Bbar x = (I - S)^{-1} u: (..., N)), from one inverse X = (I - S)^{-1}
    (``batched_inverse``: a Triton kernel on CUDA for float32, N <= 64): since I + S = 2 I - (I - S), Abar = 2 X - I
    and Bbar x = X u. On an H100, 32768 maps of N = 64, forward and backward: 9.9 ms for the inverse kernel (its
    backward is two batched products) against 39 ms for a batched solve with N + 1 right-hand sides."""
    eye = torch.eye(half_step_A.shape[-1], dtype=half_step_A.dtype, device=half_step_A.device)
    inverse = batched_inverse(eye - half_step_A)
    return 2 * inverse - eye, (inverse @ inputs.unsqueeze(-1)).squeeze(-1)


def bilinear_recurrence(half_step_A: Tensor, inputs: Tensor, h0: Tensor | None = None, mode: str = "scan") -> Tensor:
    """Every state of h_t = Abar_t h_{t-1} + Bbar_t x_t for the maps of ``bilinear_maps``: (B, L, N).

    Modes as in ``matrix_recurrence``. "sequential", and "scan" on CPU, never form Abar: since I + S = 2 I - (I - S),
    h_t = (I - S_t)^{-1} (2 h_{t-1} + u_t) - h_{t-1}, one LU factorisation per step (N^3 / 3 multiply-adds
    against the solve's N^3 with N + 1 right-hand sides) and O(N^2) triangular solves in the loop. On CUDA "scan"
    forms the maps by ``bilinear_maps`` (every step at once) and runs ``matrix_recurrence``'s "scan" on them."""
    if mode not in MODES:
        raise ValueError(f"unknown matrix recurrence mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "sequential" or (mode == "scan" and not inputs.is_cuda):
        check_shapes(half_step_A, inputs, h0)
        return _BilinearRecurrence.apply(half_step_A, inputs, h0)
    return matrix_recurrence(*bilinear_maps(half_step_A, inputs), h0, mode=mode)


def _bilinear_steps(half_step_A: Tensor, inputs: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The Python twin of ``cpu_loops.bilinear_forward``: (factors, pivots, states) with K_t = I - S_t factorised
    by torch.linalg.lu_factor (its layout) and h_t = K_t^{-1} (2 h_{t-1} + u_t) - h_{t-1} a few tensor operations
    per step."""
    eye = torch.eye(inputs.shape[-1], dtype=inputs.dtype, device=inputs.device)
    factors, pivots = torch.linalg.lu_factor(eye - half_step_A)
    h = torch.zeros_like(inputs[:, 0]) if h0 is None else h0
    states = torch.empty_like(inputs)
    for t in range(inputs.shape[1]):
        rhs = torch.add(inputs[:, t], h, alpha=2).unsqueeze(-1)
        h = torch.sub(torch.linalg.lu_solve(factors[:, t], pivots[:, t], rhs).squeeze(-1), h, out=states[:, t])
    return factors, pivots, states


def _bilinear_adjoint_steps(
    factors: Tensor, pivots: Tensor, states: Tensor, h0: Tensor | None, grad_states: Tensor, with_grad_S: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The Python twin of ``cpu_loops.bilinear_adjoint`` on ``_bilinear_steps``' factors: (q, r_0, dS or None)."""
    q = torch.empty_like(grad_states)
    to_earlier = torch.zeros_like(grad_states[:, 0])  # r_{t+1} = g_{t+1} - 2 q_{t+1}, what step t's gradient loses
    for t in range(grad_states.shape[1] - 1, -1, -1):
        g = torch.sub(grad_states[:, t], to_earlier)
        q_t = torch.linalg.lu_solve(factors[:, t], pivots[:, t], g.unsqueeze(-1), adjoint=True).squeeze(-1)
        q[:, t] = q_t
        to_earlier = torch.add(g, q_t, alpha=-2)
    grad_half_step_A = None
    if with_grad_S:
        initial = torch.zeros_like(states[:, :1]) if h0 is None else h0.unsqueeze(1)
        z = states + torch.cat([initial, states[:, :-1]], dim=1)
        grad_half_step_A = q.unsqueeze(-1) * z.unsqueeze(-2)
    return q, to_earlier, grad_half_step_A


class _BilinearRecurrence(torch.autograd.Function):
    """Forward z_t = K_t^{-1} (2 h_{t-1} + u_t), h_t = z_t - h_{t-1} with K_t = I - S_t, so z_t = h_t + h_{t-1}.
    Backward, g_t = dLoss/dh_t through all later steps: q_t = K_t^{-T} g_t, g_{t-1} = dh_{t-1} + 2 q_t - g_t;
    then du_t = q_t, dS_t = -dK_t = q_t z_t^T, dh0 = 2 q_0 - g_0. Both passes in C where it applies
    (``ssm_lab.ops.cpu.matrix_recurrence``: it factorises K_t itself, in its own layout, and writes dS_t), else
    their Python twins (``_bilinear_steps``, ``_bilinear_adjoint_steps``)."""

    @staticmethod
    def forward(ctx, half_step_A: Tensor, inputs: Tensor, h0: Tensor | None) -> Tensor:
        ctx.in_c = _in_c(half_step_A, inputs, h0)  # the factors' layout: the backward must run where they came from
        steps = cpu_loops.bilinear_forward if ctx.in_c else _bilinear_steps
        factors, pivots, states = steps(half_step_A, inputs, h0)
        ctx.save_for_backward(factors, pivots, states, h0)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None]:
        factors, pivots, states, h0 = ctx.saved_tensors
        adjoint = cpu_loops.bilinear_adjoint if ctx.in_c else _bilinear_adjoint_steps
        q, to_earlier, grad_half_step_A = adjoint(factors, pivots, states, h0, grad_states, ctx.needs_input_grad[0])
        return grad_half_step_A, q, None if h0 is None else -to_earlier


#: Every matrix is scaled to this 1-norm (or less) before its Taylor polynomial is taken.
TAYLOR_RADIUS = 1.0


def taylor_degree(dtype: torch.dtype) -> int:
    """The smallest m with theta^(m+1) e^(2 theta) / (m+1)! <= u (theta = ``TAYLOR_RADIUS``, u the unit roundoff):
    for ||X||_1 <= theta the Taylor remainder sum_{k>m} X^k / k! is then below rounding relative to e^X
    (||e^X||^-1 <= e^theta). 11 for float32, 18 for float64. A smaller radius means a lower degree but more
    squarings, whose rounding errors add up: at 1/4 (degree 6) float32 results were ten times less accurate
    than torch.linalg.matrix_exp's, at 1 they are within a factor of about two."""
    roundoff = torch.finfo(dtype).eps / 2
    degree = 1
    while TAYLOR_RADIUS ** (degree + 1) * math.exp(2 * TAYLOR_RADIUS) / math.factorial(degree + 1) > roundoff:
        degree += 1
    return degree


def scaling_squarings(norms: Tensor) -> Tensor:
    """The fewest halvings s >= 0 that bring each 1-norm to ``TAYLOR_RADIUS`` or below (same dtype as norms); 0 for
    a non-finite norm, whose exponential is not finite whatever s is."""
    return torch.log2(norms / TAYLOR_RADIUS).ceil().clamp(min=0).nan_to_num(nan=0.0, posinf=0.0)


def _power_combination(powers: list[Tensor], coefficients: list[float]) -> Tensor:
    """sum_i c_i X^i over the stored powers X^1, X^2, ... (``powers[0]`` is X^0 = I, added on the diagonal)."""
    total = powers[1] * coefficients[1] if len(coefficients) > 1 else torch.zeros_like(powers[1])
    for power, coefficient in zip(powers[2:], coefficients[2:], strict=False):
        total.add_(power, alpha=coefficient)
    total.diagonal(dim1=-2, dim2=-1).add_(coefficients[0])
    return total


def _vector_combination(vectors: list[Tensor], coefficients: list[float]) -> Tensor:
    """sum_i c_i X^i w over the stored X^i w."""
    total = vectors[0] * coefficients[0]
    for vector, coefficient in zip(vectors[1:], coefficients[1:], strict=False):
        total.add_(vector, alpha=coefficient)
    return total


def _horner_in_blocks(
    coefficients: list[float], block: int, combination: Callable[[list[float]], Tensor], times_y: Callable
) -> Tensor:
    """sum_j Y^j C_j with C_j = combination(c_{jq}, ..., c_{jq+q-1}) (q = block), by Horner in Y:
    C_r, then C_j + Y (...) for j = r - 1, ..., 0 (``times_y`` multiplies by Y; its result is fresh)."""
    last = (len(coefficients) - 1) // block
    total = combination(coefficients[last * block :])
    for j in range(last - 1, -1, -1):
        total = times_y(total).add_(combination(coefficients[j * block : (j + 1) * block]))
    return total


@without_autocast
def affine_exp(M: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(e^M, phi_1(M) v): the blocks of expm([[M, v], [0, 0]]) = [[e^M, phi_1(M) v], [0, 1]], the flow of
    h' = M h + v over unit time. M: (..., N, N), v: (..., N).

    Scaling and squaring on the blocks, never forming the (N + 1)-matrix (N + 1 = 65 ran bmm at a fraction of
    N = 64's speed): X = M / 2^s, w = v / 2^s with s the fewest halvings to ||M||_1 <= ``TAYLOR_RADIUS`` (per
    matrix); the Taylor polynomials P = sum_{k<=m} X^k / k! (of e^X) and p = sum_{k<m} X^k w / (k+1)! (of
    phi_1(X) w), then s squarings [[E, c], [0, 1]]^2 = [[E^2, E c + c], [0, 1]]. The polynomials are evaluated
    by Paterson & Stockmeyer (1973, "On the number of nonscalar multiplications necessary to evaluate
    polynomials"): with q = floor(sqrt(m)) and Y = X^q, P = sum_j Y^j B_j where B_j = sum_{i<q} c_{jq+i} X^i,
    by Horner in Y: q - 1 products for the powers and m / q for Horner, 5 instead of Horner's 10 at m = 11
    (float32) and 7 instead of 17 at m = 18 (float64); p the same way on the vectors X^i w (matrix-vector
    products). ||v|| does not enter s: phi_1(M) v is linear in v, and with ||X|| <= 1 (||phi_1(X)^-1|| <=
    1 / (3 - e)) the degree of ``taylor_degree`` bounds its relative truncation error below rounding too.
    Plain products, so autograd differentiates it at about twice the forward's cost, where
    torch.linalg.matrix_exp's backward exponentiates a 2 (N + 1) block matrix. Equals torch.linalg.matrix_exp
    of the augmented matrix to rounding."""
    squarings = scaling_squarings(M.detach().abs().sum(-2).amax(-1))
    scale = torch.exp2(-squarings)
    X, w = M * scale[..., None, None], v * scale[..., None]
    degree = taylor_degree(M.dtype)
    block = max(2, math.isqrt(degree))
    powers = [None, X]  # X^0 (implicit: the identity), X^1, ..., X^block
    for _ in range(block - 1):
        powers.append(powers[-1] @ X)
    vectors = [w, *(_apply(power, w) for power in powers[1:block])]  # X^i w, i < block
    Y = powers[block]
    P = _horner_in_blocks(
        [1 / math.factorial(k) for k in range(degree + 1)], block,
        lambda coefficients: _power_combination(powers[:block], coefficients), lambda total: Y @ total,
    )  # fmt: skip
    p = _horner_in_blocks(
        [1 / math.factorial(k + 1) for k in range(degree)], block,
        lambda coefficients: _vector_combination(vectors, coefficients), lambda total: _apply(Y, total),
    )  # fmt: skip
    for k in range(int(squarings.max()) if squarings.numel() else 0):
        squared = P @ P, _apply(P, p) + p
        needed = squarings > k  # all of them unless the norms straddle a power of two
        if bool(needed.all()):
            P, p = squared
        else:
            P, p = torch.where(needed[..., None, None], squared[0], P), torch.where(needed[..., None], squared[1], p)
    return P, p


#: ``batched_affine_exp``'s "auto" batch limit per device type (others: the CUDA value). On CPU a call's
#: temporaries (~15 N x N matrices per input matrix, kept for the backward) then come from reused heap memory
#: instead of fresh, page-faulting mappings: 16384 matrices of 64 x 64, forward and backward, 2 threads, took
#: 11.1 s in calls of 8192 and 3.3-3.9 s in calls of 128-512. On CUDA large calls keep the launches few.
AUTO_EXP_BATCH = {"cpu": 256, "cuda": 8192}


def batched_affine_exp(M: Tensor, v: Tensor, max_batch: int | str | None = "auto") -> tuple[Tensor, Tensor]:
    """``affine_exp`` over (..., N, N), (..., N) in calls of at most ``max_batch`` matrices (None: one call;
    "auto": ``AUTO_EXP_BATCH`` for the device).

    One call over a huge batch allocates the temporaries for every matrix at once (matrix exponentials have
    crashed on CUDA that way); slices of the flattened batch give the same values."""
    if max_batch == "auto":
        max_batch = AUTO_EXP_BATCH.get(M.device.type, AUTO_EXP_BATCH["cuda"])
    elif max_batch is not None and (not isinstance(max_batch, int) or max_batch <= 0):
        raise ValueError(f"max_batch must be a positive integer, 'auto' or None, got {max_batch!r}")
    flat_M, flat_v = M.reshape(-1, *M.shape[-2:]), v.reshape(-1, v.shape[-1])
    if max_batch is None or flat_M.shape[0] <= max_batch:
        return affine_exp(M, v)
    parts = [affine_exp(*part) for part in zip(flat_M.split(max_batch), flat_v.split(max_batch), strict=True)]
    return torch.cat([E for E, _ in parts]).view(M.shape), torch.cat([c for _, c in parts]).view(v.shape)


#: On CPU, ``chunk_length="auto"`` builds and runs the maps this many bytes at a time. Below glibc's 32 MiB mmap
#: ceiling every window's maps (and their factors and gradients) come from the heap, reused, instead of fresh
#: mappings faulted in page by page, and a window's maps are still in cache when the recurrence reads them. IDS4 at
#: B=16, L=1024, N=64 (64 steps a window), 2 threads, forward and backward: ~330 ms against ~490 ms for the whole
#: sequence at once (32k page faults a step against 200k); 32 to 128 steps a window did about the same.
CPU_WINDOW_BYTES = 16 * 2**20


def window_steps(
    chunk_length: int | str | None, batch: int, state_size: int, dtype: torch.dtype, device: torch.device
) -> int | None:
    """``chunked_matrix_recurrence``'s steps per window for a core's ``chunk_length``: an integer as it is, None (the
    whole sequence) as it is, "auto": maps of ``CPU_WINDOW_BYTES`` on CPU (batch x steps x N x N elements of
    ``dtype``), None elsewhere (a parallel scan wants the whole sequence)."""
    if chunk_length != "auto":
        return chunk_length
    return max(1, CPU_WINDOW_BYTES // (batch * state_size**2 * dtype.itemsize)) if device.type == "cpu" else None


def chunked_matrix_recurrence(
    maps: Callable[..., tuple[Tensor, Tensor]],
    inputs: tuple[Tensor, ...],
    h0: Tensor | None,
    chunk_length: int | None = None,
    recompute: bool = False,
    recurrence: Callable[[Tensor, Tensor, Tensor | None], Tensor] = matrix_recurrence,
) -> Tensor:
    """Every state of a dense recurrence whose per-step maps are built from ``inputs`` (each (B, L, ...)), a time
    window at a time: ``recurrence(*maps(*window_inputs), state)`` -> (B, window, N) per window, from the state the
    previous one ended in (h0 first). Default: ``matrix_recurrence`` (mode "scan") on maps (M, v), h_t = M_t h_{t-1}
    + v_t; IDS4 runs ``bilinear_recurrence`` on its (S, u), the Linear CDE ``affine_flow_recurrence`` on (M, v).

    Windows of ``chunk_length`` steps (None: the whole sequence; ``window_steps`` picks by device). The inputs are
    split, not sliced: the backward joins the windows' gradients in one pass instead of one per window. With
    ``recompute`` (and autograd on) a window's maps are not kept for the backward pass but rebuilt there
    (activation checkpointing), so the memory held is the states plus one window's maps instead of all L."""
    if chunk_length is not None and (not isinstance(chunk_length, int) or chunk_length <= 0):
        raise ValueError(f"chunk_length must be a positive integer or None, got {chunk_length!r}")

    def window(state: Tensor | None, *window_inputs: Tensor) -> Tensor:
        return recurrence(*maps(*window_inputs), state)

    steps = inputs[0].shape[1] if chunk_length is None else chunk_length
    outputs, state = [], h0
    for window_inputs in zip(*(x.split(steps, dim=1) for x in inputs), strict=True):
        if recompute and torch.is_grad_enabled():
            states = checkpoint(window, state, *window_inputs, use_reentrant=False)
        else:
            states = window(state, *window_inputs)
        outputs.append(states)
        state = states[:, -1]
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
