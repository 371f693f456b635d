"""S5: the simplified MIMO state space layer of Smith, Warrington & Linderman 2023, "Simplified
State Space Layers for Sequence Modeling" (ICLR). One diagonal complex system of P modes shared
by all H channels, evaluated with a parallel scan:

    h_t = Abar_t h_{t-1} + Bbar_t (B x_t),   y_t = Re(C h_t) + D x_t   (2 Re with conjugate symmetry)

Lambda is initialised at the eigenvalues of HiPPO-LegS's normal part (B and C projected onto its
eigenvectors), dt_p = exp(log_step_p) is learned per mode; discretisation zoh, bilinear or dirac.
With ``integration_timesteps`` tau: (B, L) the step becomes tau_t dt (irregular sampling), so the
system is time-varying and has no convolution mode.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, state_at_lengths, zero_padding
from ssm_lab.cores.s4d import check_even_state, log_uniform_steps
from ssm_lab.cores.stepping import check_timesteps
from ssm_lab.ops.discretize import check_discretization, discretize_diagonal
from ssm_lab.ops.hippo import conjugate_half, legs_dplr
from ssm_lab.ops.scan import linear_recurrence
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive


class S5(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (B, P) complex, P = d_state (/ 2 with
    conjugate symmetry)."""

    modes = ("scan", "loop")
    time_varying = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        discretization: str = "zoh",
        conjugate_symmetry: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model)
        if conjugate_symmetry:
            check_even_state(d_state, "S5 with conjugate_symmetry")
        check_discretization(discretization)
        self.d_model, self.discretization = d_model, discretization
        self.output_scale = 2.0 if conjugate_symmetry else 1.0
        eigenvalues, _, _, V = legs_dplr(d_state)
        if conjugate_symmetry:
            keep = conjugate_half(eigenvalues)
            eigenvalues, V = eigenvalues[keep], V[:, keep]
        self.d_modes = len(eigenvalues)
        self.log_neg_real = nn.Parameter(torch.log(-eigenvalues.real).float())
        self.imag = nn.Parameter(eigenvalues.imag.float())
        self.log_step = nn.Parameter(log_uniform_steps(self.d_modes, dt_min, dt_max))
        mark_recurrence(self.log_neg_real, self.imag, self.log_step)
        B = V.conj().T @ (torch.randn(d_state, d_model, dtype=torch.float64) / math.sqrt(d_model)).to(V.dtype)
        C = (torch.randn(d_model, d_state, dtype=torch.float64) / math.sqrt(d_state)).to(V.dtype) @ V
        self.B_re, self.B_im = nn.Parameter(B.real.float()), nn.Parameter(B.imag.float())
        self.C_re, self.C_im = nn.Parameter(C.real.float()), nn.Parameter(C.imag.float())
        self.D = nn.Parameter(torch.randn(d_model))

    def _discrete(self, timesteps: Tensor | None) -> tuple[Tensor, Tensor]:
        """(Abar, Bbar factor): (P,) each, or (..., P) when ``timesteps`` (...) scale the step."""
        eigenvalues = torch.complex(-torch.exp(self.log_neg_real), self.imag)
        dt = torch.exp(self.log_step)
        if timesteps is not None:
            dt = timesteps.unsqueeze(-1).to(dt.dtype) * dt
        return discretize_diagonal(eigenvalues, dt, self.discretization)

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        dtype = torch.complex(self.B_re[:0], self.B_im[:0]).dtype
        return torch.zeros(batch, self.d_modes, dtype=dtype, device=device or self.D.device)

    def _output(self, states: Tensor, x: Tensor) -> Tensor:
        C = torch.complex(self.C_re, self.C_im)
        return self.output_scale * (states @ C.T).real + self.D * x

    def _inputs(self, x: Tensor, input_factor: Tensor) -> Tensor:
        B = torch.complex(self.B_re, self.B_im)
        return input_factor * (x.to(B.dtype) @ B.T)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        integration_timesteps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, P) or None, integration_timesteps: (B, L) or None
        -> (y: (B, L, d_model), final state at ``lengths``)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "S5")
        check_timesteps(integration_timesteps, x)
        x = zero_padding(x, lengths)
        decay, input_factor = self._discrete(integration_timesteps)
        states = linear_recurrence(decay, self._inputs(x, input_factor), state, mode=mode)
        return self._output(states, x), state_at_lengths(states, lengths, checked=True)

    def step(self, x_t: Tensor, state: Tensor, integration_timesteps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x_t: (B, d_model), state: (B, P), integration_timesteps: (B,) or None -> (y_t, next state)."""
        decay, input_factor = self._discrete(integration_timesteps)
        state = decay * state + self._inputs(x_t, input_factor)
        return self._output(state, x_t), state
