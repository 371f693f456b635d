"""A one-layer GRU over a whole sequence with a hand-written backward: the CPU path of the gru core.

PyTorch's GRU (Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder"), with
[i_r, i_z, i_n] = W_ih x_t + b_ih and [g_r, g_z, g_n] = W_hh h_{t-1} + b_hh:

    r = sigmoid(i_r + g_r),   z = sigmoid(i_z + g_z),   n = tanh(i_n + r g_n),   h_t = n + z (h_{t-1} - n).

torch.nn.GRU on CPU runs every step's gates as separate operations, each recorded for autograd, so its
backward walks some twenty graph nodes per step. Here the backward needs four operations per step. With
d_t = dL/dh_t (from y_t and from step t + 1), the chain rule through one step is

    da_n = d (1 - z)(1 - n^2),   da_r = da_n g_n r (1 - r),   da_z = d (h_{t-1} - n) z (1 - z),   dg_n = da_n r,
    dL/dh_{t-1} = d z + [da_r, da_z, dg_n] W_hh,   dL/d(i_r, i_z, i_n) = (da_r, da_z, da_n),
    dL/d(g_r, g_z, g_n) = (da_r, da_z, dg_n):

every factor multiplying d is known once the forward has run, so the backward first forms
k = [(1 - z)(1 - n^2) g_n r (1 - r), (h_{t-1} - n) z (1 - z), (1 - z)(1 - n^2) r] for all steps at once,
then loops d_t = dy_t + c, dg_t = d_t k_t (per gate block), c = d_t z_t + dg_t W_hh, and ends with the
weight gradients as matrix products over the whole sequence. Internals are time-major (L, B, .) so that
each step reads and writes contiguous rows. ``TorchRecurrentCore`` (mode "loop", and torch.nn.GRU itself)
is the reference twin (tests/test_cores_contract.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gru_sequence"]


def gru_sequence(
    x: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor
) -> Tensor:
    """All states of the GRU: x (B, L, H_in), h0 (B, H) and torch.nn.GRU's layer-0 weights (3H, H_in),
    (3H, H), (3H,), (3H,) -> h (B, L, H) (a time-major buffer viewed batch first). Gradients flow to every
    input."""
    return _GRUSequence.apply(x, h0, weight_ih, weight_hh, bias_ih, bias_hh).transpose(0, 1)


class _GRUSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
        batch, length, _ = x.shape
        hidden = weight_hh.shape[1]
        x_time_major = x.transpose(0, 1).reshape(length * batch, -1)
        from_input = torch.addmm(bias_ih, x_time_major, weight_ih.t()).view(length, batch, 3 * hidden)
        from_state = x.new_empty(length, batch, 3 * hidden)  # g = W_hh h_{t-1} + b_hh, kept for the backward
        gates = x.new_empty(length, batch, 2 * hidden)  # (r, z)
        candidates = x.new_empty(length, batch, hidden)  # n
        states = x.new_empty(length, batch, hidden)
        difference = x.new_empty(batch, hidden)
        weight_hh_t = weight_hh.t()
        # per-step views made once (unbind), not sliced anew in every iteration
        steps = zip(
            from_input[..., : 2 * hidden].unbind(0), from_input[..., 2 * hidden :].unbind(0),
            from_state.unbind(0), gates.unbind(0), candidates.unbind(0), states.unbind(0), strict=True,
        )  # fmt: skip
        h = h0
        for input_rz, input_n, g, rz, n, h_next in steps:
            torch.addmm(bias_hh, h, weight_hh_t, out=g)
            torch.add(input_rz, g[:, : 2 * hidden], out=rz).sigmoid_()
            torch.addcmul(input_n, rz[:, :hidden], g[:, 2 * hidden :], out=n).tanh_()
            torch.sub(h, n, out=difference)
            h = torch.addcmul(n, rz[:, hidden:], difference, out=h_next)
        ctx.save_for_backward(x_time_major, h0, weight_ih, weight_hh, from_state, gates, candidates, states)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states):
        x_time_major, h0, weight_ih, weight_hh, from_state, gates, candidates, states = ctx.saved_tensors
        length, batch, hidden = states.shape
        reset, update = gates[..., :hidden], gates[..., hidden:]
        previous = torch.cat([h0.unsqueeze(0), states[:-1]])  # h_{t-1}
        # the per-element factors of d in (dg_r, dg_z, dg_n) and da_n (module docstring)
        factors = torch.empty(length, batch, 3, hidden, dtype=states.dtype, device=states.device)
        candidate_factor = (1 - update) * (1 - candidates.square())  # da_n / d
        torch.mul(candidate_factor * from_state[..., 2 * hidden :], reset * (1 - reset), out=factors[:, :, 0])
        torch.mul(previous - candidates, update * (1 - update), out=factors[:, :, 1])
        torch.mul(candidate_factor, reset, out=factors[:, :, 2])
        grad_from_state = torch.empty_like(factors)
        grads = torch.empty_like(states)  # d_t
        carry = torch.zeros_like(h0)
        flat_grad_from_state = grad_from_state.view(length, batch, 3 * hidden)
        steps = zip(
            grad_states.unbind(0), grads.unbind(0), factors.unbind(0), grad_from_state.unbind(0),
            flat_grad_from_state.unbind(0), update.unbind(0), strict=True,
        )  # fmt: skip
        for grad_state, d, factor, grad_g, flat_grad_g, z in reversed(list(steps)):
            torch.add(grad_state, carry, out=d)
            torch.mul(d.unsqueeze(1), factor, out=grad_g)
            carry = torch.addmm(d * z, flat_grad_g, weight_hh)
        grad_from_state = grad_from_state.view(length * batch, 3 * hidden)
        grad_from_input = grad_from_state.clone()  # da_n replaces dg_n = da_n r in the candidate block
        torch.mul(grads, candidate_factor, out=grad_from_input.view(length, batch, 3, hidden)[:, :, 2])
        grad_x = (grad_from_input @ weight_ih).view(length, batch, -1).transpose(0, 1)
        return (
            grad_x,
            carry,
            grad_from_input.t() @ x_time_major,
            grad_from_state.t() @ previous.view(length * batch, hidden),
            grad_from_input.sum(0),
            grad_from_state.sum(0),
        )
