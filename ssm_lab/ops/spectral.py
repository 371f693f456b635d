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
    gram = matrix.to(torch.complex128 if matrix.is_complex() else torch.float64)
    if gram.shape[0] < gram.shape[1]:
        gram = gram.mH
    log_scale = gram.new_zeros((), dtype=torch.float64)  # G_t = exp(log_scale) * gram
    for _ in range(iterations):
        frobenius = torch.linalg.matrix_norm(gram).clamp_min(1e-300)
        # G_{t+1} = G_t^H G_t = (c f)^2 (gram/f)^H (gram/f) with c = exp(log_scale), f = frobenius
        log_scale = 2 * (log_scale + torch.log(frobenius))
        gram = gram / frobenius
        gram = gram.mH @ gram
    log_bound = (log_scale + torch.log(torch.linalg.matrix_norm(gram).clamp_min(1e-300))) / 2**iterations
    bound = torch.exp(log_bound) * (1 + _FLOAT64_MARGIN)
    rounded = bound.to(out_dtype)
    # rounding to a lower precision may go down by half an ulp: step up one ulp
    # nextafter has no derivative on some torch builds: round up the value, pass the gradient straight through
    up = torch.nextafter(rounded.detach(), torch.tensor(float("inf"), dtype=out_dtype, device=rounded.device))
    return rounded + (up - rounded.detach())


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
