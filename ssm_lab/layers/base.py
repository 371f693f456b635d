"""What every static (channel-mixing) layer of a residual block provides."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class StaticLayer(nn.Module):
    """f: (..., d_model) -> (..., d_model), and ``residual(x, scale)`` = x + scale f(x), the block's residual add,
    which a layer may fuse into its own last pass (GLU, LGLU: ``ssm_lab.ops.gated_residual``)."""

    def residual(self, x: Tensor, scale: Tensor) -> Tensor:
        return torch.addcmul(x, scale, self(x))
