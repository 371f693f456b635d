"""Guaranteed upper bounds of the spectral norm ||W||_2 from matrix products only (no SVD).

Gram iteration (Delattre, Barthelemy, Araujo & Allauzen 2023, "Efficient Bound of Lipschitz
Constant for Convolutional Layers by Gram Iteration", ICML): with G_0 = W and G_{t+1} = G_t^H G_t,
sigma_1(G_t) = sigma_1(W)^(2^t), and sigma_1 <= Frobenius norm, so

    ||W||_2 <= ||G_T||_F^(1 / 2^T)   for every T >= 0.

The bound is tight fast: ||G_T||_F^(1/2^T) = (sum_i sigma_i^(2^(T+1)))^(1/2^(T+1)) <= rank^(1/2^(T+1)) ||W||_2,
and it approaches ||W||_2 as soon as the top singular value is separated from the next. Each
step rescales G_t by its Frobenius norm (kept in log space) so nothing overflows. The iteration
runs in float64 and the result is rounded up, so the float returned is >= the exact norm of the
matrix the caller holds, never an estimate from below (unlike power iteration).

Gradient. ||G_T||_F^2 = tr(A^(2^T)) with A = W^H W, so the bound is the Schatten p-norm of W,
b = (sum_i sigma_i^p)^(1/p) with p = 2^(T+1), and d log b / dW = b^-p W A^(p/2 - 1), where
A^(p/2 - 1) = A^(2^T - 1) = A A^2 A^4 ... A^(2^(T-1)) = G_1 G_2 ... G_T: the product of the Gram
matrices the forward pass already made. ``_GramLogBound`` runs the iteration without an autograd
graph and backpropagates with those T matrix products (no graph of ~7T small operations, which on
a GPU cost more kernel launches than the network's own layers at small sizes); ``gram_log_bound_ref``
is its plain autograd twin, equal in values and gradients (tests/test_spectral.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["spectral_norm_bound", "normalize_to_contraction"]

# float64 rounding in T Gram steps perturbs the bound by about 2 * n * 1.1e-16 relative; this
# margin covers it for matrices up to ~10^5 columns.
_FLOAT64_MARGIN = 1e-10


def spectral_norm_bound(matrix: Tensor, iterations: int = 8) -> Tensor:
    """Upper bound of ||matrix||_2, differentiable. matrix: (m, n) real or complex -> () real, dtype of matrix.

    Works on the smaller Gram matrix (n x n or m x m): the first step already squares it.
    """
    if matrix.dim() != 2:
        raise ValueError(f"spectral_norm_bound takes a matrix (m, n), got shape {tuple(matrix.shape)}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    out_dtype = matrix.real.dtype
    tall = matrix.to(torch.complex128 if matrix.is_complex() else torch.float64)
    if tall.shape[0] < tall.shape[1]:
        tall = tall.mH
    bound = torch.exp(_GramLogBound.apply(tall, iterations)) * (1 + _FLOAT64_MARGIN)
    rounded = bound.to(out_dtype)
    # rounding to a lower precision may go down by half an ulp: step up one ulp
    # nextafter has no derivative on some torch builds: round up the value, pass the gradient straight through
    up = torch.nextafter(rounded.detach(), torch.tensor(float("inf"), dtype=out_dtype, device=rounded.device))
    return rounded + (up - rounded.detach())


def _gram_iteration(tall: Tensor, iterations: int) -> tuple[Tensor, list[Tensor], Tensor]:
    """log ||W||_bound for a tall float64/complex128 W (m >= n), the rescaled Gram matrices H_1..H_T
    (G_t = exp(l_t) H_t) and sum_t l_t. Differentiable when called with autograd on."""
    gram, log_scale, log_scales, grams = tall, tall.new_zeros((), dtype=torch.float64), [], []
    for _ in range(iterations):
        frobenius = torch.linalg.matrix_norm(gram).clamp_min(1e-300)
        # G_{t+1} = G_t^H G_t = (c f)^2 (gram/f)^H (gram/f) with c = exp(log_scale), f = frobenius
        log_scale = 2 * (log_scale + torch.log(frobenius))
        gram = gram / frobenius
        gram = gram.mH @ gram
        grams.append(gram)
        log_scales.append(log_scale)
    log_bound = (log_scale + torch.log(torch.linalg.matrix_norm(gram).clamp_min(1e-300))) / 2**iterations
    return log_bound, grams, torch.stack(log_scales).sum()


def gram_log_bound_ref(tall: Tensor, iterations: int) -> Tensor:
    """The reference twin of ``_GramLogBound``: log of the Gram-iteration bound by autograd through the loop."""
    return _gram_iteration(tall, iterations)[0]


class _GramLogBound(torch.autograd.Function):
    """log b for a tall W; backward d log b / dW = b^-p W G_1 ... G_T (module docstring), in log space:
    exp(sum_t l_t - p log b) W H_1 ... H_T. For complex W the same expression is torch's conjugate
    Wirtinger gradient of the real log b."""

    @staticmethod
    def forward(ctx, tall: Tensor, iterations: int) -> Tensor:
        log_bound, grams, log_scale_sum = _gram_iteration(tall, iterations)
        ctx.save_for_backward(tall, log_bound, log_scale_sum, *grams)
        return log_bound

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        tall, log_bound, log_scale_sum, *grams = ctx.saved_tensors
        product = grams[0]
        for gram in grams[1:]:
            product = product @ gram
        power = 2 ** (len(grams) + 1)
        return (grad * torch.exp(log_scale_sum - power * log_bound)) * (tall @ product), None


def normalize_to_contraction(matrix: Tensor, iterations: int = 8) -> tuple[Tensor, Tensor]:
    """(W / d, min(1, b)) with b = spectral_norm_bound(W) and d = max(1, b) (1 + margin): a free
    parametrization of contractions (a W with b <= 1 is only shrunk by the margin), and a
    certified norm of the result.

    The margin eps * sqrt(rank) covers the rounding of the division: each entry of fl(W / d) is off
    by at most eps/2 relative, which moves the spectral norm by at most eps/2 * ||W / d||_F.
    """
    bound = spectral_norm_bound(matrix, iterations)
    margin = torch.finfo(bound.dtype).eps * min(matrix.shape) ** 0.5
    divisor = bound.clamp_min(1.0) * (1 + margin)
    return matrix / divisor.to(matrix.dtype), bound / bound.clamp_min(1.0)
