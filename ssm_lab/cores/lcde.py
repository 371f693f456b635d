"""The Linear Neural CDE of Cirone, Orvieto, Walker, Salvi & Lyons 2024, "Theoretical Foundations
of Deep Selective State-Space Models" (NeurIPS), driven by the piecewise-linear control path X
whose increments are the inputs and a time channel, Delta X_t = (tau_t, x_t) in R^{1 + H}:

    dh = sum_i A_i h dX^i + B dX,   y_t = W_out h_t

On step t the path is a straight line, so h solves h' = M_t h + v_t on a unit interval with
M_t = sum_i A_i Delta X^i_t and v_t = B Delta X_t. Solvers (``solver``):
  "exp"   exact: [h_t; 1] = expm([[M_t, v_t], [0, 0]]) [h_{t-1}; 1], i.e. h_t = e^{M_t} h_{t-1} + phi_1(M_t) v_t;
  "euler" one explicit Euler step: h_t = (I + M_t) h_{t-1} + v_t.
Scale of the vector fields. As in the paper's random Linear CDE (A_i with i.i.d. N(0, 1/N) entries),
A_i = init_std / sqrt(N (1 + H)) W_i with W_i i.i.d. N(0, 1): for increments of unit variance per channel
(the embedding or a LayerNorm before the core), M_t has entries of variance ~init_std^2 / N, so its spectrum
fills a disc of radius ~init_std (circular law) whatever N and H, and log|h| grows by ~init_std^2 / 2 per step.
The trained parameter is W (``A_weight``), the factor 1/sqrt(N (1 + H)) stays fixed outside it
(``field_scale``): the same model, reparametrised, because Adam moves every entry by about lr per step
whatever its scale. With the factor inside the parameter (entries ~0.006 at N = 64, H = 128) one step
of lr = 1e-3 moved A by ~20% of its size, and coherently over the 1 + H channels ||M_t|| grew by O(1)
in a few dozen steps; the state, ~e^{sum_t Re lambda_max(M_t)}, then overflowed fp32 (A5 at d_model 128:
NaN at step 132). With the factor outside, a step moves A_i by lr / init_std of its size, as for any
O(1) weight, and the growth rate of the state follows the loss instead of the learning rate.

Modes: "scan" (the exact solver applies each step's exponential to the state instead of forming it, a kernel
running the recurrence through time: C on CPU, Triton on CUDA for float32, N <= 128 and batches of 14 or more,
``ssm_lab.ops.exp_action.affine_flow_recurrence``: m 2^s matrix-vector products per step against ~(5 + s)
matrix products; otherwise, and for the Euler solver, the per-step affine maps are formed and run by
``ssm_lab.ops.matrix_scan.matrix_recurrence``: a time-loop kernel, or the parallel scan where none applies), in
windows of ``chunk_length`` steps ("auto": the whole sequence on CUDA, 16 MiB of maps on CPU,
``ssm_lab.ops.matrix_scan.window_steps``), optionally recomputed in the backward pass: memory bounded by the
window),
"parallel" (the maps always formed and composed by the parallel scan over matrix products: O(L N^3) work in
O(log L) depth), "loop" (the recurrence step by step, the reference) and "adaptive" (an embedded Dormand-Prince
RK5(4) with error control on every increment, for comparison with the fixed-step solvers; ``solver`` unused).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, check_state, state_at_lengths, zero_padding
from ssm_lab.cores.stepping import check_timesteps, step_through
from ssm_lab.ops.exp_action import affine_flow_recurrence
from ssm_lab.ops.matrix_scan import (
    affine_step,
    batched_affine_exp,
    chunked_matrix_recurrence,
    matrix_recurrence,
    window_steps,
)
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive

SOLVERS = ("exp", "euler")

# Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae": nodes, stages, the 5th-order
# weights (also the last stage, FSAL) and the 5th-minus-4th-order error weights.
_DP_NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_STAGES = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_ERROR = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def dormand_prince_affine(M: Tensor, v: Tensor, h: Tensor, rtol: float, atol: float) -> tuple[Tensor, int]:
    """Solve h' = M h + v over s in [0, 1] with adaptive steps. M: (B, N, N), v, h: (B, N).

    One step size for the whole batch (the worst element's error decides). Returns (h(1), steps taken).
    A step is accepted when the scaled error norm is <= 1; the next step is the last one times
    min(5, max(0.2, 0.9 err^-1/5)), or 0.2 times it when err is not finite (a step so long that the stages
    overflow). Raises FloatingPointError where no step can succeed: when the field M h + v itself is not
    finite (a NaN or an infinity in M, v or h), or when the step falls below eps of h's dtype (times the unit
    interval), where s + step could no longer advance."""
    field = partial(affine_step, M, v)
    smallest_step = torch.finfo(h.dtype).eps
    s, step, steps = 0.0, 0.5, 0
    while s < 1.0:
        if step < smallest_step:
            raise FloatingPointError(
                f"dormand_prince_affine: the step fell to {step:.3g} < eps = {smallest_step:.3g} at s = {s:.6g} "
                f"without meeting rtol = {rtol:g}, atol = {atol:g}"
            )
        step = min(step, 1.0 - s)
        stages = [field(h)]
        for row in _DP_STAGES[1:]:
            stages.append(field(h + step * sum(weight * k for weight, k in zip(row, stages, strict=False))))
        proposal = h + step * sum(weight * k for weight, k in zip(_DP_STAGES[-1], stages, strict=False))
        error = step * sum(weight * k for weight, k in zip(_DP_ERROR, stages, strict=True))
        scale = atol + rtol * torch.maximum(h.abs(), proposal.abs())
        error_norm = float(((error / scale) ** 2).mean(-1).sqrt().max().detach())
        if not math.isfinite(error_norm):
            if not bool(torch.isfinite(stages[0]).all()):
                raise FloatingPointError(
                    f"dormand_prince_affine: the field M h + v is not finite at s = {s:.6g} (step {step:.3g}): "
                    "M, v or the state holds a NaN or an infinity"
                )
            step *= 0.2
            continue
        if error_norm <= 1.0:
            s, h, steps = s + step, proposal, steps + 1
        step *= min(5.0, max(0.2, 0.9 * max(error_norm, 1e-10) ** -0.2))
    return h, steps


class LinearCDE(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: (B, d_state) real."""

    modes = ("scan", "parallel", "loop", "adaptive")
    time_varying = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        solver: str = "exp",
        init_std: float = 1.0,
        rtol: float = 1e-6,
        atol: float = 1e-8,
        max_exp_batch: int | str | None = "auto",
        chunk_length: int | str | None = "auto",
        recompute: bool = False,
    ) -> None:
        """``max_exp_batch``: most matrices per ``affine_exp`` call where the exponentials are formed (None: one call;
        "auto": by device, see ``ssm_lab.ops.matrix_scan.AUTO_EXP_BATCH``); ``chunk_length``: steps per scan window
        (None: the whole sequence; "auto": by device); ``recompute``: rebuild each window's maps in backward."""
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        check_positive(d_model=d_model, d_state=d_state)
        if init_std <= 0 or rtol <= 0 or atol <= 0:
            raise ValueError(f"init_std, rtol and atol must be positive, got {init_std}, {rtol}, {atol}")
        if (
            max_exp_batch != "auto"
            and max_exp_batch is not None
            and (not isinstance(max_exp_batch, int) or max_exp_batch <= 0)
        ):
            raise ValueError(f"max_exp_batch must be a positive integer, 'auto' or None, got {max_exp_batch!r}")
        if chunk_length not in (None, "auto") and (not isinstance(chunk_length, int) or chunk_length <= 0):
            raise ValueError(f"chunk_length must be a positive integer, 'auto' or None, got {chunk_length!r}")
        self.d_model, self.d_state, self.solver, self.rtol, self.atol = d_model, d_state, solver, rtol, atol
        self.max_exp_batch, self.chunk_length, self.recompute = max_exp_batch, chunk_length, recompute
        channels = d_model + 1  # the time channel first
        # A_i = field_scale * A_weight[i]: the weight is O(init_std), the fixed 1/sqrt(N (1 + H)) lives outside it
        # (a reparametrisation; see the module docstring for why Adam needs it).
        self.field_scale = 1.0 / math.sqrt(d_state * channels)
        self.A_weight = nn.Parameter(torch.randn(channels, d_state, d_state) * init_std)
        mark_recurrence(self.A_weight)
        self.B = nn.Parameter(torch.randn(d_state, channels) / math.sqrt(channels))
        self.readout = nn.Linear(d_state, d_model)

    def _increments(self, x: Tensor, timesteps: Tensor | None) -> Tensor:
        """(tau_t, x_t): (..., 1 + d_model); tau = 1 on a regular grid."""
        time = torch.ones_like(x[..., :1]) if timesteps is None else timesteps.unsqueeze(-1).to(x.dtype)
        return torch.cat([time, x], dim=-1)

    def vector_field(self, x: Tensor, timesteps: Tensor | None) -> tuple[Tensor, Tensor]:
        """(M_t: (..., N, N), v_t: (..., N)) of the affine ODE on each increment."""
        return self._fields(self._increments(x, timesteps))

    def _fields(self, increments: Tensor) -> tuple[Tensor, Tensor]:
        """``vector_field`` from the increments. M_t = sum_i Delta X^i_t A_i is one product of the increments with
        the (1 + H, N N) scaled fields, laid out column-major (the transpose of a contiguous tensor): the order in
        which the kernels of the exact solver read it. In the parameters' precision even under autocast: the
        solver exponentiates M_t and multiplies L of them, which half precision would not survive."""
        with torch.autocast(increments.device.type, enabled=False):
            increments = increments.to(self.A_weight.dtype)
            fields = (self.A_weight * self.field_scale).mT.flatten(1)  # row i: A_i^T, flattened
            M = (increments @ fields).unflatten(-1, (self.d_state, self.d_state)).mT
            return M, increments @ self.B.T

    def _euler_maps(self, increments: Tensor) -> tuple[Tensor, Tensor]:
        """The Euler step's affine map per increment: (I + M_t, v_t)."""
        M, v = self._fields(increments)
        return torch.eye(self.d_state, dtype=M.dtype, device=M.device) + M, v

    def transitions(self, x: Tensor, timesteps: Tensor | None) -> tuple[Tensor, Tensor]:
        """The fixed-step solver's affine map per increment: h_t = T_t h_{t-1} + c_t."""
        increments = self._increments(x, timesteps)
        if self.solver == "euler":
            return self._euler_maps(increments)
        return batched_affine_exp(*self._fields(increments), self.max_exp_batch)

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(batch, self.d_state, dtype=self.B.dtype, device=device or self.B.device)

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
        check_mode(mode, self.modes, "LinearCDE")
        check_timesteps(integration_timesteps, x)
        if state is None:
            state = self.default_state(x.shape[0], x.device)
        else:  # "scan" and "loop" would broadcast a state of another batch size
            check_state(self, state, x.shape[0])
        x = zero_padding(x, lengths)  # a NaN in the padding would also stall the adaptive solver's one step size
        per_step = {"integration_timesteps": integration_timesteps}
        if mode == "loop":
            return step_through(self.step, x, state, lengths, per_step)
        if mode == "adaptive":
            return step_through(self._adaptive_step, x, state, lengths, per_step)

        if self.solver == "euler":
            maps, recurrence = self._euler_maps, partial(matrix_recurrence, mode=mode)
        else:  # the flow of each step's field: by its exponential's action on the state where that is faster
            maps = self._fields
            recurrence = partial(affine_flow_recurrence, mode=mode, max_exp_batch=self.max_exp_batch)
        steps = window_steps(self.chunk_length, x.shape[0], self.d_state, self.B.dtype, x.device)
        increments = self._increments(x, integration_timesteps)
        states = chunked_matrix_recurrence(maps, (increments,), state, steps, self.recompute, recurrence)
        return self.readout(states), state_at_lengths(states, lengths, checked=True)

    def step(self, x_t: Tensor, state: Tensor, integration_timesteps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x_t: (B, d_model), state: (B, d_state) -> (y_t, next state), one fixed solver step."""
        state = affine_step(*self.transitions(x_t, integration_timesteps), state)
        return self.readout(state), state

    def _adaptive_step(self, x_t: Tensor, state: Tensor, integration_timesteps: Tensor | None = None):
        M, v = self.vector_field(x_t, integration_timesteps)
        state, _ = dormand_prince_affine(M, v, state, self.rtol, self.atol)
        return self.readout(state), state
