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
        """(Abar: (H, N, N), Bbar: (H, N)), bilinear, by dense solves: the reference."""
        eigenvalues, P, B, _, dt = self._continuous()
        A = self._dense_state_matrix(eigenvalues, P)
        eye = torch.eye(self.d_state, dtype=A.dtype, device=A.device)
        half_step = (dt / 2).unsqueeze(-1)
        left = eye - half_step * A
        return torch.linalg.solve(left, eye + half_step * A), torch.linalg.solve(left, dt * B)

    def discrete_dplr(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The bilinear discretisation in closed form, O(N) per channel: (Lambdabar, u, q, Bbar), each (H, N),
        with Abar = diag(Lambdabar) - u q^T (no conjugate) and Bbar as in ``discrete``.

        With d = dt/2, a = 1 - d Lambda, b = 1 + d Lambda and A = diag(Lambda) - p p^*, Woodbury gives
        (I - d A)^{-1} = diag(1/a) - kappa (p/a)(p^*/a), kappa = d / (1 + d sum_n |p_n|^2 / a_n), and then
        Abar = diag(b/a) - 2 kappa (p/a)(p^*/a),  Bbar = dt (B/a - kappa (p/a) sum_n conj(p_n) B_n / a_n).
        """
        eigenvalues, P, B, _, dt = self._continuous()
        half_step = dt / 2
        a, b = 1 - half_step * eigenvalues, 1 + half_step * eigenvalues
        u, q = P / a, P.conj() / a
        kappa = half_step / (1 + half_step * (q * P).sum(-1, keepdim=True))
        input_map = dt * (B / a - kappa * u * (q * B).sum(-1, keepdim=True))
        return b / a, 2 * kappa * u, q, input_map

    def dense_decay(self) -> Tensor:
        """Abar: (H, N, N) from the closed form of ``discrete_dplr`` (no solve)."""
        decay_diagonal, u, q, _ = self.discrete_dplr()
        return torch.diag_embed(decay_diagonal) - u.unsqueeze(-1) * q.unsqueeze(-2)

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

    def kernel_ref(self, length: int) -> Tensor:
        """K_k = Re(C Abar^k Bbar), k < length, by explicit dense powers: (length, H), the reference twin."""
        decay, state = self.discrete()
        C = torch.complex(self.C_re, self.C_im)
        values = []
        for _ in range(length):
            values.append((C * state).sum(-1).real)
            state = torch.einsum("hnm,hm->hn", decay, state)
        return torch.stack(values)

    def kernel(self, length: int) -> Tensor:
        """K_k = Re(C Abar^k Bbar), k < length: (length, H), by Algorithm 1 (Cauchy sums + inverse FFT)."""
        return self._spectrum(length, self.dense_decay())[0]

    def _spectrum(self, length: int, decay: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Algorithm 1 of Gu et al. 2022 at the L-th roots of unity w.

        Returns (kernel (L, H), Abar^L (H, N, N), inverse poles 1 / ((1 - w) - beta Lambda_n) (H, L, N),
        beta = dt/2 (1 + w) (H, L), and c = beta k10 / (1 + beta k11) (H, L), reused for the final state).
        """
        eigenvalues, P, B, C, dt = self._continuous()
        decay_to_end = torch.linalg.matrix_power(decay, length)
        C_tilde = C - torch.einsum("hn,hnm->hm", C, decay_to_end)  # truncation to length L
        angles = 2 * math.pi * torch.arange(length, device=dt.device, dtype=self.log_dt.dtype) / length
        roots = torch.polar(torch.ones_like(angles), -angles)  # the L-th roots of unity
        beta = (dt / 2) * (1 + roots)  # (H, L)
        # 1 / (alpha - beta Lambda_n) with alpha = 1 - w, one fused pass then one reciprocal
        inverse_poles = torch.reciprocal(
            torch.addcmul((1 - roots).unsqueeze(-1), beta.unsqueeze(-1), eigenvalues.unsqueeze(1), value=-1)
        )
        # the four Cauchy sums k_xy = sum_n x_n y_n / (alpha - beta Lambda_n) as one batched product
        numerators = torch.stack([C_tilde * B, C_tilde * P, P.conj() * B, P.conj() * P], dim=-1)  # (H, N, 4)
        k00, k01, k10, k11 = (inverse_poles @ numerators).unbind(-1)
        correction = beta * k10 / (1 + beta * k11)
        spectrum = dt * (k00 - k01 * correction)  # Woodbury: C_tilde ((1 - w) I - beta A)^{-1} dt B
        kernel = torch.fft.ifft(spectrum, dim=-1).real.transpose(0, 1)
        return kernel, decay_to_end, inverse_poles, beta, correction

    def _convolve(self, x: Tensor, state: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        length = x.shape[1]
        eigenvalues, P, B, C, dt = self._continuous()
        decay = self.dense_decay()
        kernel, decay_to_end, inverse_poles, beta, correction = self._spectrum(length, decay)
        y = causal_conv(x, kernel.to(x.dtype)) + self.D * x
        # The state after the sequence, sum_k Abar^k Bbar x_{L-1-k}, is (I - Abar^L) times the inverse DFT
        # of G(w) = dt ((1-w) I - beta A)^{-1} B paired with the reversed input; by Parseval the pairing
        # is sum_j G(w_j) X_j, X = ifft(reversed input), G(w_j)_n = dt (B_n - p_n c_j) / (alpha_j - beta_j Lambda_n).
        reversed_input = torch.fft.ifft(right_align(x, lengths).flip(1).to(inverse_poles.dtype), dim=1)
        reversed_input = reversed_input.permute(2, 0, 1)  # (H, B, L)
        paired = torch.cat([reversed_input, reversed_input * correction.unsqueeze(1)], dim=1) @ inverse_poles
        from_input, from_rank_one = paired.split(x.shape[0], dim=1)  # (H, B, N) each
        summed = (dt.unsqueeze(-1) * (B.unsqueeze(1) * from_input - P.unsqueeze(1) * from_rank_one)).transpose(0, 1)
        final = summed - torch.einsum("hnm,bhm->bhn", decay_to_end, summed)
        if state is not None:
            C_tilde = C - torch.einsum("hn,hnm->hm", C, decay_to_end)

            def resolvent_sums(left: Tensor, right: Tensor) -> Tensor:
                """sum_n left_n right_n / (alpha - beta Lambda_n): (..., H, N) x2 -> (..., H, L)."""
                return torch.einsum("...hn,hln->...hl", left * right, inverse_poles)

            rank_one = 1 + beta * resolvent_sums(P.conj(), P)
            C_p = resolvent_sums(C_tilde, P)

            def woodbury(vector: Tensor) -> Tensor:
                """C_tilde ((1 - w) I - beta A)^{-1} vector at every node: (..., H, N) -> (..., H, L)."""
                return resolvent_sums(C_tilde, vector) - beta * C_p * resolvent_sums(P.conj(), vector) / rank_one

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
