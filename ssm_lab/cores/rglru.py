"""RG-LRU: the real-gated linear recurrent unit of Griffin (De et al. 2024, "Griffin: Mixing
Gated Linear Recurrences with Local Attention for Efficient Language Models"):

    r_t = sigmoid(W_a x_t + b_a),  i_t = sigmoid(W_x x_t + b_x),  a_t = a^(c r_t),  a = sigmoid(Lambda)
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t * x_t),   y_t = h_t

a^c is initialised uniformly in [r_min^2, r_max^2] as in the paper (c = 8). With
``integration_timesteps`` tau_t the decay becomes a^(c r_t tau_t) (a longer gap forgets more).
Only the recurrent unit: Griffin's surrounding block (conv, gating branch) is the backbone's job.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, state_at_lengths, zero_padding
from ssm_lab.cores.stepping import check_timesteps
from ssm_lab.ops.scan import linear_recurrence
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive


class RGLRU(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (B, d_model) real."""

    modes = ("scan", "loop")
    time_varying = True

    def __init__(self, d_model: int, c: float = 8.0, r_min: float = 0.9, r_max: float = 0.999) -> None:
        super().__init__()
        check_positive(d_model=d_model)
        if not 0.0 < r_min < r_max < 1.0:
            raise ValueError(f"need 0 < r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if c <= 0:
            raise ValueError(f"c must be positive, got {c}")
        self.d_model, self.c = d_model, c
        a_to_c = torch.empty(d_model).uniform_(r_min**2, r_max**2)
        self.a_logit = nn.Parameter(torch.logit(a_to_c ** (1 / c)))
        mark_recurrence(self.a_logit)
        self.recurrence_gate = nn.Linear(d_model, d_model)
        self.input_gate = nn.Linear(d_model, d_model)

    def _coefficients(self, x: Tensor, timesteps: Tensor | None) -> tuple[Tensor, Tensor]:
        """(a_t, sqrt(1 - a_t^2) i_t x_t) for x: (..., d_model)."""
        log_a = -self.c * torch.sigmoid(self.recurrence_gate(x)) * nn.functional.softplus(-self.a_logit)
        if timesteps is not None:
            log_a = log_a * timesteps.unsqueeze(-1).to(log_a.dtype)
        gated = torch.sigmoid(self.input_gate(x)) * x
        return torch.exp(log_a), torch.sqrt(-torch.expm1(2 * log_a)) * gated

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(batch, self.d_model, dtype=self.a_logit.dtype, device=device or self.a_logit.device)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        integration_timesteps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, d_model) or None -> (y, final state at ``lengths``)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "RG-LRU")
        check_timesteps(integration_timesteps, x)
        x = zero_padding(x, lengths)
        decay, inputs = self._coefficients(x, integration_timesteps)
        states = linear_recurrence(decay, inputs, state, mode=mode)
        return states, state_at_lengths(states, lengths, checked=True)

    def step(self, x_t: Tensor, state: Tensor, integration_timesteps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x_t: (B, d_model), state: (B, d_model) -> (y_t, next state)."""
        decay, inputs = self._coefficients(x_t, integration_timesteps)
        state = decay * state + inputs
        return state, state
