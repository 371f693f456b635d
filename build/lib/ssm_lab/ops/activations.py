"""Elementwise activations in the form that runs fastest where they run."""

from __future__ import annotations

import torch
from torch import Tensor


def fast_tanh(x: Tensor, out: Tensor | None = None) -> Tensor:
    """tanh(x), into ``out`` (or a new tensor).

    On CPU in float32/float64 as 2 sigmoid(2x) - 1 by in-place passes: torch's CPU tanh takes ~10x its
    sigmoid there (1.2 vs 0.12 ms for 2^20 float32 on 2 threads). The identity is exact, but in floating
    point its error is absolute, a few eps (near 0 the subtraction cancels): harmless in float32/float64,
    not in half precision (bf16 would lose small arguments entirely), so half types and GPUs, where tanh
    is as cheap as sigmoid, call torch.tanh."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)
    return torch.tanh(x, out=out)
