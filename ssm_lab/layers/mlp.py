"""Two-layer MLP channel mixing: Linear(H, expand H) -> GELU -> Linear(expand H, H)."""

from __future__ import annotations

from torch import Tensor, nn

from ssm_lab.layers.base import StaticLayer
from ssm_lab.ops.spectral import spectral_norm_bound

# max_x d/dx [x Phi(x)] = Phi(sqrt 2) + sqrt 2 phi(sqrt 2): the Lipschitz constant of GELU
GELU_LIPSCHITZ = 1.129  # 1.12890..., rounded up


class MLP(StaticLayer):
    """x: (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, expand: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, expand * d_model), nn.GELU(), nn.Linear(expand * d_model, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def lipschitz_bound(self) -> Tensor:
        """||W2|| Lip(GELU) ||W1||: a valid Lipschitz bound, but the weights are free, so it is not
        prescribed, and the biases make f(0) != 0, so it bounds no gain: use LMLP to certify."""
        first, last = self.net[0].weight, self.net[2].weight
        return spectral_norm_bound(last) * GELU_LIPSCHITZ * spectral_norm_bound(first)
