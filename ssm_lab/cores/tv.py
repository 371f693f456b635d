"""tv: a time-varying, input-selective diagonal recurrence with a certified L2 gain, after the
"tv" cell of neural-ssm (Massai et al., arXiv 2503.23818) and Mamba's selection (Gu & Dao 2023).

    u~_t = W_in x_t,   (a_t, b_t, c_t) = selection(x_t)        (per coordinate n = 1..N)
    h_t = a_t h_{t-1} + b_t gamma u~_t,   yhat_t = c_t h_{t-1},   y_t = W_out yhat_t

a_t = exp(-softplus(delta_t) softplus(alpha)) in (0, 1), b, c = tanh(.), then each coordinate's
step matrix M = [[a, b], [c, 0]] is divided by max(1, ||M||_2), with the exact 2x2 norm in closed
form ||M||_2 = (|a + i(b-c)| + |a + i(b+c)|) / 2 (no SVD; ``normalize_2x2`` has the general
[[a, b], [c, d]] form). As in neural-ssm's cell there is no per-coordinate feedthrough: the block's
residual path carries x to the output. Per coordinate and step
h_t^2 + yhat_t^2 <= h_{t-1}^2 + gamma^2 u~_t^2, whatever the input chose; summed from h = 0 with
||W_in||, ||W_out|| <= 1 (Gram-iteration normalisation), sum ||y_t||^2 <= gamma^2 sum ||x_t||^2.
The bound holds for every input and every parameter value; it is a gain bound, not an
incremental one (a_t depends on x).

Under autocast the three GEMMs (selection, W_in, W_out) run in half precision, but the recurrence (step
matrices, scan, states) runs in the parameters' dtype, its inputs cast to it: in bf16 the norm's (1 + 4 eps)
margin alone divides every step by >= 1.031, a decay compounding over the sequence (~9% error at L = 64),
and the state would come out bf16.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, state_at_lengths, zero_padding
from ssm_lab.cores.l2n import check_gamma
from ssm_lab.inference_cache import cached_without_grad
from ssm_lab.ops.activations import fast_tanh
from ssm_lab.ops.scan import linear_recurrence, linear_recurrence_adjoint
from ssm_lab.ops.spectral import normalize_to_contraction
from ssm_lab.optim import mark_recurrence
from ssm_lab.validation import check_positive

try:  # Triton ships with CUDA builds of torch
    from ssm_lab.ops.triton import tv_steps as triton_steps
except ImportError:
    triton_steps = None
try:  # compiled on first import (ssm_lab.ops.cpu.build); without a compiler the torch passes run on CPU
    from ssm_lab.ops.cpu import tv_steps as cpu_steps
except ImportError:
    cpu_steps = None


def _steps_kernel(selected: Tensor, drive_input: Tensor) -> ModuleType | None:
    """The step-matrix kernels for these inputs (Triton on CUDA, C on CPU), or None: the torch passes."""
    for kernels in (triton_steps, cpu_steps):
        if kernels is not None and kernels.tv_steps_applies(selected, drive_input):
            return kernels
    return None


def normalize_2x2(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Divide each [[a, b], [c, d]] (elementwise tensors) by max(1, its spectral norm), so ||.||_2 <= 1.

    The tiny constant under the square roots keeps gradients finite where a 2x2 block is a
    multiple of a rotation or reflection; it only enlarges the norm, which keeps the bound valid.
    The (1 + 4 eps) factor covers the rounding of the four divisions.
    """
    tiny = torch.finfo(a.dtype).tiny ** 0.5
    norm = 0.5 * (torch.sqrt((a + d) ** 2 + (b - c) ** 2 + tiny) + torch.sqrt((a - d) ** 2 + (b + c) ** 2 + tiny))
    scale = norm.clamp_min(1.0) * (1 + 4 * torch.finfo(a.dtype).eps)
    return a / scale, b / scale, c / scale, d / scale


def step_matrices_ref(selected: Tensor, delta_bias: Tensor, alpha: Tensor) -> Tensor:
    """The step matrices by autograd through each operation (used by ``tv_recurrence_ref``).

    selected: (3, ..., N) = the (delta, b, c) pre-activations stacked first -> (a, b, c): (3, ..., N),
    a = exp(-softplus(delta + delta_bias) softplus(alpha)), b, c = tanh(.), each [[a, b], [c, 0]]
    divided by max(1, its norm) (``normalize_2x2``)."""
    delta, b, c = selected.unbind(0)
    rate = nn.functional.softplus(delta + delta_bias) * nn.functional.softplus(alpha)
    a, b, c, _ = normalize_2x2(torch.exp(-rate), torch.tanh(b), torch.tanh(c), torch.zeros_like(b))
    return torch.stack([a, b, c])


def _moduli(raw: Tensor) -> tuple[Tensor, Tensor]:
    """p = |a + i(b - c)|, q = |a + i(b + c)| of each [[a, b], [c, 0]] in raw = (a, b, c) stacked first
    (``normalize_2x2``'s tiny term inside): ||M||_2 = (p + q) / 2."""
    a, b, c = raw.unbind(0)
    a_squared = (a * a).add_(torch.finfo(raw.dtype).tiny ** 0.5)
    difference, total = b - c, b + c  # each becomes its modulus in place: on CPU a fresh buffer costs more than a pass
    return difference.square_().add_(a_squared).sqrt_(), total.square_().add_(a_squared).sqrt_()


def _inverse_scale(p: Tensor, q: Tensor) -> Tensor:
    """1 / s with s = max(1, ||M||_2) (1 + 4 eps), ||M||_2 = (p + q) / 2: the 4 eps cover the rounding of o = k / s."""
    return torch.add(p, q).mul_(0.5).clamp_min_(1.0).mul_(1 + 4 * torch.finfo(p.dtype).eps).reciprocal_()


def _raw_step_matrices(selected: Tensor, delta_bias: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """(raw = (a, b, c) before normalisation: (3, ..., N), the softplus input delta + delta_bias)."""
    shifted = selected[0] + delta_bias
    raw = torch.empty(selected.shape, dtype=selected.dtype, device=selected.device)  # contiguous planes
    rate = nn.functional.softplus(shifted).mul_(-nn.functional.softplus(alpha))
    torch.exp(rate, out=raw[0])
    fast_tanh(selected[1:], out=raw[1:])
    return raw, shifted


def _step_matrices_backward(
    raw: Tensor,
    shifted: Tensor,
    alpha: Tensor,
    grad: Tensor,
    overwrite: bool = False,
    norm_terms: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dselected, dL/ddelta_bias, dL/dalpha) from dL/d(a, b, c) after normalisation; ``overwrite``: the
    caller's ``grad`` becomes dL/dselected (no second (3, ..., N) buffer). ``norm_terms``: (p, q, 1 / s)
    when the caller has them already (they are consumed: overwritten in place), else computed here.

    With d = 0 the norm's moduli are p = |a + i(b - c)| and q = |a + i(b + c)| (``_moduli``),
    s = max(1, (p + q) / 2)(1 + 4 eps), o_k = k / s, so dL/dk = g_k / s + dL/ds ds/dk with
    dL/ds = -sum_k g_k k / s^2, ds/d(p, q) = (1 + 4 eps) / 2 where (p + q) / 2 >= 1 (else 0),
    dp = (a da + (b - c)(db - dc)) / p, dq = (a da + (b + c)(db + dc)) / q; then tanh' = 1 - tanh^2,
    d exp(-r) = -exp(-r) dr, softplus' = sigmoid. p and q are recomputed rather than kept from the forward."""
    eps = torch.finfo(raw.dtype).eps
    a, b, c = raw.unbind(0)
    if norm_terms is None:
        p, q = _moduli(raw)
        norm_terms = (p, q, _inverse_scale(p, q))
    p, q, inverse_scale = norm_terms
    # in place wherever a buffer is free: on CPU a fresh (B, L, N) buffer costs more than the pass that fills it
    dot = (grad[0] * a).addcmul_(grad[1], b).addcmul_(grad[2], c)
    grad_raw = grad.mul_(inverse_scale) if overwrite else grad * inverse_scale  # g_k / s, then the terms through s
    active = torch.add(p, q).ge_(2.0)  # 1 where max(1, .) passes the norm through, else 0
    grad_half = dot.mul_(inverse_scale.square_()).mul_(active).mul_(-(0.5 + 2 * eps))
    weight_p = p.reciprocal_().mul_(grad_half)  # dL/dp
    weight_q = q.reciprocal_().mul_(grad_half)  # dL/dq
    # dL/da += (w_p + w_q) a, dL/db += w_p (b - c) + w_q (b + c) = (w_p + w_q) b + (w_q - w_p) c, dL/dc likewise
    both = weight_p.add_(weight_q)
    opposite = weight_q.mul_(2).sub_(both)  # w_q - w_p
    grad_raw[0].addcmul_(both, a)
    grad_raw[1].addcmul_(both, b).addcmul_(opposite, c)
    grad_raw[2].addcmul_(opposite, b).addcmul_(both, c)
    for k, derivative in ((1, both), (2, opposite)):  # tanh' = 1 - tanh^2, in the buffers now free
        grad_raw[k].mul_(torch.mul(raw[k], raw[k], out=derivative).neg_().add_(1))
    grad_rate = grad_raw[0].mul_(a)  # dL/d(-r), as d exp(-r) = exp(-r) d(-r)
    softplus_shifted = nn.functional.softplus(shifted)
    grad_alpha = -softplus_shifted.mul_(grad_rate).flatten(0, -2).sum(0) * torch.sigmoid(alpha)
    softplus_alpha = nn.functional.softplus(alpha)
    grad_shifted = grad_rate.mul_(torch.sigmoid(shifted, out=softplus_shifted)).mul_(-softplus_alpha)  # in grad_raw[0]
    return grad_raw, grad_shifted.flatten(0, -2).sum(0), grad_alpha


def tv_recurrence_ref(
    selected: Tensor, drive_input: Tensor, h0: Tensor | None, delta_bias: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor]:
    """The tv recurrence by autograd through each step (the reference twin of ``tv_recurrence``):
    (a, b, c) = step matrices, h_t = a_t h_{t-1} + b_t u_t (the loop), z_t = c_t h_{t-1}.
    selected: (3, B, L, N) pre-activations, drive_input u: (B, L, N), h0: (B, N) or None -> (z, h)."""
    a, b, c = step_matrices_ref(selected, delta_bias, alpha).unbind(0)
    states = linear_recurrence(a, b * drive_input, h0, mode="loop")
    first = torch.zeros_like(states[:, 0]) if h0 is None else h0
    return c * torch.cat([first.unsqueeze(1), states[:, :-1]], dim=1), states


def tv_recurrence(
    selected: Tensor, drive_input: Tensor, h0: Tensor | None, delta_bias: Tensor, alpha: Tensor, mode: str = "scan"
) -> tuple[Tensor, Tensor]:
    """``tv_recurrence_ref`` as one autograd node around the fast scan of ``mode``: it keeps the raw
    step matrices, the softplus input, u and the states ((6, B, L, N) in all) instead of every
    intermediate, and its backward runs the scan's own adjoint (``linear_recurrence_adjoint``: the
    Triton backward kernel on a GPU) then the step matrices' backward. Equal values and gradients
    (tests/test_certified_cores.py)."""
    return _TVRecurrence.apply(selected, drive_input, h0, delta_bias, alpha, mode)


def _shifted_product(c: Tensor, states: Tensor, h0: Tensor | None, out: Tensor | None = None) -> Tensor:
    """c_t h_{t-1} for every t (h_{-1} = h0, or 0), without a shifted copy of the states."""
    product = torch.empty_like(states) if out is None else out
    torch.mul(c[:, 1:], states[:, :-1], out=product[:, 1:])
    if h0 is None:
        product[:, 0] = 0
    else:
        torch.mul(c[:, 0], h0, out=product[:, 0])
    return product


class _TVRecurrence(torch.autograd.Function):
    """Forward: (a, b, c) = step matrices, h = scan(a, b u, h0), z_t = c_t h_{t-1}. Backward, with
    dz and dh (from the caller's use of the states): dc_t = dz_t h_{t-1}; the states receive
    dh_t + dz_{t+1} c_{t+1} and h0 receives dz_0 c_0; the scan's adjoint gives (da, d(bu), dh0);
    db = d(bu) u, du = d(bu) b; then the step matrices' backward. The step matrices and their backward are
    one kernel pass each where ``_steps_kernel`` finds one (Triton on CUDA: ``ssm_lab.ops.triton.tv_steps``;
    C on CPU: ``ssm_lab.ops.cpu.tv_steps``); elsewhere (float64 on CUDA, CPU without a compiler) the torch
    passes below run, which keep the raw step matrices and the softplus input. What the kernels' backward needs
    is theirs to say (``saved``): the Triton one recomputes a and c and the rest from the pre-activations (memory
    limits long sequences on a GPU: no (B, L, N) tensor kept), the C one takes a and c and three planes of
    terms from the forward (on a CPU the recomputed transcendentals were its cost)."""

    @staticmethod
    def forward(ctx, selected, drive_input, h0, delta_bias, alpha, mode):
        ctx.kernels = _steps_kernel(selected, drive_input)
        ctx.fused = ctx.kernels is not None
        if ctx.fused:
            a, drive, c, saved = ctx.kernels.tv_steps(selected, drive_input, delta_bias, alpha)
            ctx.recompute = saved is None
            kept = (selected,) if ctx.recompute else (selected, *saved)
        else:
            raw, shifted = _raw_step_matrices(selected, delta_bias, alpha)
            inverse_scale = _inverse_scale(*_moduli(raw))
            a, c = raw[0] * inverse_scale, raw[2] * inverse_scale
            drive = torch.mul(raw[1], inverse_scale).mul_(drive_input)
            kept = (raw, shifted)
        states = linear_recurrence(a, drive, h0, mode=mode)
        del a, drive
        ctx.save_for_backward(delta_bias, alpha, drive_input, h0, states, *kept)
        ctx.mode = mode
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a (B, L, N) of zeros
        return _shifted_product(c, states, h0), states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor, grad_states: Tensor):
        # ordered so that few (B, L, N) temporaries live at once: each normalised entry is made when needed
        delta_bias, alpha, drive_input, h0, states, *kept = ctx.saved_tensors
        if grad_output is None:
            grad_output = torch.zeros_like(states)
        if ctx.fused and ctx.recompute:
            (selected,) = kept
            a, _, c, saved = ctx.kernels.tv_steps(selected, drive_input, delta_bias, alpha, with_drive=False)
        elif ctx.fused:
            selected, *saved = kept
            a, c = saved[0], saved[1]
        else:
            raw, shifted = kept
            p, q = _moduli(raw)  # with 1 / s, made once for this backward and the step matrices' one
            inverse_scale = _inverse_scale(p, q)
            a, c = raw[0] * inverse_scale, raw[2] * inverse_scale
        grad_abc = None if ctx.fused else torch.empty_like(raw)  # the torch passes' (3, B, L, N) gradient
        grad_c = _shifted_product(grad_output, states, h0, out=None if ctx.fused else grad_abc[2])  # dz_t h_{t-1}
        incoming, grad_states = grad_states, torch.empty_like(states)  # dh_t + dz_{t+1} c_{t+1}, dh_L-1
        if incoming is None:
            torch.mul(grad_output[:, 1:], c[:, 1:], out=grad_states[:, :-1])
            grad_states[:, -1] = 0
        else:
            torch.addcmul(incoming[:, :-1], grad_output[:, 1:], c[:, 1:], out=grad_states[:, :-1])
            grad_states[:, -1] = incoming[:, -1]
        grad_h0_readout = None if h0 is None else grad_output[:, 0] * c[:, 0]
        del c
        grad_a, grad_drive, grad_h0 = linear_recurrence_adjoint(a, states, h0, grad_states, mode=ctx.mode)
        del a, grad_states
        if grad_h0 is not None:
            grad_h0 = grad_h0 + grad_h0_readout
        if ctx.fused:
            grad_selected, grad_drive_input, grad_delta_bias, grad_alpha = ctx.kernels.tv_steps_backward(
                selected, drive_input, delta_bias, alpha, grad_a, grad_drive, grad_c, saved
            )
        else:
            grad_abc[0] = grad_a
            del grad_a
            torch.mul(grad_drive, drive_input, out=grad_abc[1])
            grad_drive_input = grad_drive.mul_(raw[1]).mul_(inverse_scale)  # d(b u) b, b = raw_b / s
            grad_selected, grad_delta_bias, grad_alpha = _step_matrices_backward(
                raw, shifted, alpha, grad_abc, overwrite=True, norm_terms=(p, q, inverse_scale)
            )
        return grad_selected, grad_drive_input, grad_h0, grad_delta_bias, grad_alpha, None


class TV(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model), state: (B, d_state) real; gain <= gain_bound() <= gamma."""

    modes = ("scan", "loop", "chunked")  # see ssm_lab.ops.scan; scan = GPU kernel, or chunked on CPU

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        gamma: float = 1.0,
        train_gamma: bool = True,
        init_rho: float = 0.95,
        init_delta: float = 1.0,
        selection_scale: float = 0.02,
        gram_iterations: int = 8,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state, gram_iterations=gram_iterations)
        check_gamma(gamma, "TV")
        if not 0.0 < init_rho < 1.0 or init_delta <= 0:
            raise ValueError(f"need 0 < init_rho < 1 and init_delta > 0, got {init_rho}, {init_delta}")
        self.d_model, self.d_state, self.gram_iterations = d_model, d_state, gram_iterations
        self.W_in = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(d_model))
        self.W_out = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.selection = nn.Linear(d_model, 3 * d_state)
        nn.init.normal_(self.selection.weight, std=selection_scale)
        nn.init.zeros_(self.selection.bias)
        with torch.no_grad():  # b = c = tanh(1) at init, so the input reaches the state and the output
            self.selection.bias[d_state:].fill_(1.0)
        # softplus(delta_bias) = init_delta and softplus(alpha) init_delta = -log(init_rho): a = init_rho at init
        rate = -math.log(init_rho) / init_delta
        self.delta_bias = nn.Parameter(torch.full((d_state,), math.log(math.expm1(init_delta))))
        self.alpha = nn.Parameter(torch.full((d_state,), math.log(math.expm1(rate))))
        mark_recurrence(self.delta_bias, self.alpha)
        log_gamma = torch.tensor(math.log(gamma))
        if train_gamma:
            self.log_gamma = nn.Parameter(log_gamma)
        else:
            self.register_buffer("log_gamma", log_gamma)

    @cached_without_grad
    def _projections(self) -> tuple[Tensor, Tensor, Tensor]:
        """(W_in, W_out) normalised to contractions, and the product of their certified norms: W_in and W_out^T,
        both (d_state, d_model), in one batched Gram iteration (half the small products and launches)."""
        (W_in, W_out_t), norms = normalize_to_contraction(torch.stack([self.W_in, self.W_out.mT]), self.gram_iterations)
        return W_in, W_out_t.mT, norms[0] * norms[1]  # not prod(): its backward syncs with the host

    def selected(self, x: Tensor) -> Tensor:
        """The selection's (delta, b, c) pre-activations, stacked first: (3, B, L, d_state), a view of
        ``self.selection(x)`` (the recurrence reads it in place on CUDA, copies it once elsewhere)."""
        return self.selection(x).unflatten(-1, (3, self.d_state)).movedim(-2, 0)

    def default_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        return torch.zeros(batch, self.d_state, dtype=self.W_in.dtype, device=device or self.W_in.device)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        residual_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (B, L, d_model), state: (B, d_state) or None -> (y: (B, L, d_model), final state).
        residual_scale s (a scalar tensor): y = x + s W_out yhat instead, s folded into W_out and the
        skip added inside the output product."""
        y, state, _ = self.forward_and_gain_bound(x, state, mode, lengths, residual_scale)
        return y, state

    def forward_and_gain_bound(
        self,
        x: Tensor,
        state: Tensor | None = None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        residual_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(y, final state, gain_bound()): the bound comes with the projections' normalisation."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "TV")
        if state is not None and state.shape != (x.shape[0], self.d_state):
            expected = (x.shape[0], self.d_state)
            raise ValueError(f"TV initial state must be (B, d_state) = {expected}, got {tuple(state.shape)}")
        x = zero_padding(x, lengths)
        W_in, W_out, norm = self._projections()
        drive_input = x @ (torch.exp(self.log_gamma) * W_in).transpose(0, 1)  # gamma folded into the weight
        # the GEMMs may run in autocast's half precision, the recurrence does not (module docstring)
        selected, drive_input = self.selected(x).to(W_in.dtype), drive_input.to(W_in.dtype)
        recurrence_inputs = (selected, drive_input, state, self.delta_bias, self.alpha)
        if mode == "loop":  # the reference, step by step through autograd
            readout, states = tv_recurrence_ref(*recurrence_inputs)
        else:
            readout, states = tv_recurrence(*recurrence_inputs, mode=mode)
        if residual_scale is None:
            y = readout @ W_out.transpose(0, 1)
        else:
            y = torch.addmm(x.flatten(0, -2), readout.flatten(0, -2), (residual_scale * W_out).transpose(0, 1))
            y = y.view_as(x)
        return y, state_at_lengths(states, lengths, checked=True), torch.exp(self.log_gamma) * norm

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: x_t: (B, d_model), state: (B, d_state) -> (y_t: (B, d_model), next state)."""
        y, state = self.forward(x_t.unsqueeze(1), state, mode="loop")
        return y[:, 0], state

    def gain_bound(self) -> Tensor:
        """gamma * ||W_in|| * ||W_out|| (certified norms <= 1): the zero-state L2 gain bound."""
        return torch.exp(self.log_gamma) * self._projections()[2]
