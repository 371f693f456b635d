"""l2ru: the original construction of "Free Parametrization of L2-bounded State Space Models"
(Massai et al., arXiv 2503.23818), kept for comparison with l2n: a dense real LTI system
(A, B, C, D) that satisfies the bounded real lemma for gamma by construction (Cayley + Cholesky).

    x_{t+1} = A x_t + B u_t,   y_t = C x_t + D u_t,   x: (B, d_state), u, y: (B, d_model)

Bounded real lemma: if P > 0 and [A B]^T P [A B] <= R := diag(P, gamma^2 I) - [C D]^T [C D], then
V(x) = x^T P x gives V(x_{t+1}) + ||y_t||^2 <= V(x_t) + gamma^2 ||u_t||^2, so the gain is <= gamma.
Free parameters X, C, D_raw, S (and gamma) make it hold by construction:

    D = gamma D_raw / max(1, ||D_raw||) (1 + margin)            so that Z := gamma^2 I - D^T D > 0
    P = X X^T + eps I + C^T C + C^T D Z^-1 D^T C                so that R > 0 (its Schur complement
                                                                w.r.t. Z is X X^T + eps I)
    [A B] = L_P^-T Q L_R^T,  P = L_P L_P^T, R = L_R L_R^T (Cholesky),
    Q = the first d_state rows of the Cayley transform (I - S + S^T)(I + S - S^T)^-1, orthogonal,

for then [A B]^T P [A B] = L_R Q^T Q L_R^T <= R. A is dense, so the recurrence is the dense
doubling scan of this module rather than the diagonal op of ssm_lab.ops.scan.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, fold_residual, state_at_lengths, zero_padding
from ssm_lab.cores.l2n import check_gamma
from ssm_lab.inference_cache import cached_without_grad
from ssm_lab.ops.spectral import normalize_to_contraction
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive

# ||D|| <= gamma / 1.001 keeps Z = gamma^2 I - D^T D positive definite with room for rounding
_STRICT_MARGIN = 1.001


def dense_recurrence(A: Tensor, drive: Tensor, h0: Tensor | None = None, mode: str = "scan") -> Tensor:
    """Every state of h_t = A h_{t-1} + drive_t. A: (N, N), drive: (B, L, N), h0: (B, N) or None -> (B, L, N).

    "loop" is the reference; "scan" doubles like the LTI diagonal scan: after the step with offset
    k, position t holds the sum of the 2k newest terms, h[t] += A^k h[t - k], A^k by squaring.
    """
    check_mode(mode, ("scan", "loop"), "dense_recurrence")
    h = drive
    if h0 is not None:
        h = torch.cat([drive[:, :1] + (h0 @ A.transpose(0, 1)).unsqueeze(1), drive[:, 1:]], dim=1)
    if mode == "loop":
        first, *rest = h.unbind(1)  # steps by unbind (see ssm_lab.ops.scan.linear_recurrence_ref)
        states = [first]
        for h_t in rest:
            states.append(states[-1] @ A.transpose(0, 1) + h_t)
        return torch.stack(states, dim=1)
    power, k = A, 1
    while k < h.shape[1]:
        h = torch.cat([h[:, :k], h[:, k:] + h[:, :-k] @ power.transpose(0, 1)], dim=1)
        power = power @ power
        k *= 2
    return h


class L2RU(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model), state: (B, d_state) real; gain <= gamma by construction."""

    modes = ("scan", "loop")

    def __init__(
        self, d_model: int, d_state: int = 64, gamma: float = 1.0, train_gamma: bool = True, epsilon: float = 1e-3
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state)
        check_gamma(gamma, "L2RU")
        if not 0 < epsilon < math.inf:  # P >= epsilon I > 0: Cholesky needs P positive definite
            raise ValueError(f"L2RU epsilon must be a positive finite number, got {epsilon!r}")
        self.d_model, self.d_state, self.epsilon = d_model, d_state, epsilon
        self.X = nn.Parameter(torch.eye(d_state) + 0.1 * torch.randn(d_state, d_state) / math.sqrt(d_state))
        self.C = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.D_raw = nn.Parameter(0.5 * torch.randn(d_model, d_model) / math.sqrt(d_model))
        size = d_state + d_model
        self.S = nn.Parameter(0.1 * torch.randn(size, size) / math.sqrt(size))
        mark_recurrence(self.X, self.S)  # P and the Cayley rotation set A, the dynamics
        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @cached_without_grad
    def system(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(A: (N, N), B: (N, H), C: (H, N), D: (H, H)) satisfying the bounded real lemma for gamma, in the
        parameters' precision even under autocast (in bf16 the lemma, and so the certificate, would not hold)."""
        with torch.autocast(self.X.device.type, enabled=False):
            return self._system()

    def _system(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n, m = self.d_state, self.d_model
        gamma = torch.exp(self.log_gamma)
        eye_n = torch.eye(n, dtype=self.X.dtype, device=self.X.device)
        eye_m = torch.eye(m, dtype=self.X.dtype, device=self.X.device)
        D = gamma * normalize_to_contraction(self.D_raw)[0] / _STRICT_MARGIN
        Z = gamma**2 * eye_m - D.transpose(0, 1) @ D
        coupling = self.C.transpose(0, 1) @ D  # C^T D
        P = self.X @ self.X.transpose(0, 1) + self.epsilon * eye_n + self.C.transpose(0, 1) @ self.C
        P = P + coupling @ torch.linalg.solve(Z, coupling.transpose(0, 1))
        P = 0.5 * (P + P.transpose(0, 1))
        top = torch.cat([P - self.C.transpose(0, 1) @ self.C, -coupling], dim=1)
        R = torch.cat([top, torch.cat([-coupling.transpose(0, 1), Z], dim=1)], dim=0)
        R = 0.5 * (R + R.transpose(0, 1))
        skew = self.S - self.S.transpose(0, 1)
        eye = torch.eye(n + m, dtype=self.X.dtype, device=self.X.device)
        Q = torch.linalg.solve(eye + skew, eye - skew, left=False)[:n]  # (I - S)(I + S)^-1, first n rows
        L_P, L_R = torch.linalg.cholesky(P), torch.linalg.cholesky(R)
        AB = torch.linalg.solve_triangular(L_P.transpose(0, 1), Q @ L_R.transpose(0, 1), upper=True)
        return AB[:, :n], AB[:, n:], self.C, D

    def gain_bound(self) -> Tensor:
        """gamma: the construction satisfies the bounded real lemma exactly."""
        return torch.exp(self.log_gamma)

    def forward_and_gain_bound(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        residual_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return (*self.forward(x, state, mode, lengths, residual_scale), self.gain_bound())

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(batch, self.d_state, dtype=self.X.dtype, device=device or self.X.device)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        residual_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, d_state) or None -> (y: (B, L, d_model), final state).
        residual_scale s (a scalar tensor): y = x + s (C r + D x) instead, s folded into C and D.

        In the parameters' precision even under autocast, x cast to it: the lemma holds for the float32
        (A, B, C, D) of ``system()``, not for their bf16 roundings (a gain of 1.015 > gamma = 1 measured on the
        worst-case sinusoid), and the state stays float32 so that a later float32 call can continue from it."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "L2RU")
        if state is not None and state.shape != (x.shape[0], self.d_state):
            expected = (x.shape[0], self.d_state)
            raise ValueError(f"L2RU initial state must be (B, d_state) = {expected}, got {tuple(state.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            x = zero_padding(x, lengths).to(self.X.dtype)
            A, B, C, D = self.system()
            states = dense_recurrence(A, x @ B.transpose(0, 1), state, mode=mode)
            first = self.default_state(x.shape[0], x.device) if state is None else state
            previous = torch.cat([first.unsqueeze(1), states[:, :-1]], dim=1)
            if residual_scale is not None:
                C, D = fold_residual(C, D, residual_scale)
            y = previous @ C.transpose(0, 1) + x @ D.transpose(0, 1)
        return y, state_at_lengths(states, lengths, checked=True)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: x_t: (B, d_model), state: (B, d_state) -> (y_t: (B, d_model), next state)."""
        y, state = self.forward(x_t.unsqueeze(1), state, mode="loop")
        return y[:, 0], state

    def frequency_response(self, omega: Tensor) -> Tensor:
        """G(z) = D + C (z I - A)^-1 B at z = e^{i omega}: omega (F,) -> (F, H, H) complex."""
        A, B, C, D = self.system()
        complex_dtype = A.dtype.to_complex()
        z = torch.exp(1j * omega.to(A.dtype)).view(-1, 1, 1)
        eye = torch.eye(self.d_state, dtype=complex_dtype, device=A.device)
        resolvent_B = torch.linalg.solve(z * eye - A.to(complex_dtype), B.to(complex_dtype))
        return D.to(complex_dtype) + C.to(complex_dtype) @ resolvent_B
