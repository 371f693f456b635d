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


# Poles per block on CPU (complex entries, 8 MB in complex64): fewer ops than per-head blocks, and a buffer
# below glibc's 32 MB mmap ceiling is reused rather than faulted in afresh on every call.
_CPU_BLOCK_ENTRIES = 1 << 20


def _pole_blocks(eigenvalues: Tensor, alpha: Tensor, beta: Tensor):
    """Yield (heads, 1 / (alpha_l - beta_hl Lambda_hn) for those heads: (h, L, N)), the whole (H, L, N) at once on
    GPUs (which want few large kernels), blocks of heads on CPU (a fresh (H, L, N) buffer and every extra pass over
    it cost more than the arithmetic)."""
    heads, states = eigenvalues.shape
    step = heads if eigenvalues.device.type != "cpu" else max(1, _CPU_BLOCK_ENTRIES // (alpha.shape[0] * states))
    for start in range(0, heads, step):
        block = slice(start, start + step)
        poles = torch.addcmul(alpha.unsqueeze(-1), beta[block].unsqueeze(-1), eigenvalues[block].unsqueeze(1), value=-1)
        yield block, poles.reciprocal_()


class _CauchySums(torch.autograd.Function):
    """``cauchy_sums`` with a hand-written backward that recomputes the poles instead of storing them.

    With R = 1 / (alpha - beta Lambda), dR/dLambda = beta R^2 and dR/dbeta = Lambda R^2. In PyTorch's convention
    (grad z = conj(df/dz) grad f), with G = g_RV V^H + X^H g_XR the gradient R would get (H, L, N):
    grad V = R^H g_RV,  grad X = g_XR R^H,  grad Lambda_n = sum_l conj(beta_l R_ln^2) G_ln,
    grad beta_l = sum_n conj(Lambda_n R_ln^2) G_ln. G is never formed: its thin factors are contracted with R^2
    first, so each gradient is one product of R or R^2 with a (K + M)-column matrix.
    """

    @staticmethod
    def forward(ctx, eigenvalues, alpha, beta, numerators, weights):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(eigenvalues, alpha, beta, numerators, weights)
        over_states, over_nodes = [], []
        for block, poles in _pole_blocks(eigenvalues, alpha, beta):
            if numerators is not None:
                over_states.append(poles @ numerators[block])
            if weights is not None:
                over_nodes.append(weights[block] @ poles)
        return (torch.cat(over_states) if over_states else None, torch.cat(over_nodes) if over_nodes else None)

    @staticmethod
    def backward(ctx, grad_states, grad_nodes):
        eigenvalues, alpha, beta, numerators, weights = ctx.saved_tensors
        if grad_states is None and grad_nodes is None:
            return None, None, None, None, None
        need_eigenvalues, _, need_beta, need_numerators, need_weights = ctx.needs_input_grad
        grads = {
            name: torch.zeros_like(value) if needed else None
            for name, value, needed in (
                ("eigenvalues", eigenvalues, need_eigenvalues),
                ("beta", beta, need_beta),
                ("numerators", numerators, need_numerators and grad_states is not None),
                ("weights", weights, need_weights and grad_nodes is not None),
            )
        }
        for block, poles in _pole_blocks(eigenvalues, alpha, beta):
            lam, step = eigenvalues[block].unsqueeze(-1), beta[block].unsqueeze(-1)  # (h, N, 1), (h, L, 1)
            g_states = None if grad_states is None else grad_states[block].conj()  # conj(g): (h, L, K)
            g_nodes = None if grad_nodes is None else grad_nodes[block].conj().mT  # conj(g)^T: (h, N, M)
            if grads["numerators"] is not None:
                grads["numerators"][block] = (poles.mT @ g_states).conj()
            if grads["weights"] is not None:
                grads["weights"][block] = (poles @ g_nodes).conj().mT
            if not (need_eigenvalues or need_beta):
                continue
            squared = poles.square_()
            # the thin factors of G: contracted with R^2 over l (for Lambda) and over n (for beta)
            by_node, by_state, pair_lam, pair_beta = [], [], [], []
            if g_states is not None:
                V = numerators[block]
                by_node.append(step * g_states)  # beta_l conj(g_lk)
                by_state.append(lam * V)  # Lambda_n V_nk
                pair_lam.append(V)
                pair_beta.append(g_states)
            if g_nodes is not None:
                X = weights[block]
                by_node.append((X * step.mT).mT)  # beta_l X_ml
                by_state.append(lam * g_nodes)  # Lambda_n conj(g_mn)
                pair_lam.append(g_nodes)
                pair_beta.append(X.mT)
            if need_eigenvalues:
                summed = squared.mT @ torch.cat(by_node, dim=-1)  # (h, N, K + M)
                grads["eigenvalues"][block] = (summed * torch.cat(pair_lam, dim=-1)).sum(-1).conj()
            if need_beta:
                summed = squared @ torch.cat(by_state, dim=-1)  # (h, L, K + M)
                grads["beta"][block] = (summed * torch.cat(pair_beta, dim=-1)).sum(-1).conj()
        return grads["eigenvalues"], None, grads["beta"], grads["numerators"], grads["weights"]


def cauchy_sums(
    eigenvalues: Tensor, alpha: Tensor, beta: Tensor, numerators: Tensor | None = None, weights: Tensor | None = None
) -> tuple[Tensor | None, Tensor | None]:
    """Sums over the Cauchy-like matrix R_hln = 1 / (alpha_l - beta_hl Lambda_hn), never storing it:
    (R V: sum_n V_hnk R_hln (H, L, K) or None, X R: sum_l X_hml R_hln (H, M, N) or None).

    eigenvalues Lambda: (H, N), nodes alpha: (L,) (a constant), beta: (H, L), numerators V: (H, N, K) or None,
    weights X: (H, M, L) or None; all complex. The Cauchy kernel of S4 (Gu et al. 2022, their Algorithm 1).
    """
    if alpha.requires_grad:
        raise ValueError("cauchy_sums takes the nodes alpha as constants; got alpha with requires_grad=True")
    return _CauchySums.apply(eigenvalues, alpha, beta, numerators, weights)


def cauchy_sums_ref(
    eigenvalues: Tensor, alpha: Tensor, beta: Tensor, numerators: Tensor | None = None, weights: Tensor | None = None
) -> tuple[Tensor | None, Tensor | None]:
    """``cauchy_sums`` by building R and letting autograd differentiate it, the reference twin."""
    poles = 1 / (alpha.unsqueeze(-1) - beta.unsqueeze(-1) * eigenvalues.unsqueeze(1))
    return (None if numerators is None else poles @ numerators, None if weights is None else weights @ poles)


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
        return self._spectrum(length, torch.linalg.matrix_power(self.dense_decay(), length))[0]

    def _spectrum(
        self, length: int, decay_to_end: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """Algorithm 1 of Gu et al. 2022 at the L-th roots of unity w; with an initial state h0 also its free
        response Re(C Abar^{t+1} h0), t < L, with generating function C_tilde ((1-w) I - beta A)^{-1} (I + dt/2 A) h0.

        decay_to_end: Abar^L (H, N, N), state: (B, H, N) or None. Returns (kernel (L, H), free response (B, L, H)
        or None, nodes alpha = 1 - w (L,) and beta = dt/2 (1 + w) (H, L), c = beta k10 / (1 + beta k11) (H, L)).
        """
        eigenvalues, P, B, C, dt = self._continuous()
        angles = 2 * math.pi * torch.arange(length, device=dt.device, dtype=dt.dtype) / length
        roots = torch.polar(torch.ones_like(angles), -angles)  # the L-th roots of unity
        alpha, beta = 1 - roots, (dt / 2) * (1 + roots)
        C_tilde = C - torch.einsum("hn,hnm->hm", C, decay_to_end)  # truncation to length L
        # the four Cauchy sums k_xy = sum_n x_n y_n / (alpha - beta Lambda_n), two more per initial state, one pass
        numerators = [torch.stack([C_tilde * B, C_tilde * P, P.conj() * B, P.conj() * P], dim=-1)]  # (H, N, 4)
        if state is not None:
            pushed = state + (dt / 2) * (eigenvalues * state - P * (P.conj() * state).sum(-1, keepdim=True))
            numerators += [(C_tilde * pushed).permute(1, 2, 0), (P.conj() * pushed).permute(1, 2, 0)]
        sums, _ = cauchy_sums(eigenvalues, alpha, beta, numerators=torch.cat(numerators, dim=-1))
        k00, k01, k10, k11 = sums[..., :4].unbind(-1)
        rank_one = 1 + beta * k11
        correction = beta * k10 / rank_one
        spectrum = dt * (k00 - k01 * correction)  # Woodbury: C_tilde ((1 - w) I - beta A)^{-1} dt B
        kernel = torch.fft.ifft(spectrum, dim=-1).real.transpose(0, 1)
        if state is None:
            return kernel, None, alpha, beta, correction
        from_output, from_rank_one = sums[..., 4:].split(state.shape[0], dim=-1)  # (H, L, B) each
        free_spectrum = from_output - (beta * k01 / rank_one).unsqueeze(-1) * from_rank_one  # Woodbury again
        return kernel, torch.fft.ifft(free_spectrum, dim=1).real.permute(2, 1, 0), alpha, beta, correction

    def _convolve(self, x: Tensor, state: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        length = x.shape[1]
        eigenvalues, P, B, _, dt = self._continuous()
        decay = self.dense_decay()
        decay_to_end = torch.linalg.matrix_power(decay, length)
        kernel, free_response, alpha, beta, correction = self._spectrum(length, decay_to_end, state)
        y = causal_conv(x, kernel.to(x.dtype)) + self.D * x
        # The state after the sequence, sum_k Abar^k Bbar x_{L-1-k}, is (I - Abar^L) times the inverse DFT
        # of G(w) = dt ((1-w) I - beta A)^{-1} B paired with the reversed input; by Parseval the pairing
        # is sum_j G(w_j) X_j, X = ifft(reversed input), G(w_j)_n = dt (B_n - p_n c_j) / (alpha_j - beta_j Lambda_n).
        reversed_input = torch.fft.ifft(right_align(x, lengths).flip(1).to(eigenvalues.dtype), dim=1)
        reversed_input = reversed_input.permute(2, 0, 1)  # (H, B, L)
        weights = torch.cat([reversed_input, reversed_input * correction.unsqueeze(1)], dim=1)
        _, paired = cauchy_sums(eigenvalues, alpha, beta, weights=weights)
        from_input, from_rank_one = paired.split(x.shape[0], dim=1)  # (H, B, N) each
        summed = (dt.unsqueeze(-1) * (B.unsqueeze(1) * from_input - P.unsqueeze(1) * from_rank_one)).transpose(0, 1)
        final = summed - torch.einsum("hnm,bhm->bhn", decay_to_end, summed)
        if state is not None:
            y = y + free_response
            final = final + self._decayed(state, decay, decay_to_end, lengths, length)
        return y, final

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
