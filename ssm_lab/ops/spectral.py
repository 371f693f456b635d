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

import functools

import torch
from torch import Tensor

__all__ = ["spectral_norm_bound", "normalize_to_contraction"]

# float64 rounding in T Gram steps perturbs the bound by about 2 * n * 1.1e-16 relative; this
# margin covers it for matrices up to ~10^5 columns.
_FLOAT64_MARGIN = 1e-10


def spectral_norm_bound(matrix: Tensor, iterations: int = 8) -> Tensor:
    """Upper bound of ||matrix||_2, differentiable. matrix: (..., m, n) real or complex -> (...) real, dtype of
    matrix: a stack of matrices of one shape is bounded in one batched iteration (each its own bound).

    Works on the smaller Gram matrix (n x n or m x m): the first step already squares it.
    """
    if matrix.dim() < 2:
        raise ValueError(f"spectral_norm_bound takes a matrix (..., m, n), got shape {tuple(matrix.shape)}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    out_dtype = matrix.real.dtype
    tall = matrix.to(torch.complex128 if matrix.is_complex() else torch.float64)
    if tall.shape[-2] < tall.shape[-1]:
        tall = tall.mH
    # Rounding the float64 bound b to out_dtype (to nearest) could go down by half a unit in the last place;
    # rounding b (1 + 2 eps) cannot: its spacing there is at most eps b (1 + 2 eps), so the rounded value is
    # >= b (1 + 2 eps)(1 - eps / 2) > b (for b in out_dtype's normal range). Differentiable, unlike nextafter.
    round_up = 1.0 if out_dtype == torch.float64 else 1 + 2 * torch.finfo(out_dtype).eps
    return (torch.exp(_GramLogBound.apply(tall, iterations)) * ((1 + _FLOAT64_MARGIN) * round_up)).to(out_dtype)


# Rescale the iterate every this many steps: in between its Frobenius norm cannot leave float64's range
# (after a rescaling it is 1, and k squarings keep it in [n^-(2^k - 1) / 2, 1] for an n x n Gram matrix:
# 3 steps and n = 10^5 give >= 1e-18), and skipping two rescalings in three saves six operations.
_RESCALE_EVERY = 3


@functools.cache
def _log_weights(iterations: int, device: torch.device) -> Tensor:
    """(2, S) float64 rows w, v over the S rescaled steps s (every ``_RESCALE_EVERY``-th, then T) with
    log b = w . log f and sum_t l_t = v . log f (``_gram_iteration``), made once per device: a normal tensor
    even when the first call runs under inference mode (a cached inference tensor could not be saved for a
    later backward)."""
    with torch.inference_mode(False):
        steps = torch.tensor([*range(0, iterations, _RESCALE_EVERY), iterations], dtype=torch.float64)
        bound_weights = 2.0**-steps
        scale_weights = torch.where(steps < iterations, 2.0 ** (iterations - steps + 1) - 2, 0.0)
        return torch.stack([bound_weights, scale_weights]).to(device)


def _gram_iteration(tall: Tensor, iterations: int) -> tuple[Tensor, list[Tensor], Tensor]:
    """log ||W||_bound for a tall float64/complex128 W (m >= n), the rescaled Gram matrices H_1..H_T
    (G_t = exp(l_t) H_t) and sum_t l_t. Differentiable when called with autograd on.

    With H_0 = W and H_{t+1} = (H_t / f_t)^H (H_t / f_t), where f_t = ||H_t||_F on every
    ``_RESCALE_EVERY``-th step and f_t = 1 on the others: l_{t+1} = 2 (l_t + log f_t), so
    l_t = sum_{s<t} 2^(t-s) log f_s, log b = 2^-T (l_T + log f_T) = sum_{s<=T} 2^-s log f_s (f_T = ||H_T||_F)
    and sum_{t=1..T} l_t = sum_{s<T} (2^(T-s+1) - 2) log f_s: the log scales are two dot products over the
    rescaled steps, taken once at the end (``_log_weights``). The clamp keeps W = 0 finite (bound 0).
    """
    norms, gram, grams = [], tall, []
    for step in range(iterations):
        if step % _RESCALE_EVERY == 0:
            norms.append(torch.linalg.matrix_norm(gram).clamp_min(1e-300))
            gram = gram / norms[-1][..., None, None]
        gram = gram.mH @ gram
        grams.append(gram)
    norms.append(torch.linalg.matrix_norm(gram).clamp_min(1e-300))
    log_bound, log_scale_sum = torch.tensordot(_log_weights(iterations, tall.device), torch.stack(norms).log(), 1)
    return log_bound, grams, log_scale_sum


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
        # the exponent overflows only for W ~ 0 (every f_t at the clamp), where grad = dL/dlog b carries the
        # factor b = 0: capping it keeps 0 * inf from making the gradient NaN
        weight = grad * torch.exp((log_scale_sum - power * log_bound).clamp_max(700.0))
        return weight[..., None, None] * (tall @ product), None


def normalize_to_contraction(matrix: Tensor, iterations: int = 8) -> tuple[Tensor, Tensor]:
    """(W / d, min(1, b)) with b = spectral_norm_bound(W) and d = max(1, b) (1 + margin): a free
    parametrization of contractions (a W with b <= 1 is only shrunk by the margin), and a
    certified norm of the result.

    The margin eps * sqrt(rank) covers the rounding of the division: each entry of fl(W / d) is off
    by at most eps/2 relative, which moves the spectral norm by at most eps/2 * ||W / d||_F.
    """
    bound = spectral_norm_bound(matrix, iterations)
    margin = torch.finfo(bound.dtype).eps * min(matrix.shape[-2:]) ** 0.5
    at_least_one = bound.clamp_min(1.0)
    return matrix / (at_least_one * (1 + margin)).to(matrix.dtype)[..., None, None], bound / at_least_one
