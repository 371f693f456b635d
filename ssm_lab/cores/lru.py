"""LRU: the Linear Recurrent Unit of Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences" (ICML), a stable diagonal complex LTI recurrence, and the machinery
it shares with every LTI core whose state is a complex diagonal recurrence (``DiagonalLTICore``).

    h_t = diag(lambda) h_{t-1} + gamma * (B x_t),   y_t = Re(C h_t) + D * x_t
    lambda = exp(-exp(nu_log) + i exp(theta_log)),   gamma = sqrt(1 - |lambda|^2)

|lambda| < 1 for every value of nu_log, so the core is stable by construction; gamma keeps the
state's scale independent of how close |lambda| is to 1. Init: |lambda| uniform on the ring
r_min <= r <= r_max (in area), phases uniform in [0, max_phase].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, fold_residual, state_at_lengths, zero_padding
from ssm_lab.inference_cache import cached_without_grad
from ssm_lab.ops.fft_conv import causal_conv, log_of_decay
from ssm_lab.ops.scan import linear_recurrence
from ssm_lab.ops.spectral import spectral_norm_bound
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive


def diagonal_recurrence_conv(eigenvalues: Tensor, drive: Tensor, h0: Tensor | None = None) -> Tensor:
    """Every state of h_t = lambda * h_{t-1} + drive_t by FFT convolution (the "conv" mode):
    h_t = sum_{s<=t} lambda^s drive_{t-s} + lambda^(t+1) h0.

    eigenvalues: (N,) complex, drive: (B, L, N) complex, h0: (B, N) or None -> (B, L, N).
    The complex product k * d = (k_re d_re - k_im d_im) + i (k_re d_im + k_im d_re) is four real
    convolutions, done in one ``causal_conv`` call over 4N channels.
    """
    n, length = drive.shape[-1], drive.shape[1]
    steps = torch.arange(length, device=drive.device, dtype=drive.real.dtype).unsqueeze(1)
    powers = torch.exp(steps * log_of_decay(eigenvalues))  # (L, N): lambda^s
    signal = torch.cat([drive.real, drive.imag, drive.real, drive.imag], dim=-1)
    kernel = torch.cat([powers.real, powers.real, powers.imag, powers.imag], dim=-1)
    products = causal_conv(signal, kernel)
    states = torch.complex(
        products[..., :n] - products[..., 3 * n :], products[..., n : 2 * n] + products[..., 2 * n : 3 * n]
    )
    if h0 is not None:
        states = states + (powers * eigenvalues).unsqueeze(0) * h0.unsqueeze(1)
    return states


def complex_drive(x: Tensor, B: Tensor) -> Tensor:
    """B x for real x: (B, L, H) and complex B: (N, H) -> (B, L, N) complex, as ONE real matmul
    with the rows (Re B_n, Im B_n) interleaved, whose (..., N, 2) output views as complex for free:
    half the work of casting x to complex and multiplying complex matrices. Under autocast the matmul
    runs in half precision and its output is cast to float32 (complex has no half type): fp32 state."""
    interleaved = torch.view_as_real(B).transpose(1, 2).reshape(2 * B.shape[0], B.shape[1])
    product = x @ interleaved.transpose(0, 1)
    if product.dtype not in (torch.float32, torch.float64):  # autocast's half-precision GEMM: the state is float32
        product = product.float()
    return torch.view_as_complex(product.unflatten(-1, (-1, 2)))


def real_readout(states: Tensor, C: Tensor, skip: Tensor | None = None) -> Tensor:
    """Re(C h) for complex h: (B, L, N) and C: (H, N) -> (B, L, H), as one real matmul:
    Re(C h) = C_re h_re - C_im h_im over the interleaved (h_re, h_im) pairs of view_as_real(h).
    skip: (B, L, H) or None, added inside the matmul (addmm): skip + Re(C h) without another pass."""
    # the pairs (C_re, -C_im) are conj(C) viewed as real: no constant to copy to the device (a host sync)
    interleaved = torch.view_as_real(C.conj().resolve_conj()).flatten(-2).transpose(0, 1)
    flat = torch.view_as_real(states.contiguous()).flatten(-2)
    if skip is None:
        return flat @ interleaved
    return torch.addmm(skip.flatten(0, -2), flat.flatten(0, -2), interleaved).view_as(skip)


class _AddPreviousStep(torch.autograd.Function):
    """y_t += r_{t-1} for t >= 1 and y_0 += first (if given), in place on y: (B, L, H) (a fresh tensor of the
    caller's; r: (B, L, H), first: (B, H) or None). Through autograd, the in-place add on the slice y[:, 1:] of
    a shifted slice r[:, :-1] costs some six (B, L, H) passes backward (a clone, zero fills and copies of
    CopySlices and SliceBackward); here the backward makes one shifted copy of the gradient."""

    @staticmethod
    def forward(ctx, y: Tensor, r: Tensor, first: Tensor | None) -> Tensor:
        y[:, 1:].add_(r[:, :-1])  # not ``y[:, 1:] += ...``: Python would then copy the slice onto itself
        if first is not None:
            y[:, 0].add_(first)
        ctx.mark_dirty(y)
        ctx.has_first = first is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        grad_r = torch.empty_like(grad)
        grad_r[:, :-1] = grad[:, 1:]
        grad_r[:, -1] = 0
        return grad, grad_r, grad[:, 0] if ctx.has_first else None


class DiagonalLTICore(nn.Module):
    """An LTI core x: (B, L, H) -> y: (B, L, H) with a complex diagonal state h: (B, N):

        h_t = diag(lambda) h_{t-1} + B x_t,   y_t = Re(C r_t) + D x_t,

    r_t = h_t, or r_t = h_{t-1} when ``readout_from_previous_state`` (the dissipativity form
    x_{t+1} = A x_t + B u_t, y_t = C x_t + D u_t). Subclasses give ``system()`` ->
    (lambda: (N,) complex, B: (N, H) complex, C: (H, N) complex, D: (H,) diagonal or (H, H) real)
    and ``gain_bound()``; this class runs the modes (loop reference, scan, FFT conv, and chunked:
    see ``ssm_lab.ops.scan``; scan picks the GPU kernel or the chunked scan on CPU), streaming steps,
    and the transfer function used to check gain bounds.
    """

    modes = ("scan", "loop", "conv", "chunked")
    readout_from_previous_state = False

    def system(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def gain_bound(self) -> Tensor:
        raise NotImplementedError

    def system_and_gain_bound(self) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """Both at once; a subclass whose bound comes with its system (l2n) computes them together."""
        return self.system(), self.gain_bound()

    def _state_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype.to_complex()

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        device = device or next(self.parameters()).device
        return torch.zeros(batch, self.state_size, dtype=self._state_dtype(), device=device)

    @staticmethod
    def _direct(D: Tensor, x: Tensor) -> Tensor:
        return D * x if D.dim() == 1 else x @ D.transpose(0, 1)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        residual_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, H), state: (B, N) complex or None -> (y: (B, L, H), final state: (B, N)).
        residual_scale s (a scalar tensor): y = x + s (C r + D x) instead, the skip folded into the readout."""
        return self._run(x, state, mode, lengths, self.system(), residual_scale)

    def forward_and_gain_bound(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        residual_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(y, final state, gain_bound()) from one computation of the parametrization."""
        system, bound = self.system_and_gain_bound()
        return (*self._run(x, state, mode, lengths, system, residual_scale), bound)

    def _run(
        self,
        x: Tensor,
        state: Tensor | None,
        mode: str,
        lengths: Tensor | None,
        system: tuple[Tensor, ...],
        residual_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        check_input(x, self.d_model)
        check_mode(mode, self.modes, type(self).__name__)
        if state is not None and state.shape != (x.shape[0], self.state_size):
            expected, name = (x.shape[0], self.state_size), type(self).__name__
            raise ValueError(f"{name} initial state must be (B, N) = {expected}, got {tuple(state.shape)}")
        x = zero_padding(x, lengths)
        eigenvalues, B, C, D = system
        drive = complex_drive(x, B)
        if mode == "conv":
            states = diagonal_recurrence_conv(eigenvalues, drive, state)
        else:
            states = linear_recurrence(eigenvalues, drive, state, mode=mode)
        return self._readout(x, states, state, C, D, residual_scale), state_at_lengths(states, lengths, checked=True)

    def _readout(
        self, x: Tensor, states: Tensor, h0: Tensor | None, C: Tensor, D: Tensor, residual_scale: Tensor | None
    ) -> Tensor:
        """y_t = Re(C r_t) + D x_t, or x_t + s y_t for residual_scale s, as two products and no other
        full-size pass: s goes into C and D (I + s D, or 1 + s D when diagonal), the readout GEMM adds
        onto the direct term (addmm), and the previous-state readout (r_t = h_{t-1}) adds Re(C h_t) to
        step t + 1 in place (``_AddPreviousStep``) instead of copying the states shifted by one step."""
        if residual_scale is not None:
            C, D = fold_residual(C, D, residual_scale)
        direct = self._direct(D, x)
        if not self.readout_from_previous_state:
            return real_readout(states, C, skip=direct)
        first = None if h0 is None else real_readout(h0, C)
        return _AddPreviousStep.apply(direct, real_readout(states, C), first)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: x_t: (B, H), state: (B, N) -> (y_t: (B, H), next state)."""
        y, state = self.forward(x_t.unsqueeze(1), state, mode="loop")
        return y[:, 0], state

    def frequency_response(self, omega: Tensor) -> Tensor:
        """Transfer matrix G(e^{i omega}) of the real map x -> y: omega (F,) -> (F, H, H) complex.

        The impulse response is K_s = Re(C diag(lambda^s) B) (delayed by one step for the
        previous-state readout) plus D at s = 0, so
        G = 1/2 [C diag(1 / (1 - lambda z^-1)) B + conj(C) diag(1 / (1 - conj(lambda) z^-1)) conj(B)] + D,
        z = e^{i omega}. Its largest singular value over omega is the H-infinity norm (the exact gain).
        """
        eigenvalues, B, C, D = self.system()
        z_inv = torch.exp(-1j * omega.to(B.real.dtype)).unsqueeze(1)  # (F, 1)
        direct = torch.diag(D) if D.dim() == 1 else D
        resolvent = 1 / (1 - eigenvalues * z_inv)
        resolvent_conj = 1 / (1 - eigenvalues.conj() * z_inv)
        response = 0.5 * (
            torch.einsum("hn,fn,nk->fhk", C, resolvent, B)
            + torch.einsum("hn,fn,nk->fhk", C.conj(), resolvent_conj, B.conj())
        )
        if self.readout_from_previous_state:
            response = response * z_inv.unsqueeze(-1)
        return response + direct.to(response.dtype)


class LRU(DiagonalLTICore):
    """x: (B, L, d_model) -> y: (B, L, d_model), state: (B, d_state) complex."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state)
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if not 0 < max_phase < math.inf:
            raise ValueError(f"max_phase must be positive and finite, got {max_phase}")
        self.d_model, self.d_state = d_model, d_state
        self.state_size = d_state
        u1, u2 = torch.rand(d_state), torch.rand(d_state)
        radius_sq = u1 * (r_max**2 - r_min**2) + r_min**2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(radius_sq.clamp_min(1e-12))))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2.clamp_min(1e-6)))
        modulus = torch.exp(-torch.exp(self.nu_log.detach()))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - modulus**2)))
        mark_recurrence(self.nu_log, self.theta_log, self.gamma_log)
        self.B_re = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.B_im = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.C_re = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.C_im = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.D = nn.Parameter(torch.randn(d_model))

    def eigenvalues(self) -> Tensor:
        """lambda: (d_state,) complex, |lambda| < 1."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    @cached_without_grad
    def system(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log).unsqueeze(-1)
        return self.eigenvalues(), B, torch.complex(self.C_re, self.C_im), self.D

    @cached_without_grad
    def gain_bound(self) -> Tensor:
        """Upper bound of the zero-state L2 gain (H-infinity norm), valid for every parameter value.

        ||Re w|| <= ||w|| for the complex output w = C h, whose transfer function is
        C diag(g(z)) B with |g_n(z)| <= 1 / (1 - |lambda_n|) on the unit circle; hence
        gain <= min(||C|| ||B|| max_n 1/(1-|lambda_n|), sum_n ||c_n|| ||b_n|| / (1-|lambda_n|)) + max |D|.
        Loose when |lambda| is near 1: the LRU has no gain parameter, unlike l2n and tv.
        """
        eigenvalues, B, C, D = self.system()
        peak = 1 / (1 - eigenvalues.abs().double())
        dense = spectral_norm_bound(C).double() * spectral_norm_bound(B).double() * peak.max()
        column_norms = torch.linalg.vector_norm(C.to(torch.complex128), dim=0)
        row_norms = torch.linalg.vector_norm(B.to(torch.complex128), dim=1)
        rank_one = (column_norms * row_norms * peak).sum()
        bound = torch.minimum(dense, rank_one) + D.abs().double().max()
        return bound.to(D.dtype)
