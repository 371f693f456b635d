"""What the tv step-matrix kernels (``ssm_lab/ops/triton/tv_steps.py``, ``ssm_lab/ops/cpu/tv_steps.py``) share:
the layout they read the selection's pre-activations in, and the dtype constants of the norm."""

from __future__ import annotations

import torch
from torch import Tensor


def planes(selected: Tensor) -> tuple[Tensor, int, int]:
    """selected (3, B, L, N) as a (3, T, N) view with unit channel stride (a copy only if the layout has
    none), and its (component, token) strides."""
    flat = selected.flatten(1, 2)
    if flat.stride(2) != 1:
        flat = flat.contiguous()
    return flat, flat.stride(0), flat.stride(1)


def precision(dtype: torch.dtype) -> tuple[float, float]:
    """(sqrt(tiny), eps) of ``dtype``: the norm's guard under the square roots and its rounding margin."""
    info = torch.finfo(dtype)
    return info.tiny**0.5, info.eps
