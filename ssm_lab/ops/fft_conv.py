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


class _CausalConv(torch.autograd.Function):
    """The FFT convolution with its adjoint written out: both gradients are causal correlations,
    grad u_s = sum_{t>=s} g_t k_{t-s} and grad k_s = sum_b sum_{t>=s} g_t u_{t-s}, so the backward is one rfft of
    the output gradient and two irffts, reusing the input spectra of the forward (autograd through rfft/irfft
    with padding and slicing costs about twice that)."""

    @staticmethod
    def forward(ctx, u: Tensor, kernel: Tensor) -> Tensor:
        length = u.shape[1]
        n = 2 * length  # zero padding to 2L: the wrap-around of the circular convolution lands on the zeros
        u_spectrum, kernel_spectrum = torch.fft.rfft(u, n=n, dim=1), torch.fft.rfft(kernel, n=n, dim=0)
        ctx.save_for_backward(u_spectrum, kernel_spectrum)
        return torch.fft.irfft(u_spectrum * kernel_spectrum, n=n, dim=1)[:, :length]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        u_spectrum, kernel_spectrum = ctx.saved_tensors
        length = grad.shape[1]
        n = 2 * length
        # with g zero-padded to 2L, the circular correlation at lags -L < t - s < 0 reads the zero half
        grad_spectrum = torch.fft.rfft(grad, n=n, dim=1)
        grad_u = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(grad_spectrum * kernel_spectrum.conj(), n=n, dim=1)[:, :length]
        if ctx.needs_input_grad[1]:
            summed = torch.einsum("bfh,bfh->fh", grad_spectrum, u_spectrum.conj())
            grad_kernel = torch.fft.irfft(summed, n=n, dim=0)[:length]
        return grad_u, grad_kernel


def causal_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """FFT convolution. u: (B, L, H) real, kernel: (L, H) real -> (B, L, H)."""
    if u.dim() != 3 or kernel.shape != u.shape[1:]:
        raise ValueError(f"need u: (B, L, H) and kernel: (L, H); got {tuple(u.shape)} and {tuple(kernel.shape)}")
    return _CausalConv.apply(u, kernel)
