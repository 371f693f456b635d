"""Two-layer MLP channel mixing: Linear(H, expand H) -> GELU -> Linear(expand H, H)."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """x: (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, expand: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, expand * d_model), nn.GELU(), nn.Linear(expand * d_model, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
