"""LRU: the Linear Recurrent Unit of Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences" (ICML), a stable diagonal complex LTI recurrence.

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

from ssm_lab.cores.base import check_input, check_mode, state_at_lengths
from ssm_lab.ops.scan import linear_recurrence
from ssm_lab.optim import mark_recurrence


class LRU(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model), state: (B, d_state) complex."""

    modes = ("scan", "loop")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        for key, value in (("d_model", d_model), ("d_state", d_state)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if max_phase <= 0:
            raise ValueError(f"max_phase must be positive, got {max_phase}")
        self.d_model, self.d_state = d_model, d_state
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

    def _input_map(self, x: Tensor) -> Tensor:
        """gamma * (B x): (..., d_model) -> (..., d_state) complex."""
        B = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log).unsqueeze(-1)
        return x.to(B.dtype) @ B.transpose(0, 1)

    def _output_map(self, h: Tensor, x: Tensor) -> Tensor:
        C = torch.complex(self.C_re, self.C_im)
        return (h @ C.transpose(0, 1)).real + self.D * x

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        dtype = torch.complex(self.B_re[:0], self.B_im[:0]).dtype
        return torch.zeros(batch, self.d_state, dtype=dtype, device=device or self.D.device)

    def forward(
        self, x: Tensor, state: Tensor | None = None, mode: str = "scan", lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, d_state) complex or None -> (y: (B, L, d_model), final state)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "LRU")
        states = linear_recurrence(self.eigenvalues(), self._input_map(x), state, mode=mode)
        return self._output_map(states, x), state_at_lengths(states, lengths)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: x_t: (B, d_model), state: (B, d_state) -> (y_t, next state)."""
        state = self.eigenvalues() * state + self._input_map(x_t)
        return self._output_map(state, x_t), state
