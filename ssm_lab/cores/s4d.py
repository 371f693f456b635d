"""S4D: the diagonal structured state space of Gu, Gupta, Goel & Re 2022, "On the Parameterization
and Initialization of Diagonal State Space Models" (NeurIPS). H independent SISO systems, each
with N/2 complex modes (conjugate pairs folded: the output takes twice the real part):

    h_t = Abar h_{t-1} + Bbar x_t,   y_t = 2 Re(C . h_t) + D x_t,   (Abar, Bbar) = discretize(Lambda, dt)

Init S4D-LegS (the eigenvalues of the normal part of HiPPO-LegS) or S4D-Lin (-1/2 + i pi n);
discretisation zoh or bilinear. Modes: "conv" (kernel K_k = 2 Re(sum_n C Bbar Abar^k) by
Vandermonde, FFT convolution), "scan" (parallel scan) and "loop" (the reference recurrence).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, check_state, state_at_lengths, zero_padding
from ssm_lab.ops.discretize import check_discretization, discretize_diagonal
from ssm_lab.ops.fft_conv import causal_conv, log_of_decay
from ssm_lab.ops.hippo import conjugate_half, legs_dplr, s4d_lin_eigenvalues
from ssm_lab.ops.scan import linear_recurrence
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive

INITS = ("legs", "lin")


def check_even_state(d_state: int, core: str) -> None:
    if not isinstance(d_state, int) or d_state < 2 or d_state % 2:
        raise ValueError(
            f"{core} keeps one mode of each conjugate pair, so d_state must be an even integer >= 2, got {d_state!r}"
        )


def log_uniform_steps(size: int, dt_min: float, dt_max: float) -> Tensor:
    """log dt, uniform in [log dt_min, log dt_max] (the S4/S5/Mamba step-size init)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    return torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def right_align(u: Tensor, lengths: Tensor | None) -> Tensor:
    """Shift each sequence so its last real step sits at L - 1, zeros before it.

    u: (B, L, H) -> (B, L, H). Lets one time-reversed kernel give every sequence's final state."""
    if lengths is None:
        return u
    length = u.shape[1]
    source = torch.arange(length, device=u.device) - (length - lengths.to(u.device)).unsqueeze(1)  # (B, L)
    gathered = torch.gather(u, 1, source.clamp_min(0).unsqueeze(-1).expand(-1, -1, u.shape[-1]))
    return gathered * (source >= 0).unsqueeze(-1).to(u.dtype)


class S4D(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (B, d_model, d_state / 2) complex."""

    modes = ("conv", "scan", "loop")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "legs",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model)
        check_even_state(d_state, "S4D")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        if discretization not in ("zoh", "bilinear"):
            check_discretization(discretization)  # names the allowed ones when unknown
            raise ValueError(f"S4D takes discretization zoh or bilinear, got {discretization!r}")
        self.d_model, self.d_state, self.discretization = d_model, d_state, discretization
        half = d_state // 2
        if init == "legs":
            eigenvalues, _, b, _ = legs_dplr(d_state)
            keep = conjugate_half(eigenvalues)
            eigenvalues, b = eigenvalues[keep], b[keep]
        else:
            eigenvalues, b = s4d_lin_eigenvalues(half), torch.ones(half, dtype=torch.complex128)
        self.log_neg_real = nn.Parameter(torch.log(-eigenvalues.real).float().repeat(d_model, 1))
        self.imag = nn.Parameter(eigenvalues.imag.float().repeat(d_model, 1))
        self.log_dt = nn.Parameter(log_uniform_steps(d_model, dt_min, dt_max))
        mark_recurrence(self.log_neg_real, self.imag, self.log_dt)
        self.B_re = nn.Parameter(b.real.float().repeat(d_model, 1))
        self.B_im = nn.Parameter(b.imag.float().repeat(d_model, 1))
        self.C_re = nn.Parameter(torch.randn(d_model, half) * math.sqrt(0.5))
        self.C_im = nn.Parameter(torch.randn(d_model, half) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(d_model))

    def discrete(self) -> tuple[Tensor, Tensor]:
        """(Abar, Bbar), each (d_model, d_state / 2) complex."""
        eigenvalues = torch.complex(-torch.exp(self.log_neg_real), self.imag)
        decay, input_factor = discretize_diagonal(
            eigenvalues, torch.exp(self.log_dt).unsqueeze(-1), self.discretization
        )
        return decay, input_factor * torch.complex(self.B_re, self.B_im)

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        dtype = torch.complex(self.C_re[:0], self.C_im[:0]).dtype
        return torch.zeros(batch, self.d_model, self.d_state // 2, dtype=dtype, device=device or self.D.device)

    def _output(self, states: Tensor, x: Tensor) -> Tensor:
        C = torch.complex(self.C_re, self.C_im)
        return 2 * (states * C).sum(-1).real + self.D * x

    def forward(
        self, x: Tensor, state: Tensor | None = None, mode: str = "conv", lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, d_model, d_state / 2) or None -> (y, final state at ``lengths``)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "S4D")
        if state is not None:
            check_state(self, state, x.shape[0])
        x = zero_padding(x, lengths)
        decay, input_map = self.discrete()
        if mode == "conv":
            return self._convolve(x, state, lengths, decay, input_map)
        batch, length, _ = x.shape
        inputs = (x.unsqueeze(-1) * input_map).reshape(batch, length, -1)
        h0 = None if state is None else state.reshape(batch, -1)
        states = linear_recurrence(decay.reshape(-1), inputs, h0, mode=mode).view(batch, length, *decay.shape)
        return self._output(states, x), state_at_lengths(states, lengths, checked=True)

    def _convolve(self, x: Tensor, state: Tensor | None, lengths: Tensor | None, decay: Tensor, input_map: Tensor):
        length = x.shape[1]
        log_decay = log_of_decay(decay)
        powers = torch.exp(log_decay.unsqueeze(-1) * torch.arange(length, device=x.device))  # (H, N/2, L)
        C = torch.complex(self.C_re, self.C_im)
        kernel = 2 * torch.einsum("hn,hnl->lh", C * input_map, powers).real
        y = causal_conv(x, kernel) + self.D * x
        aligned = right_align(x, lengths).to(powers.dtype)
        final = torch.einsum("blh,hnl->bhn", aligned, powers.flip(-1)) * input_map
        if state is not None:  # the free response of the initial state, and its decay to the end
            y = y + 2 * torch.einsum("bhn,hnl->blh", C * state * decay, powers).real
            steps = torch.full((x.shape[0],), length, device=x.device) if lengths is None else lengths.to(x.device)
            final = final + torch.exp(log_decay * steps.view(-1, 1, 1)) * state
        return y, final

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x_t: (B, d_model), state: (B, d_model, d_state / 2) -> (y_t, next state)."""
        decay, input_map = self.discrete()
        state = decay * state + x_t.unsqueeze(-1) * input_map
        return self._output(state, x_t), state
