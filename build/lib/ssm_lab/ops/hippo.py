"""HiPPO-LegS (Gu et al. 2020, "HiPPO: Recurrent Memory with Optimal Polynomial Projections") and
its normal-plus-low-rank forms used to initialise S4, S4D and S5.

    A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k),  -(n+1) (n = k),  0 (n < k);    B_n = sqrt(2n+1)

NPLR (Gu et al. 2022, "Efficiently Modeling Long Sequences with Structured State Spaces"):
A = S - P P^T with P_n = sqrt(n + 1/2) and S = -I/2 + (skew-symmetric), hence normal; in the
unitary eigenbasis V of S this is the DPLR form A = V (Lambda - p p^*) V^*, Re(Lambda) = -1/2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["legs", "legs_nplr", "legs_dplr", "s4d_lin_eigenvalues", "conjugate_half"]


def _check_size(n: int) -> None:
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"state size must be a positive integer, got {n!r}")


def legs(n: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (A: (n, n), B: (n,)), float64."""
    _check_size(n)
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(torch.arange(n, dtype=torch.float64) + 1)
    return A, q.clone()


def legs_nplr(n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(A, P, B) with A + P P^T normal, float64: A: (n, n), P: (n,), B: (n,)."""
    A, B = legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    return A, P, B


def legs_dplr(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Lambda, p, b, V), complex128: A_legs = V (diag(Lambda) - p p^*) V^*, B_legs = V b.

    The skew part of S = A + P P^T is diagonalised through the Hermitian matrix -i (S + I/2)
    (eigh is stable where a general eig of A_legs is not: that is the point of NPLR).
    """
    A, P, B = legs_nplr(n)
    S = A + P[:, None] * P[None, :]
    skew = S + 0.5 * torch.eye(n, dtype=torch.float64)
    frequencies, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    eigenvalues = -0.5 + 1j * frequencies
    Vh = V.conj().transpose(0, 1)
    return eigenvalues, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128), V


def s4d_lin_eigenvalues(n: int) -> Tensor:
    """S4D-Lin (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State
    Space Models"): lambda_n = -1/2 + i pi n, complex128 (n,)."""
    _check_size(n)
    return -0.5 + 1j * math.pi * torch.arange(n, dtype=torch.float64)


def conjugate_half(eigenvalues: Tensor) -> Tensor:
    """Indices of one eigenvalue of each conjugate pair (Im >= 0), sorted by frequency.

    Real systems have eigenvalues in conjugate pairs; keeping one of each and doubling the real
    part of the output halves the state at no loss."""
    order = torch.argsort(eigenvalues.imag, descending=True)
    return order[: len(order) // 2].flip(0)
