"""Discretisation of diagonal continuous-time SSMs x' = Lambda x + B u with step dt:
x_t = Abar x_{t-1} + Bbar u_t, elementwise over the (complex) diagonal.

zoh (exact for inputs held over the step): Abar = exp(dt Lambda), Bbar = (Abar - 1) / Lambda;
bilinear (Tustin): Abar = (1 + dt Lambda / 2) / (1 - dt Lambda / 2), Bbar = dt / (1 - dt Lambda / 2);
dirac (the input is an impulse at the sample): Abar = exp(dt Lambda), Bbar = 1.
Bbar is returned as the factor multiplying B (shape of Lambda * dt).
"""

from __future__ import annotations

import torch
from torch import Tensor

DISCRETIZATIONS = ("zoh", "bilinear", "dirac")


def check_discretization(method: str) -> None:
    if method not in DISCRETIZATIONS:
        raise ValueError(f"unknown discretization {method!r}; choose one of {', '.join(DISCRETIZATIONS)}")


def discretize_diagonal(eigenvalues: Tensor, dt: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """eigenvalues and dt broadcast together -> (Abar, Bbar factor), both complex."""
    check_discretization(method)
    scaled = eigenvalues * dt
    if method == "bilinear":
        denominator = 1 - scaled / 2
        return (1 + scaled / 2) / denominator, dt / denominator
    decay = torch.exp(scaled)
    if method == "zoh":
        return decay, (decay - 1) / eigenvalues
    return decay, torch.ones_like(decay)
