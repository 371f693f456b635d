"""Inverses of a batch of small square matrices, differentiable: the Triton Gauss-Jordan kernel on CUDA float32
tensors with N <= 64 (``ssm_lab.ops.triton.inverse``), torch.linalg.inv elsewhere (the reference twin).

The kernel's backward is two batched products: from X = K^{-1}, dX = -X dK X, so dLoss/dK = -X^T (dLoss/dX) X^T.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of torch
    from ssm_lab.ops.triton import inverse as gpu_kernel
except ImportError:
    gpu_kernel = None

__all__ = ["batched_inverse", "kernel_applies"]


def kernel_applies(K: Tensor) -> bool:
    """Whether ``batched_inverse`` runs the Triton kernel on K."""
    return gpu_kernel is not None and gpu_kernel.applies(K)


def batched_inverse(K: Tensor) -> Tensor:
    """K^{-1} for K: (..., N, N). On the kernel a singular matrix gives non-finite entries where torch.linalg.inv
    raises."""
    if K.dim() < 2 or K.shape[-1] != K.shape[-2]:
        raise ValueError(f"batched_inverse takes square matrices (..., N, N), got shape {tuple(K.shape)}")
    return _GaussJordanInverse.apply(K) if kernel_applies(K) else torch.linalg.inv(K)


class _GaussJordanInverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, K: Tensor) -> Tensor:
        inverse = gpu_kernel.inverse(K)
        ctx.save_for_backward(inverse)
        return inverse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inverse: Tensor) -> Tensor:
        (inverse,) = ctx.saved_tensors
        transposed = inverse.mT
        return -(transposed @ grad_inverse @ transposed)
