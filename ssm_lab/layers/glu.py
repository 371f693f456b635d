"""GLU channel mixing (Dauphin et al. 2017): Linear(H, 2H) then a * sigmoid(b)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssm_lab.layers.base import StaticLayer
from ssm_lab.ops.gated_residual import gated_residual


class GLU(StaticLayer):
    """x: (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, 2 * d_model)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.glu(self.linear(x), dim=-1)

    def residual(self, x: Tensor, scale: Tensor) -> Tensor:
        """x + scale GLU(x) in one fused pass where it applies (``ssm_lab.ops.gated_residual``)."""
        return gated_residual(x, self.linear.weight, self.linear.bias, None, scale, saturate=False)

    def lipschitz_bound(self) -> Tensor:
        """Infinite: a * sigmoid(b) with a, b linear in x has a Jacobian that grows with ||x||
        (the term a * sigmoid'(b) W_b), so no global Lipschitz constant exists; use LGLU."""
        return torch.tensor(float("inf"), device=self.linear.weight.device)
