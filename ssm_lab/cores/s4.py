"""S4: the structured state space sequence model of Gu, Goel & Re 2022, "Efficiently Modeling
Long Sequences with Structured State Spaces" (ICLR), in pure PyTorch (no pykeops, no CUDA build).

H independent SISO systems with a complex state of size N and a diagonal-plus-low-rank matrix
A = diag(Lambda) - p p^* (HiPPO-LegS in its DPLR form at init), bilinear discretisation:

    Abar = (I - dt/2 A)^{-1} (I + dt/2 A),  Bbar = (I - dt/2 A)^{-1} dt B,
    h_t = Abar h_{t-1} + Bbar x_t,          y_t = Re(C h_t) + D x_t

Mode "conv" computes the length-L kernel K_k = Re(C Abar^k Bbar) from its generating function at
the L-th roots of unity w (their Algorithm 1), O(L N) per channel:

    sum_{k<L} C Abar^k Bbar w^k = Ctilde dt ((1 - w) I - dt/2 (1 + w) A)^{-1} B,  Ctilde = C (I - Abar^L)

where the inverse of the diagonal-plus-rank-one matrix is a Woodbury identity over Cauchy sums
sum_n v_n / ((1 - w) - dt/2 (1 + w) Lambda_n) (this form has no pole at w = -1, unlike the
paper's 2/(1+w) factorisation), followed by an inverse FFT. The same resolvent gives the free
response of an initial state and the final state, so chunked calls match whole ones.
Mode "loop" is the dense recurrence, the reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode
from ssm_lab.cores.s4d import log_uniform_steps, right_align
from ssm_lab.cores.stepping import step_through
from ssm_lab.ops.fft_conv import causal_conv
from ssm_lab.ops.hippo import legs_dplr
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive


def _complex_pair(value: Tensor, d_model: int) -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(value.real.float().repeat(d_model, 1)), nn.Parameter(value.imag.float().repeat(d_model, 1))


class S4(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (B, d_model, d_state) complex."""

    modes = ("conv", "loop")

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        check_positive(d_state=d_state)
        self.d_model, self.d_state = d_model, d_state
        eigenvalues, p, b, _ = legs_dplr(d_state)
        self.log_neg_real = nn.Parameter(torch.log(-eigenvalues.real).float().repeat(d_model, 1))
        self.imag = nn.Parameter(eigenvalues.imag.float().repeat(d_model, 1))
        self.P_re, self.P_im = _complex_pair(p, d_model)
        self.log_dt = nn.Parameter(log_uniform_steps(d_model, dt_min, dt_max))
        mark_recurrence(self.log_neg_real, self.imag, self.P_re, self.P_im, self.log_dt)
        self.B_re, self.B_im = _complex_pair(b, d_model)
        self.C_re = nn.Parameter(torch.randn(d_model, d_state) * math.sqrt(0.5))
        self.C_im = nn.Parameter(torch.randn(d_model, d_state) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(d_model))

    def _continuous(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(Lambda, p, B, C): (H, N) complex each, and dt: (H, 1)."""
        eigenvalues = torch.complex(-torch.exp(self.log_neg_real), self.imag)
        P, B, C = (
            torch.complex(re, im) for re, im in ((self.P_re, self.P_im), (self.B_re, self.B_im), (self.C_re, self.C_im))
        )
        return eigenvalues, P, B, C, torch.exp(self.log_dt).unsqueeze(-1)

    def _dense_state_matrix(self, eigenvalues: Tensor, P: Tensor) -> Tensor:
        return torch.diag_embed(eigenvalues) - P.unsqueeze(-1) * P.conj().unsqueeze(-2)

    def discrete(self) -> tuple[Tensor, Tensor]:
        """(Abar: (H, N, N), Bbar: (H, N)), bilinear."""
        eigenvalues, P, B, _, dt = self._continuous()
        A = self._dense_state_matrix(eigenvalues, P)
        eye = torch.eye(self.d_state, dtype=A.dtype, device=A.device)
        half_step = (dt / 2).unsqueeze(-1)
        left = eye - half_step * A
        return torch.linalg.solve(left, eye + half_step * A), torch.linalg.solve(left, dt * B)

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        dtype = torch.complex(self.C_re[:0], self.C_im[:0]).dtype
        return torch.zeros(batch, self.d_model, self.d_state, dtype=dtype, device=device or self.D.device)

    def forward(
        self, x: Tensor, state: Tensor | None = None, mode: str = "conv", lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, d_model, d_state) or None -> (y, final state at ``lengths``)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "S4")
        if mode == "loop":
            return step_through(
                self.step, x, self.default_state(x.shape[0], x.device) if state is None else state, lengths
            )
        return self._convolve(x, state, lengths)

    def _convolve(self, x: Tensor, state: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, length, _ = x.shape
        eigenvalues, P, B, C, dt = self._continuous()
        decay, _ = self.discrete()
        decay_to_end = torch.linalg.matrix_power(decay, length)
        C_tilde = C - torch.einsum("hn,hnm->hm", C, decay_to_end)
        angles = 2 * math.pi * torch.arange(length, device=x.device, dtype=self.log_dt.dtype) / length
        roots = torch.polar(torch.ones_like(angles), -angles)  # the L-th roots of unity
        alpha, beta = 1 - roots, (dt / 2) * (1 + roots)  # (L,), (H, L)
        inverse_poles = 1 / (alpha.unsqueeze(-1) - beta.unsqueeze(-1) * eigenvalues.unsqueeze(1))  # (H, L, N)

        def resolvent_sums(left: Tensor, right: Tensor) -> Tensor:
            """sum_n left_n right_n / (alpha - beta Lambda_n) over the nodes: (..., H, N) x2 -> (..., H, L)."""
            return torch.einsum("...hn,hln->...hl", left * right, inverse_poles)

        rank_one = 1 + beta * resolvent_sums(P.conj(), P)
        C_p = resolvent_sums(C_tilde, P)

        def woodbury(vector: Tensor) -> Tensor:
            """C_tilde ((1 - w) I - beta A)^{-1} vector at every node: (..., H, N) -> (..., H, L)."""
            return resolvent_sums(C_tilde, vector) - beta * C_p * resolvent_sums(P.conj(), vector) / rank_one

        kernel = torch.fft.ifft(dt * woodbury(B), dim=-1).real.transpose(0, 1)  # (L, H)
        y = causal_conv(x, kernel.to(x.dtype)) + self.D * x
        # Abar^k Bbar for k < L is (I - Abar^L) times the inverse DFT of G(w) = dt ((1-w) I - beta A)^{-1} B
        resolvent_B = dt.unsqueeze(-1) * (
            B.unsqueeze(1) * inverse_poles
            - beta.unsqueeze(-1)
            * (P.unsqueeze(1) * inverse_poles)
            * (resolvent_sums(P.conj(), B) / rank_one).unsqueeze(-1)
        )  # (H, L, N)
        impulse = torch.fft.ifft(resolvent_B, dim=1)  # (H, k, N)
        aligned = right_align(x, lengths).to(impulse.dtype)
        summed = torch.einsum("blh,hln->bhn", aligned, impulse.flip(1))
        final = summed - torch.einsum("hnm,bhm->bhn", decay_to_end, summed)
        if state is not None:
            y = y + self._free_response(state, eigenvalues, P, dt, woodbury)
            final = final + self._decayed(state, decay, decay_to_end, lengths, length)
        return y, final

    def _free_response(self, state: Tensor, eigenvalues: Tensor, P: Tensor, dt: Tensor, woodbury) -> Tensor:
        """Re(C Abar^{t+1} h0) for t < L: the generating function is C_tilde (...)^{-1} (I + dt/2 A) h0."""
        pushed = state + (dt / 2) * (eigenvalues * state - P * (P.conj() * state).sum(-1, keepdim=True))
        return torch.fft.ifft(woodbury(pushed), dim=-1).real.transpose(1, 2)  # (B, L, H)

    @staticmethod
    def _decayed(state: Tensor, decay: Tensor, decay_to_end: Tensor, lengths: Tensor | None, length: int) -> Tensor:
        """Abar^len h0 for each sequence's own length."""
        if lengths is None:
            return torch.einsum("hnm,bhm->bhn", decay_to_end, state)
        out = torch.empty_like(state)
        for steps in torch.unique(lengths).tolist():
            rows = lengths.to(state.device) == steps
            power = decay_to_end if steps == length else torch.linalg.matrix_power(decay, steps)
            out[rows] = torch.einsum("hnm,bhm->bhn", power, state[rows])
        return out

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x_t: (B, d_model), state: (B, d_model, d_state) -> (y_t, next state)."""
        decay, input_map = self.discrete()
        state = torch.einsum("hnm,bhm->bhn", decay, state) + x_t.unsqueeze(-1) * input_map
        C = torch.complex(self.C_re, self.C_im)
        return (state * C).sum(-1).real + self.D * x_t, state
