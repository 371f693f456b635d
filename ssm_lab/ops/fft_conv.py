"""Causal long convolution by FFT, the "conv" mode of LTI cores (S4, S4D, LRU, l2n):
y_t = sum_{s<=t} k_s u_{t-s}, in O(L log L) by zero-padding to 2L so the circular
convolution equals the linear one."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def causal_conv_ref(u: Tensor, kernel: Tensor) -> Tensor:
    """Direct O(L^2) sum, the reference. u: (B, L, H), kernel: (L, H) -> (B, L, H)."""
    length = u.shape[1]
    out = torch.zeros_like(u)
    for t in range(length):
        out[:, t] = (kernel[: t + 1].flip(0).unsqueeze(0) * u[:, : t + 1]).sum(dim=1)
    return out


def _padded_rfft(signal: Tensor) -> Tensor:
    """rfft over the last dimension of signal zero-padded to twice its length, in one fresh contiguous buffer: the
    transform then runs over unit-stride rows (an rfft with n=2L over a strided dimension pads and transposes
    internally and costs about 1.5 times as much)."""
    length = signal.shape[-1]
    padded = signal.new_empty(*signal.shape[:-1], 2 * length)
    padded[..., :length] = signal
    padded[..., length:] = 0
    return torch.fft.rfft(padded, dim=-1)


def _first_half_irfft(spectrum: Tensor, length: int) -> Tensor:
    """The first ``length`` samples of the inverse of a (..., length + 1) one-sided spectrum of 2 length samples."""
    return torch.fft.irfft(spectrum, n=2 * length, dim=-1)[..., :length]


class _CausalConv(torch.autograd.Function):
    """The FFT convolution with its adjoint written out: both gradients are causal correlations,
    grad u_s = sum_{t>=s} g_t k_{t-s} and grad k_s = sum_b sum_{t>=s} g_t u_{t-s}, so the backward is one rfft of
    the output gradient and two irffts, reusing the input spectra of the forward (autograd through rfft/irfft
    with padding and slicing costs about twice that). Transforms run along time in a (B, H, L) layout, transposed
    back to (B, L, H) once at the end."""

    @staticmethod
    def forward(ctx, u: Tensor, kernel: Tensor) -> Tensor:
        length = u.shape[1]
        u_spectrum = _padded_rfft(u.transpose(1, 2))  # (B, H, L + 1)
        kernel_spectrum = _padded_rfft(kernel.T)  # (H, L + 1)
        out = _first_half_irfft(u_spectrum * kernel_spectrum, length).transpose(1, 2).contiguous()
        # the backward multiplies by the conjugates: conjugated in place once here, not copied there per product
        ctx.save_for_backward(u_spectrum.conj_physical_(), kernel_spectrum.conj_physical_())
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        u_conjugate, kernel_conjugate = ctx.saved_tensors
        length = grad.shape[1]
        # with g zero-padded to 2L, the circular correlation at lags -L < t - s < 0 reads the zero half
        grad_spectrum = _padded_rfft(grad.transpose(1, 2))
        grad_u = grad_kernel = None
        if ctx.needs_input_grad[1]:
            grad_kernel = _first_half_irfft((grad_spectrum * u_conjugate).sum(0), length).T
        if ctx.needs_input_grad[0]:  # in place: the output gradient's spectrum is not needed any more
            grad_u = _first_half_irfft(grad_spectrum.mul_(kernel_conjugate), length).transpose(1, 2).contiguous()
        return grad_u, grad_kernel


def log_of_decay(decay: Tensor) -> Tensor:
    """log(decay) for the powers decay^s = exp(s log(decay)) of a convolution kernel, s = 0, 1, ...; a decay that
    underflowed to 0 gets log of the smallest normal number instead of -inf, so that its powers are 1 at s = 0 and 0
    after (exp(0 * -inf) would be NaN), and no gradient reaches it (the log's backward would divide by 0)."""
    nonzero = decay != 0
    logarithm = torch.log(torch.where(nonzero, decay, torch.ones_like(decay)))
    floor = math.log(torch.finfo(decay.real.dtype).tiny)
    return torch.where(nonzero, logarithm, torch.full_like(logarithm, floor))


def causal_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """FFT convolution. u: (B, L, H) real, kernel: (L, H) real -> (B, L, H)."""
    if u.dim() != 3 or kernel.shape != u.shape[1:]:
        raise ValueError(f"need u: (B, L, H) and kernel: (L, H); got {tuple(u.shape)} and {tuple(kernel.shape)}")
    return _CausalConv.apply(u, kernel)
