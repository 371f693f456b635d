"""The Mamba block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces"), E = expand * d_model channels:

    x, z = in_proj(u);  x = SiLU(causal depthwise conv(x));  delta = softplus(dt_proj(W_dt x) + b)
    B_t, C_t = W_B x_t, W_C x_t;  A = -exp(A_log)
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t,  y_t = C_t . h_t + D x_t;  out = out_proj(y * SiLU(z))

``eigenvalues="signed"`` replaces the decay by 2 exp(delta A) - 1 in (-1, 1) (Grazzi et al. 2025,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues", ICLR), which lets a
layer flip signs and so track parity-like state. Modes (``ssm_lab.ops.selective_scan.selective_scan_by_mode``):
"scan" (the Triton kernel ``ssm_lab.ops.triton.selective_scan`` on CUDA tensors of fp32/bf16/fp16, the C kernel
``ssm_lab.ops.cpu.selective_scan`` on CPU tensors of fp32/fp64, else the pure-PyTorch blocked scan),
"torch_scan" (the pure-PyTorch scan on any device), "kernel" (Triton forced: CUDA tensors only, an error
elsewhere) and "loop" (``step`` token by token, the reference).
``integration_timesteps`` tau scale delta (irregular sampling); padded steps get delta = 0, so the state
passes through unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, check_state, real_steps, zero_padding
from ssm_lab.cores.s4d import log_uniform_steps
from ssm_lab.cores.stepping import check_timesteps, step_through
from ssm_lab.ops.selective_scan import positive_decay, selective_scan_by_mode, signed_decay
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive

EIGENVALUE_RANGES = {"positive": positive_decay, "signed": signed_decay}


class Mamba(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (conv window (B, d_conv - 1, E), ssm state (B, E, N))."""

    modes = ("scan", "torch_scan", "kernel", "loop")
    time_varying = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        eigenvalues: str = "positive",
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state, expand=expand, d_conv=d_conv, chunk_size=chunk_size)
        if dt_rank is not None:
            check_positive(dt_rank=dt_rank)  # None: ceil(d_model / 16), as in Mamba
        if d_conv < 2:
            raise ValueError(f"d_conv must be >= 2 (a causal window of at least two steps), got {d_conv}")
        if eigenvalues not in EIGENVALUE_RANGES:
            raise ValueError(f"unknown eigenvalues {eigenvalues!r}; choose one of {', '.join(EIGENVALUE_RANGES)}")
        self.d_model, self.d_state, self.d_conv, self.chunk_size = d_model, d_state, d_conv, chunk_size
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.signed = eigenvalues == "signed"
        self.decay_of = EIGENVALUE_RANGES[eigenvalues]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        with torch.no_grad():  # softplus(bias) = dt, log-uniform in [dt_min, dt_max]
            dt = torch.exp(log_uniform_steps(self.d_inner, dt_min, dt_max))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        mark_recurrence(self.A_log, self.dt_proj.bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def default_state(self, batch: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        device = device or self.D.device
        window = torch.zeros(batch, self.d_conv - 1, self.d_inner, dtype=self.D.dtype, device=device)
        return window, torch.zeros(batch, self.d_inner, self.d_state, dtype=self.D.dtype, device=device)

    def _selection(self, x: Tensor, timesteps: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(delta, B, C) from the conv output x: (..., E)."""
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = nn.functional.softplus(self.dt_proj(dt_low))
        if timesteps is not None:
            delta = delta * timesteps.unsqueeze(-1).to(delta.dtype)
        return delta, B, C

    def forward(
        self,
        x: Tensor,
        state: tuple[Tensor, Tensor] | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        integration_timesteps: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, L, d_model) -> (y: (B, L, d_model), final (conv window, ssm state) at ``lengths``)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "Mamba")
        check_timesteps(integration_timesteps, x)
        if state is None:
            state = self.default_state(x.shape[0], x.device)
        check_state(self, state, x.shape[0])
        real = real_steps(x, lengths)
        x = zero_padding(x, lengths, real)
        if mode == "loop":
            return step_through(self.step, x, state, lengths, {"integration_timesteps": integration_timesteps})
        window, ssm_state = state
        inputs, gate = self.in_proj(x).chunk(2, dim=-1)
        history = torch.cat([window, inputs], dim=1)  # (B, d_conv - 1 + L, E)
        u = nn.functional.silu(self._causal_conv(history))
        delta, B, C = self._selection(u, integration_timesteps)
        delta = zero_padding(delta, lengths, real)  # delta = 0 on padding: decay 1, input 0, the state passes through
        A = -torch.exp(self.A_log)
        y, ssm_state = selective_scan_by_mode(
            u, delta, A, B, C, self.D, ssm_state, mode=mode, signed=self.signed, chunk_size=self.chunk_size
        )
        return self.out_proj(y * nn.functional.silu(gate)), (self._last_window(history, lengths), ssm_state)

    def _causal_conv(self, history: Tensor) -> Tensor:
        """Depthwise causal conv as d_conv shifted products: (B, d_conv - 1 + L, E) -> (B, L, E).

        Written out because torch's CPU depthwise conv1d backward is ~100x slower than this."""
        length = history.shape[1] - (self.d_conv - 1)
        taps = self.conv.weight[:, 0]  # (E, d_conv)
        out = self.conv.bias + history[:, :length] * taps[:, 0]
        for k in range(1, self.d_conv):
            out = out + history[:, k : k + length] * taps[:, k]
        return out

    def _last_window(self, history: Tensor, lengths: Tensor | None) -> Tensor:
        """The last d_conv - 1 conv inputs up to each sequence's end: history[len : len + d_conv - 1]."""
        if lengths is None:
            return history[:, history.shape[1] - (self.d_conv - 1) :]
        index = lengths.to(history.device).unsqueeze(1) + torch.arange(self.d_conv - 1, device=history.device)
        return torch.gather(history, 1, index.unsqueeze(-1).expand(-1, -1, self.d_inner))

    def step(
        self, x_t: Tensor, state: tuple[Tensor, Tensor], integration_timesteps: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x_t: (B, d_model) -> (y_t, next state): one conv window and one recurrence step."""
        window, h = state
        inputs, gate = self.in_proj(x_t).chunk(2, dim=-1)
        window = torch.cat([window, inputs.unsqueeze(1)], dim=1)  # (B, d_conv, E)
        u = nn.functional.silu(torch.einsum("bke,ek->be", window, self.conv.weight[:, 0]) + self.conv.bias)
        delta, B, C = self._selection(u, integration_timesteps)
        decay = self.decay_of(delta.unsqueeze(-1) * -torch.exp(self.A_log))
        h = decay * h + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
        y = (h * C.unsqueeze(1)).sum(-1) + self.D * u
        return self.out_proj(y * nn.functional.silu(gate)), (window[:, 1:], h)
