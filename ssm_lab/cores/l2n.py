"""l2n: a free parametrization of LTI systems with a prescribed L2 gain, from "Free
Parametrization of L2-bounded State Space Models" (Massai et al., arXiv 2503.23818) and the
neural-ssm package: A block-diagonal of 2x2 scaled rotations, and the whole step map a contraction.

    [ z_{t+1} ]       [ K11  K12 ] [ z_t       ]
    [   y_t   ]   =   [ K21  K22 ] [ gamma u_t ],     ||K||_2 <= 1,   K11 = blockdiag(rho_j R(theta_j))

||K|| <= 1 gives ||z_{t+1}||^2 + ||y_t||^2 <= ||z_t||^2 + gamma^2 ||u_t||^2; summed from z_0 = 0,
sum ||y_t||^2 <= gamma^2 sum ||u_t||^2: the gain is <= gamma * ||K|| for ANY raw parameters.
K = K_raw / max(1, b) where b >= ||K_raw||_2 is the Gram-iteration bound (ssm_lab.ops.spectral):
matmuls only, never an SVD, never an estimate from below. Dividing K11 by a scalar keeps its
2x2 blocks scaled rotations, and a 2x2 block [[r cos, -r sin], [r sin, r cos]] acting on
(z_2j, z_2j+1) is multiplication by r e^{i theta} of h_j = z_2j + i z_2j+1, so the state is a
complex diagonal recurrence run by ssm_lab.ops.scan.linear_recurrence (d_state/2 complex states):

    lambda_j = K[2j, 2j] + i K[2j+1, 2j],   B_j = gamma (K12[2j] + i K12[2j+1]),
    C = K21[:, 0::2] - i K21[:, 1::2],      D = gamma K22.

neural-ssm's change of basis S (A = S^-1 K11 S) does not change the map u -> y and is left out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.lru import DiagonalLTICore
from ssm_lab.inference_cache import cached_without_grad
from ssm_lab.ops.spectral import normalize_to_contraction
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive


def check_gamma(gamma: float, owner: str) -> None:
    """A prescribed gain must be a positive finite number."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
        raise ValueError(f"{owner} gamma must be a positive finite number, got {gamma!r}")


class L2N(DiagonalLTICore):
    """x: (B, L, d_model) -> y: (B, L, d_model), state: (B, d_state // 2) complex; gain <= gain_bound() <= gamma."""

    readout_from_previous_state = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        gamma: float = 1.0,
        train_gamma: bool = True,
        rho_min: float = 0.8,
        rho_max: float = 0.99,
        max_phase: float = math.pi,
        init_scale: float = 0.5,
        gram_iterations: int = 8,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state, gram_iterations=gram_iterations)
        if d_state % 2:
            raise ValueError(f"L2N d_state must be even (2x2 rotation blocks), got {d_state}")
        check_gamma(gamma, "L2N")
        if not 0.0 < rho_min < rho_max < 1.0:
            raise ValueError(f"need 0 < rho_min < rho_max < 1, got rho_min={rho_min}, rho_max={rho_max}")
        self.d_model, self.d_state, self.state_size = d_model, d_state, d_state // 2
        self.gram_iterations = gram_iterations
        rho = rho_min + (rho_max - rho_min) * torch.rand(self.state_size)
        self.rho_logit = nn.Parameter(torch.log(rho / (1 - rho)))
        self.theta = nn.Parameter(max_phase * (2 * torch.rand(self.state_size) - 1))
        mark_recurrence(self.rho_logit, self.theta)
        # entries of std init_scale / sqrt(d_state + d_model): ||K_raw|| stays near max(rho) at init
        std = init_scale / math.sqrt(d_state + d_model)
        self.K12 = nn.Parameter(std * torch.randn(d_state, d_model))
        self.K21 = nn.Parameter(std * torch.randn(d_model, d_state))
        self.K22 = nn.Parameter(std * torch.randn(d_model, d_model))
        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    def raw_step_matrix(self) -> Tensor:
        """K_raw: (d_state + d_model, d_state + d_model) with the 2x2 scaled rotations in K11."""
        rho = torch.sigmoid(self.rho_logit)
        cosine, sine = rho * torch.cos(self.theta), rho * torch.sin(self.theta)
        diagonal = cosine.repeat_interleave(2)
        # entries (2j, 2j+1) = -r sin and (2j+1, 2j) = r sin; the odd off-diagonal slots stay 0
        above = torch.stack([-sine, torch.zeros_like(sine)], dim=-1).flatten()[:-1]
        below = torch.stack([sine, torch.zeros_like(sine)], dim=-1).flatten()[:-1]
        K11 = torch.diag_embed(diagonal) + torch.diag_embed(above, offset=1) + torch.diag_embed(below, offset=-1)
        return torch.cat([torch.cat([K11, self.K12], dim=1), torch.cat([self.K21, self.K22], dim=1)], dim=0)

    @cached_without_grad
    def system_and_gain_bound(self) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """(lambda, B, C, D) read off the contraction K, and gamma * (certified ||K||_2 <= 1)."""
        K, norm = normalize_to_contraction(self.raw_step_matrix(), self.gram_iterations)
        n, gamma = self.d_state, torch.exp(self.log_gamma)
        eigenvalues = torch.complex(K[0:n:2, 0:n:2].diagonal(), K[1:n:2, 0:n:2].diagonal())
        B = gamma * torch.complex(K[0:n:2, n:], K[1:n:2, n:])
        C = torch.complex(K[n:, 0:n:2], -K[n:, 1:n:2])
        return (eigenvalues, B, C, gamma * K[n:, n:]), gamma * norm

    def system(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.system_and_gain_bound()[0]

    def gain_bound(self) -> Tensor:
        """gamma * (certified ||K||_2 <= 1): the zero-state L2 gain bound, for any raw parameters."""
        return self.system_and_gain_bound()[1]
