"""Causal long convolution by FFT, the "conv" mode of LTI cores (S4, S4D, LRU, l2n):
y_t = sum_{s<=t} k_s u_{t-s}, in O(L log L) by zero-padding to 2L so the circular
convolution equals the linear one."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_conv_ref(u: Tensor, kernel: Tensor) -> Tensor:
    """Direct O(L^2) sum, the reference. u: (B, L, H), kernel: (L, H) -> (B, L, H)."""
    length = u.shape[1]
    out = torch.zeros_like(u)
    for t in range(length):
        out[:, t] = (kernel[: t + 1].flip(0).unsqueeze(0) * u[:, : t + 1]).sum(dim=1)
    return out


def causal_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """FFT convolution. u: (B, L, H) real, kernel: (L, H) real -> (B, L, H)."""
    if u.dim() != 3 or kernel.shape != u.shape[1:]:
        raise ValueError(f"need u: (B, L, H) and kernel: (L, H); got {tuple(u.shape)} and {tuple(kernel.shape)}")
    length = u.shape[1]
    n = 2 * length
    spectrum = torch.fft.rfft(u, n=n, dim=1) * torch.fft.rfft(kernel, n=n, dim=0).unsqueeze(0)
    return torch.fft.irfft(spectrum, n=n, dim=1)[:, :length]
