"""Classic recurrent cores from torch.nn wrapped to the core contract: Elman RNN (tanh), LSTM
(Hochreiter & Schmidhuber 1997) and GRU (Cho et al. 2014), hidden size = d_model.

mode "scan" runs torch's fused implementation (cuDNN on GPU, packed for padded batches), except the GRU
on CPU, where torch's implementation records every gate of every step for autograd: there it runs
``ssm_lab.ops.gru.gru_sequence`` (a hand-written backward, 2x faster at B=16, L=1024, H=64). Mode
"loop" is the cell equations written out below, step by step, on the same weights:

    rnn:  h = tanh(W_i x + b_i + W_h h + b_h)
    gru:  r, z = sigmoid(.), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h = (1 - z) n + z h
    lstm: i, f, o = sigmoid(.), g = tanh(.), c = f c + i g, h = o tanh(c)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ssm_lab.cores.base import check_input, check_mode, check_state, state_at_lengths, zero_padding
from ssm_lab.cores.stepping import step_through
from ssm_lab.ops.gru import gru_sequence
from ssm_lab.validation import check_positive

_TORCH_CLASSES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class TorchRecurrentCore(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state (B, d_model), for the LSTM a pair (h, c)."""

    modes = ("scan", "loop")

    def __init__(self, d_model: int, cell: str = "lstm") -> None:
        super().__init__()
        if cell not in _TORCH_CLASSES:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(_TORCH_CLASSES)}")
        check_positive(d_model=d_model)
        self.d_model, self.cell = d_model, cell
        self.rnn = _TORCH_CLASSES[cell](d_model, d_model, batch_first=True)

    def default_state(self, batch: int, device: torch.device | None = None):
        weight = self.rnn.weight_hh_l0
        h = torch.zeros(batch, self.d_model, dtype=weight.dtype, device=device or weight.device)
        return (h, h.clone()) if self.cell == "lstm" else h

    def _to_torch(self, state):
        if self.cell == "lstm":
            return tuple(s.unsqueeze(0).contiguous() for s in state)
        return state.unsqueeze(0).contiguous()

    def forward(self, x: Tensor, state=None, mode: str = "scan", lengths: Tensor | None = None):
        """x: (B, L, d_model), state or None -> (y: (B, L, d_model), final state at ``lengths``)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, self.cell)
        if state is None:
            state = self.default_state(x.shape[0], x.device)
        check_state(self, state, x.shape[0], self.cell)
        x = zero_padding(x, lengths)
        if mode == "loop":
            return step_through(self.step, x, state, lengths)
        if self.cell == "gru" and not x.is_cuda:  # causal: padding after a sequence never reaches its states
            rnn = self.rnn
            y = gru_sequence(x, state, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
            return y, state_at_lengths(y, lengths, checked=True)
        if lengths is None:
            y, final = self.rnn(x, self._to_torch(state))
        else:  # packing keeps padding out of the final state; padded outputs come back as zeros
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_y, final = self.rnn(packed, self._to_torch(state))
            y, _ = pad_packed_sequence(packed_y, batch_first=True, total_length=x.shape[1])
        final = tuple(s.squeeze(0) for s in final) if self.cell == "lstm" else final.squeeze(0)
        return y, final

    def step(self, x_t: Tensor, state):
        """x_t: (B, d_model) -> (y_t, next state), the cell equations of the module docstring."""
        rnn = self.rnn
        from_input = x_t @ rnn.weight_ih_l0.T + rnn.bias_ih_l0
        h = state[0] if self.cell == "lstm" else state
        from_state = h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        if self.cell == "rnn":
            h = torch.tanh(from_input + from_state)
            return h, h
        if self.cell == "gru":
            i_r, i_z, i_n = from_input.chunk(3, dim=-1)
            h_r, h_z, h_n = from_state.chunk(3, dim=-1)
            reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            candidate = torch.tanh(i_n + reset * h_n)
            h = (1 - update) * candidate + update * h
            return h, h
        i, f, g, o = (from_input + from_state).chunk(4, dim=-1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)
