"""Causal multi-head self-attention (Vaswani et al. 2017, "Attention Is All You Need") as a core,
with sinusoidal absolute positions added to the input before the projections:

    q, k, v = W_q z, W_k z, W_v z,  z_t = x_t + PE(position_t)
    y_t = W_o concat_heads(softmax(q_t k_{<=t}^T / sqrt(d_head)) v_{<=t})

The state is a key/value cache: (keys, values) of shape (B, heads, T, d_head) and ``valid``
(B, T), which marks the cached positions that hold real tokens (padding is cached but masked),
so a sequence continued from a state sees exactly the keys of its real past tokens and the next
position is ``valid.sum(1)``. Modes: "scan" (all queries at once) and "loop" (``step`` per token).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_input, check_mode, zero_padding
from ssm_lab.validation import check_positive

KVCache = tuple[Tensor, Tensor, Tensor]


def sinusoidal_positions(positions: Tensor, d_model: int) -> Tensor:
    """PE(p)_{2i} = sin(p / 10000^(2i/d)), PE(p)_{2i+1} = cos(...). positions: (...) -> (..., d_model)."""
    frequencies = torch.exp(
        -math.log(10000.0) * torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float64) / d_model
    )
    angles = positions.unsqueeze(-1).to(torch.float64) * frequencies
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)[..., :d_model]


class CausalSelfAttention(nn.Module):
    """x: (B, L, d_model) -> y: (B, L, d_model); state: the key/value cache of the module docstring."""

    modes = ("scan", "loop")

    def __init__(self, d_model: int, n_heads: int = 4) -> None:
        super().__init__()
        check_positive(d_model=d_model)
        if not isinstance(n_heads, int) or n_heads <= 0 or d_model % n_heads:
            raise ValueError(f"n_heads must be a positive divisor of d_model={d_model}, got {n_heads!r}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def default_state(self, batch: int, device: torch.device | None = None) -> KVCache:
        device = device or self.out.weight.device
        empty = torch.zeros(batch, self.n_heads, 0, self.d_head, dtype=self.out.weight.dtype, device=device)
        return empty, empty.clone(), torch.zeros(batch, 0, dtype=torch.bool, device=device)

    def _heads(self, x: Tensor, cache: KVCache) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, L, d_model) at the positions following the cache -> q, k, v: (B, heads, L, d_head)."""
        steps = torch.arange(x.shape[1], device=x.device)
        if cache[2].shape[1] == 0:  # a fresh sequence: one (L, d_model) table shared by the batch
            z = x + sinusoidal_positions(steps, self.d_model).to(x.dtype)
        else:
            z = x + sinusoidal_positions(cache[2].sum(1, keepdim=True) + steps, self.d_model).to(x.dtype)
        # split (B, L, 3, heads, d_head) on its own axis: SDPA returns gradients in (B, L, heads, d_head) memory, which
        # the backward stacks straight into the projection's layout (after a permute it would copy them once more)
        q, k, v = (part.transpose(1, 2) for part in self.qkv(z).unflatten(-1, (3, self.n_heads, self.d_head)).unbind(2))
        return q, k, v

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """mask: (B, 1, L, T) True where attention is allowed, or None for plain causal (T = L) -> (B, L, d_model).

        Without a mask SDPA's causal flash kernel skips the blocks above the diagonal; a boolean
        mask forces the dense L x T scores (and reading the mask)."""
        if mask is None:
            attended = nn.functional.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:
            attended = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out(attended.transpose(1, 2).flatten(2))

    def forward(self, x: Tensor, state: KVCache | None = None, mode: str = "scan", lengths: Tensor | None = None):
        """x: (B, L, d_model), cache or None -> (y: (B, L, d_model), cache extended by the real tokens)."""
        check_input(x, self.d_model)
        check_mode(mode, self.modes, "transformer")
        batch, length, _ = x.shape
        cache = self.default_state(batch, x.device) if state is None else self._checked(state, batch)
        x = zero_padding(x, lengths)
        if mode == "loop":
            outputs = []
            for x_t in x.unbind(1):  # by unbind (see ssm_lab.ops.scan.linear_recurrence_ref)
                y_t, cache = self.step(x_t, cache)
                outputs.append(y_t)
            y = torch.stack(outputs, dim=1)
        else:
            q, k, v = self._heads(x, cache)
            if cache[2].shape[1] == 0:  # no past tokens: plain causal attention, no mask, no concatenation
                keys, values, mask = k, v, None
            else:
                causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
                mask = torch.cat([cache[2].unsqueeze(1).expand(-1, length, -1), causal.expand(batch, -1, -1)], dim=2)
                keys, values, mask = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2), mask.unsqueeze(1)
            y = self._attend(q, keys, values, mask)
            cache = (
                keys,
                values,
                torch.cat([cache[2], torch.ones(batch, length, dtype=torch.bool, device=x.device)], 1),
            )
        if lengths is not None:  # padding stays in the cache, zeroed and masked out of every later query
            real = torch.arange(length, device=x.device) < lengths.to(x.device).unsqueeze(1)
            valid = torch.cat([cache[2][:, : cache[2].shape[1] - length], real], dim=1)
            keep = valid[:, None, :, None]
            cache = (torch.where(keep, cache[0], 0.0), torch.where(keep, cache[1], 0.0), valid)
        return y, cache

    def _checked(self, cache: KVCache, batch: int) -> KVCache:
        """The cache, after checking it is (keys, values: (B, heads, T, d_head), valid: (B, T)) for this batch."""
        shapes = [tuple(part.shape) for part in cache] if isinstance(cache, tuple) and len(cache) == 3 else None
        past = shapes[2][-1] if shapes is not None and len(shapes[2]) == 2 else None
        heads = (batch, self.n_heads, past, self.d_head)
        if shapes != [heads, heads, (batch, past)]:
            raise ValueError(
                f"transformer state must be (keys, values: (B, heads, T, d_head) = ({batch}, {self.n_heads}, T, "
                f"{self.d_head}), valid: (B, T)), got {shapes if shapes is not None else type(cache).__name__}"
            )
        return cache

    def step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """x_t: (B, d_model) -> (y_t, cache with x_t appended)."""
        q, k, v = self._heads(x_t.unsqueeze(1), state)
        keys, values = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)
        valid = torch.cat([state[2], torch.ones(x_t.shape[0], 1, dtype=torch.bool, device=x_t.device)], dim=1)
        y = self._attend(q, keys, values, valid[:, None, None, :])
        return y[:, 0], (keys, values, valid)
