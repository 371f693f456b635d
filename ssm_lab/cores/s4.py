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
response of an initial state, and the final state sum_k Abar^k Bbar x_{L-1-k} is summed in the time
domain over chunks of T steps (the state kernel Abar^k Bbar, k < T, then Horner's rule in Abar^T),
so chunked calls match whole ones. Powers of Abar keep its diagonal-plus-low-rank form while that
is cheaper (``DecayPowers``). Mode "loop" is the dense recurrence, the reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, check_state, zero_padding
from ssm_lab.cores.s4d import log_uniform_steps, right_align
from ssm_lab.cores.stepping import step_through
from ssm_lab.ops.fft_conv import causal_conv
from ssm_lab.ops.hippo import legs_dplr
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive


def _complex_pair(value: Tensor, d_model: int) -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(value.real.float().repeat(d_model, 1)), nn.Parameter(value.imag.float().repeat(d_model, 1))


# Poles per block on CPU (complex entries, 8 MB in complex64): fewer ops than per-head blocks, and one buffer per call
# below glibc's 32 MB mmap ceiling, reused by every block, rather than a fresh one faulted in per block.
_CPU_BLOCK_ENTRIES = 1 << 20


def _pole_blocks(eigenvalues: Tensor, alpha: Tensor, beta: Tensor):
    """Yield (heads, 1 / (alpha_l - beta_hl Lambda_hn) for those heads: (h, L, N)), the whole (H, L, N) at once on
    GPUs (which want few large kernels), blocks of heads in one reused buffer on CPU (a fresh (H, L, N) buffer and
    every extra pass over it cost more than the arithmetic). A block is overwritten by the next one."""
    heads, states = eigenvalues.shape
    step = heads if eigenvalues.device.type != "cpu" else max(1, _CPU_BLOCK_ENTRIES // (alpha.shape[0] * states))
    buffer = torch.empty(min(step, heads), alpha.shape[0], states, dtype=eigenvalues.dtype, device=eigenvalues.device)
    for start in range(0, heads, step):
        block = slice(start, start + step)
        poles = buffer[: min(step, heads - start)]
        # a product then a difference: two vectorised passes, faster than complex addcmul's one
        torch.mul(beta[block].unsqueeze(-1), eigenvalues[block].unsqueeze(1), out=poles)
        torch.sub(alpha.unsqueeze(-1), poles, out=poles)
        yield block, poles.reciprocal_()


class _CauchySums(torch.autograd.Function):
    """``cauchy_sums`` with a hand-written backward that recomputes the poles instead of storing them.

    With R = 1 / (alpha - beta Lambda), dR/dLambda = beta R^2 and dR/dbeta = Lambda R^2. In PyTorch's convention
    (grad z = conj(df/dz) grad f), with G = g V^H the gradient R would get (H, L, N): grad V = R^H g,
    grad Lambda_n = sum_l conj(beta_l R_ln^2) G_ln, grad beta_l = sum_n conj(Lambda_n R_ln^2) G_ln. G is never formed:
    its thin factors are contracted with R^2 first, so each gradient is one product of R or R^2 with K columns.
    """

    @staticmethod
    def forward(ctx, eigenvalues, alpha, beta, numerators):
        ctx.save_for_backward(eigenvalues, alpha, beta, numerators)
        return torch.cat([poles @ numerators[block] for block, poles in _pole_blocks(eigenvalues, alpha, beta)])

    @staticmethod
    def backward(ctx, grad):
        eigenvalues, alpha, beta, numerators = ctx.saved_tensors
        need_eigenvalues, _, need_beta, need_numerators = ctx.needs_input_grad
        grad_eigenvalues, grad_beta, grad_numerators = (
            torch.zeros_like(value) if needed else None
            for value, needed in ((eigenvalues, need_eigenvalues), (beta, need_beta), (numerators, need_numerators))
        )
        for block, poles in _pole_blocks(eigenvalues, alpha, beta):
            g = grad[block].conj()  # conj(g): (h, L, K)
            V = numerators[block]
            if need_numerators:
                grad_numerators[block] = (poles.mT @ g).conj()
            if not (need_eigenvalues or need_beta):
                continue
            squared = poles.square_()
            if need_eigenvalues:  # contract R^2 over l with beta_l conj(g_lk), then pair with V_nk
                summed = squared.mT @ (beta[block].unsqueeze(-1) * g)
                grad_eigenvalues[block] = (summed * V).sum(-1).conj()
            if need_beta:  # contract R^2 over n with Lambda_n V_nk, then pair with conj(g_lk)
                summed = squared @ (eigenvalues[block].unsqueeze(-1) * V)
                grad_beta[block] = (summed * g).sum(-1).conj()
        return grad_eigenvalues, None, grad_beta, grad_numerators


def cauchy_sums(eigenvalues: Tensor, alpha: Tensor, beta: Tensor, numerators: Tensor) -> Tensor:
    """sum_n V_hnk R_hln with R_hln = 1 / (alpha_l - beta_hl Lambda_hn), never storing R: (H, L, K).

    eigenvalues Lambda: (H, N), nodes alpha: (L,) (a constant), beta: (H, L), numerators V: (H, N, K); all complex.
    The Cauchy kernel of S4 (Gu et al. 2022, their Algorithm 1).
    """
    if alpha.requires_grad:
        raise ValueError("cauchy_sums takes the nodes alpha as constants; got alpha with requires_grad=True")
    return _CauchySums.apply(eigenvalues, alpha, beta, numerators)


def cauchy_sums_ref(eigenvalues: Tensor, alpha: Tensor, beta: Tensor, numerators: Tensor) -> Tensor:
    """``cauchy_sums`` by building R and letting autograd differentiate it, the reference twin."""
    return (1 / (alpha.unsqueeze(-1) - beta.unsqueeze(-1) * eigenvalues.unsqueeze(1))) @ numerators


class _RowSteps(torch.autograd.Function):
    """rows @ M^steps by ``steps`` products, with the gradient of M as one product instead of ``steps`` outer products
    and sums: grad M = sum_i (rows M^i)^H g_(i+1) = [rows M^i]_i^H [g_(i+1)]_i, g_i the gradient of rows M^i, which
    the backward steps down by g_i = g_(i+1) M^H."""

    @staticmethod
    def forward(ctx, rows: Tensor, matrix: Tensor, steps: int) -> Tensor:
        visited = [rows]
        for _ in range(steps):
            visited.append(visited[-1] @ matrix)
        ctx.save_for_backward(matrix, torch.cat(visited[:-1], dim=-2))
        return visited[-1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        matrix, visited = ctx.saved_tensors
        adjoint = matrix.mH.resolve_conj()  # once: a lazily conjugated operand is copied by every product
        grads = [grad]  # g_steps, g_(steps-1), ..., g_1
        while len(grads) < visited.shape[-2] // grad.shape[-2]:
            grads.append(grads[-1] @ adjoint)
        return grads[-1] @ adjoint, visited.mH @ torch.cat(grads[::-1], dim=-2), None


# The row C Abar^L takes at most this many products with one dense power of Abar: its gradient then costs
# matrix-vector products, where differentiating repeated squaring costs two matrix-matrix products per squaring.
_MAX_ROW_STEPS = 32


class DecayPowers:
    """Products of row vectors with powers of Abar = diag(lambda) - u q^T (lambda, u, q: (H, N); q^T unconjugated),
    never forming Abar^L. A^(2^j) keeps the form diag(lambda^(2^j)) - U_j V_j^T of rank 2^j,

        A^(2m) = diag(lambda^(2m)) - [lambda^m U, U] [V, lambda^m V - V M^T]^T,  M = V^T U,

    while the rank is at most N / 2 (a product then costs N r per vector and doubling is cheap); from there on dense
    powers A^block, A^(2 block), ... by squaring, each made on first use. The reference twin is
    torch.linalg.matrix_power of ``S4.dense_decay`` (the tests compare values and gradients).
    """

    def __init__(self, diagonal: Tensor, u: Tensor, q: Tensor) -> None:
        self.low_rank = [(diagonal, u.unsqueeze(-1), q.unsqueeze(-1))]  # (lambda^(2^j), U_j, V_j): (H, N), (H, N, r)
        while 2 * self.low_rank[-1][1].shape[-1] <= diagonal.shape[-1] // 2:
            scale, U, V = self.low_rank[-1]
            mixed = V.mT @ U
            scaled = scale.unsqueeze(-1)
            self.low_rank.append(
                (scale * scale, torch.cat([scaled * U, U], -1), torch.cat([V, scaled * V - V @ mixed.mT], -1))
            )
        self.block_bits = len(self.low_rank) - 1  # A^block with block = 2^block_bits is the first dense power
        self.dense: list[Tensor] = []

    def _dense(self, level: int) -> Tensor:
        """A^(block 2^level): (H, N, N)."""
        while len(self.dense) <= level:
            if self.dense:
                self.dense.append(self.dense[-1] @ self.dense[-1])
            else:
                scale, U, V = self.low_rank[-1]
                self.dense.append(torch.diag_embed(scale) - U @ V.mT)
        return self.dense[level]

    def _times_digit(self, rows: Tensor, bit: int, transposed: bool) -> Tensor:
        """rows @ A^(2^bit), or rows @ (A^(2^bit))^T: rows (H, K, N)."""
        if bit >= self.block_bits:
            dense = self._dense(bit - self.block_bits)
            return rows @ (dense.mT if transposed else dense)
        scale, U, V = self.low_rank[bit]
        U, V = (V, U) if transposed else (U, V)
        return rows * scale.unsqueeze(-2) - (rows @ U) @ V.mT

    def times(self, rows: Tensor, exponent: int, transposed: bool = False) -> Tensor:
        """rows @ A^exponent (transposed: rows @ (A^exponent)^T, i.e. A^exponent applied to the rows as columns),
        one power per binary digit of the exponent. rows: (H, K, N) -> (H, K, N)."""
        for bit in range(exponent.bit_length()):
            if exponent >> bit & 1:
                rows = self._times_digit(rows, bit, transposed)
        return rows

    def row_power(self, rows: Tensor, exponent: int) -> Tensor:
        """rows @ A^exponent as at most ``_MAX_ROW_STEPS`` products with one dense power after the lower digits."""
        level = 0
        while exponent >> (self.block_bits + level) > _MAX_ROW_STEPS:
            level += 1
        shift = self.block_bits + level
        rows = self.times(rows, exponent & ((1 << shift) - 1))
        return _RowSteps.apply(rows, self._dense(level), exponent >> shift) if exponent >> shift else rows

    def state_kernel(self, input_map: Tensor, bits: int) -> Tensor:
        """(A^k b)^T for k < 2^bits, by doubling: (H, 2^bits, N) from b: (H, N)."""
        rows = input_map.unsqueeze(1)
        for bit in range(bits):
            rows = torch.cat([rows, self._times_digit(rows, bit, transposed=True)], dim=1)
        return rows

    def chunk_step(self, bits: int) -> Tensor:
        """(A^(2^bits))^T as a dense matrix, for Horner's rule on rows."""
        if bits >= self.block_bits:
            return self._dense(bits - self.block_bits).mT
        scale, U, V = self.low_rank[bits]
        return torch.diag_embed(scale) - V @ U.mT


class S4(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (B, d_model, d_state) complex."""

    modes = ("conv", "loop")

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state)
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
        if state is not None:
            check_state(self, state, x.shape[0])
        x = zero_padding(x, lengths)
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
        C = torch.complex(self.C_re, self.C_im)
        return self._spectrum(length, DecayPowers(*self.discrete_dplr()[:3]).row_power(C.unsqueeze(1), length))[0]

    def _spectrum(
        self, length: int, decayed_output: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Algorithm 1 of Gu et al. 2022 at the L-th roots of unity w; with an initial state h0 also its free
        response Re(C Abar^{t+1} h0), t < L, with generating function C_tilde ((1-w) I - beta A)^{-1} (I + dt/2 A) h0.

        decayed_output: C Abar^L (H, 1, N), state: (B, H, N) or None. Returns (kernel (L, H), free response (B, L, H)
        or None).
        """
        eigenvalues, P, B, C, dt = self._continuous()
        angles = 2 * math.pi * torch.arange(length, device=dt.device, dtype=dt.dtype) / length
        roots = torch.polar(torch.ones_like(angles), -angles)  # the L-th roots of unity
        alpha, beta = 1 - roots, (dt / 2) * (1 + roots)
        C_tilde = C - decayed_output.squeeze(1)  # truncation to length L
        # the four Cauchy sums k_xy = sum_n x_n y_n / (alpha - beta Lambda_n), two more per initial state, one pass
        numerators = [torch.stack([C_tilde * B, C_tilde * P, P.conj() * B, P.conj() * P], dim=-1)]  # (H, N, 4)
        if state is not None:
            pushed = state + (dt / 2) * (eigenvalues * state - P * (P.conj() * state).sum(-1, keepdim=True))
            numerators += [(C_tilde * pushed).permute(1, 2, 0), (P.conj() * pushed).permute(1, 2, 0)]
        sums = cauchy_sums(eigenvalues, alpha, beta, torch.cat(numerators, dim=-1))
        k00, k01, k10, k11 = sums[..., :4].unbind(-1)
        rank_one = 1 + beta * k11
        spectrum = dt * (k00 - k01 * beta * k10 / rank_one)  # Woodbury: C_tilde ((1 - w) I - beta A)^{-1} dt B
        kernel = torch.fft.ifft(spectrum, dim=-1).real.transpose(0, 1)
        if state is None:
            return kernel, None
        from_output, from_rank_one = sums[..., 4:].split(state.shape[0], dim=-1)  # (H, L, B) each
        free_spectrum = from_output - (beta * k01 / rank_one).unsqueeze(-1) * from_rank_one  # Woodbury again
        return kernel, torch.fft.ifft(free_spectrum, dim=1).real.permute(2, 1, 0)

    def _convolve(self, x: Tensor, state: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        length = x.shape[1]
        *decay, input_map = self.discrete_dplr()
        powers = DecayPowers(*decay)
        C = torch.complex(self.C_re, self.C_im)
        kernel, free_response = self._spectrum(length, powers.row_power(C.unsqueeze(1), length), state)
        # the skip D x_t is the kernel's tap at lag 0: one convolution instead of a convolution, a product and a sum
        y = causal_conv(x, torch.cat([kernel[:1] + self.D, kernel[1:]]).to(x.dtype))
        final = self._final_state(powers, input_map, right_align(x, lengths))
        if state is not None:
            y = y + free_response
            final = final + self._decayed(powers, state, lengths, length)
        return y, final

    @staticmethod
    def _final_state(powers: DecayPowers, input_map: Tensor, x: Tensor) -> Tensor:
        """h_L = sum_k Abar^k Bbar x_{L-1-k}: (B, H, N) from x: (B, L, H), in the time domain over chunks of T steps.

        With x zero-padded in front to J T steps, chunk j sums z_j = sum_{r<T} Abar^{T-1-r} Bbar x_{jT+r} (one real
        matrix product with the state kernel Abar^k Bbar, k < T), and Horner's rule h <- Abar^T h + z_j adds the
        chunks up. Per channel: B L N real-by-complex products, T N^2 for the state kernel and (L / T) B N^2 for
        Horner (T ~ sqrt(L B) balances the two), where pairing the resolvent with the transformed inputs in the
        frequency domain costs 2 B L N complex products, one more pass over the Cauchy poles and Abar^L."""
        batch, length, heads = x.shape
        chunk_bits = min(math.ceil(math.log2(length * batch) / 2), (length - 1).bit_length())
        chunk = 1 << chunk_bits
        chunks = -(-length // chunk)
        kernel = powers.state_kernel(input_map, chunk_bits).flip(1)  # (H, T, N): row r is (Abar^{T-1-r} Bbar)^T
        padded = x.new_zeros(heads, batch, chunks * chunk, dtype=kernel.real.dtype)
        padded[..., chunks * chunk - length :] = x.permute(2, 0, 1)
        # real x times complex kernel as one real product over the interleaved (real, imag) columns
        sums = padded.view(heads, batch * chunks, chunk) @ torch.view_as_real(kernel).flatten(-2)
        sums = sums.to(kernel.real.dtype)  # autocast's half-precision product back to the state's precision
        sums = torch.view_as_complex(sums.unflatten(-1, (-1, 2))).unflatten(1, (batch, chunks))  # (H, B, J, N)
        step = powers.chunk_step(chunk_bits)
        final = sums[:, :, 0]
        for j in range(1, chunks):
            final = torch.baddbmm(sums[:, :, j], final, step)
        return final.transpose(0, 1)

    @staticmethod
    def _decayed(powers: DecayPowers, state: Tensor, lengths: Tensor | None, length: int) -> Tensor:
        """Abar^len h0 for each sequence's own length: (B, H, N)."""
        rows = state.transpose(0, 1)  # (H, B, N): Abar^k h as the rows h^T (Abar^k)^T
        if lengths is None:
            return powers.times(rows, length, transposed=True).transpose(0, 1)
        out = torch.empty_like(state)
        for steps in torch.unique(lengths).tolist():
            chosen = lengths.to(state.device) == steps
            out[chosen] = powers.times(rows[:, chosen], steps, transposed=True).transpose(0, 1)
        return out

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x_t: (B, d_model), state: (B, d_model, d_state) -> (y_t, next state)."""
        decay, input_map = self.discrete()
        state = torch.einsum("hnm,bhm->bhn", decay, state) + x_t.unsqueeze(-1) * input_map
        C = torch.complex(self.C_re, self.C_im)
        return (state * C).sum(-1).real + self.D * x_t, state
