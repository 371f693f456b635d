"""IDS4: S4 with input-dependent transitions, the extension that "The Illusion of State in
State-Space Models" (Merrill, Petty & Sabharwal 2024, ICML) shows can solve A5 word problems
where diagonal and LTI SSMs cannot. Our construction: one MIMO state of size N whose dense
transition matrix is an affine function of the input, discretised bilinearly:

    A(x_t) = A_0 + sum_j x_t,j A_j,   Abar_t = (I - dt/2 A(x_t))^{-1} (I + dt/2 A(x_t)),
    Bbar_t = (I - dt/2 A(x_t))^{-1} dt B,   h_t = Abar_t h_{t-1} + Bbar_t x_t,   y_t = C h_t + D x_t

A_0 starts at HiPPO-LegS and the A_j near zero, so training starts from S4. Non-commuting
input-dependent matrices are what state tracking needs; mode "scan" evaluates the recurrence by
``bilinear_recurrence`` (on CUDA the maps by ``bilinear_maps``, a Triton batched inverse, then a Triton time loop,
or the parallel scan over matrix products where it does not apply; on CPU step by step from one LU factorisation
of I - dt/2 A(x_t) per step, never forming Abar_t, the maps built a window of steps at a time), mode "parallel"
the maps always formed and composed by the parallel scan over matrix products, mode "loop" step by step through
``step`` (the reference).
``integration_timesteps`` tau scale the step: dt_t = tau_t dt.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, check_state, state_at_lengths, zero_padding
from ssm_lab.cores.s4d import log_uniform_steps
from ssm_lab.cores.stepping import check_timesteps, step_through
from ssm_lab.ops.hippo import legs
from ssm_lab.ops.matrix_scan import (
    affine_step,
    bilinear_maps,
    bilinear_recurrence,
    chunked_matrix_recurrence,
    window_steps,
)
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive


class IDS4(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (B, d_state) real."""

    modes = ("scan", "parallel", "loop")
    time_varying = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        input_dependence_std: float = 0.1,
        dt_min: float = 1e-2,
        dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state)
        if input_dependence_std < 0:
            raise ValueError(f"input_dependence_std must be >= 0, got {input_dependence_std}")
        self.d_model, self.d_state = d_model, d_state
        self.A_0 = nn.Parameter(legs(d_state)[0].float())
        self.A_input = nn.Parameter(torch.randn(d_model, d_state, d_state) * input_dependence_std / math.sqrt(d_model))
        self.log_dt = nn.Parameter(log_uniform_steps(1, dt_min, dt_max))
        mark_recurrence(self.A_0, self.A_input, self.log_dt)
        self.B = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(d_model))
        self.C = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.D = nn.Parameter(torch.randn(d_model))

    def _discretisation_terms(self, x: Tensor, timesteps: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(e_t: (..., 1 + H), W: (1 + H, N N), dt B x_t: (..., N)), what the bilinear maps are made of:
        dt_t/2 A(x_t) = sum_i e_t,i W_i (``_half_step_matrices``) with e_t = tau_t (1, x_t) and
        W = dt/2 (A_0, A_1, ..., A_H). In the parameters' precision even under autocast: the maps are factorised
        (LU) and multiplied L times."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.A_0.dtype)
            time = torch.ones_like(x[..., :1]) if timesteps is None else timesteps.unsqueeze(-1).to(x.dtype)
            dt = torch.exp(self.log_dt)
            weights = torch.cat([self.A_0.unsqueeze(0), self.A_input]).flatten(1) * (dt / 2)
            return torch.cat([time, time * x], dim=-1), weights, (dt * time) * (x @ self.B.T)

    def _half_step_matrices(self, increments: Tensor, weights: Tensor) -> Tensor:
        """dt/2 A(x_t) = sum_i e_t,i W_i: (..., N, N), one product of the increments with the scaled weights (no
        pass over the (..., N, N) result), in their precision even under autocast."""
        with torch.autocast(increments.device.type, enabled=False):
            return (increments @ weights).unflatten(-1, (self.d_state, self.d_state))

    def transitions(self, x: Tensor, timesteps: Tensor | None) -> tuple[Tensor, Tensor]:
        """(Abar_t: (..., N, N), Bbar_t x_t: (..., N)) for x: (..., d_model)."""
        increments, weights, inputs = self._discretisation_terms(x, timesteps)
        return bilinear_maps(self._half_step_matrices(increments, weights), inputs)

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(batch, self.d_state, dtype=self.A_0.dtype, device=device or self.A_0.device)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        integration_timesteps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, d_state) or None -> (y, final state at ``lengths``)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "IDS4")
        check_timesteps(integration_timesteps, x)
        if state is not None:
            check_state(self, state, x.shape[0])
        x = zero_padding(x, lengths)
        if mode == "loop":
            state = self.default_state(x.shape[0], x.device) if state is None else state
            return step_through(self.step, x, state, lengths, {"integration_timesteps": integration_timesteps})
        states = self._states(x, state, integration_timesteps, mode)
        return states @ self.C.T + self.D * x, state_at_lengths(states, lengths, checked=True)

    def _states(self, x: Tensor, state: Tensor | None, timesteps: Tensor | None, mode: str) -> Tensor:
        """Every state h_t: (B, L, d_state), by ``bilinear_recurrence``: over the whole sequence on GPUs (one batched
        solve, and the parallel scan where it runs wants it all), on CPU in windows of steps whose maps stay in reused
        memory (``window_steps``; a sequential recurrence anyway, so windows change nothing but the memory it runs
        in)."""
        increments, weights, inputs = self._discretisation_terms(x, timesteps)
        steps = window_steps("auto", x.shape[0], self.d_state, weights.dtype, x.device)

        def maps(window_increments: Tensor, window_inputs: Tensor) -> tuple[Tensor, Tensor]:
            return self._half_step_matrices(window_increments, weights), window_inputs

        recurrence = partial(bilinear_recurrence, mode=mode)
        return chunked_matrix_recurrence(maps, (increments, inputs), state, steps, recurrence=recurrence)

    def step(self, x_t: Tensor, state: Tensor, integration_timesteps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x_t: (B, d_model), state: (B, d_state) -> (y_t, next state)."""
        state = affine_step(*self.transitions(x_t, integration_timesteps), state)
        return state @ self.C.T + self.D * x_t, state
