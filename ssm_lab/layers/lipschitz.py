"""Certified static layers: each maps (..., d_model) -> (..., d_model), sends 0 to 0 (no biases)
and has ``lipschitz_bound()`` >= its global Lipschitz constant for every parameter value, so in
a DeepSSM block ||f(x)|| <= lipschitz_bound() ||x|| and the gains compose.

Weights are free parameters normalised to contractions by the Gram-iteration bound
(ssm_lab.ops.spectral), and a learnable positive scale sets each layer's Lipschitz level.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_lab.inference_cache import cached_without_grad
from ssm_lab.layers.base import StaticLayer
from ssm_lab.ops.activations import gated_tanh
from ssm_lab.ops.gated_residual import gated_residual
from ssm_lab.ops.spectral import normalize_to_contraction

# d/da [tanh(a) sigmoid(b)] is in [0, 1] and d/db in [-1/4, 1/4]: see LGLU
_LGLU_CONSTANT = math.sqrt(1 + 1 / 16)


class ContractiveLinear(nn.Module):
    """x: (..., d_in) -> x W^T: (..., d_out) with ||W||_2 <= norm() <= 1 for any raw weight."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.orthogonal_(self.weight)

    @cached_without_grad
    def contraction(self) -> tuple[Tensor, Tensor]:
        return normalize_to_contraction(self.weight)

    def forward_and_norm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        weight, norm = self.contraction()
        return x @ weight.transpose(0, 1), norm

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_and_norm(x)[0]


class _ScaledLipschitz(StaticLayer):
    """A learnable Lipschitz level exp(log_lipschitz) > 0. Subclasses define
    ``forward_and_lipschitz_bound(x) -> (f(x), bound)``: the bound comes with the weights' normalisation;
    ``residual_and_lipschitz_bound(x, scale) -> (x + scale f(x), bound)`` may fuse the residual add."""

    def __init__(self, d_model: int, lipschitz: float) -> None:
        super().__init__()
        if not 0 < lipschitz < math.inf:
            raise ValueError(f"lipschitz must be a positive finite number, got {lipschitz!r}")
        self.d_model = d_model
        self.log_lipschitz = nn.Parameter(torch.tensor(math.log(lipschitz)))

    @property
    def lipschitz(self) -> Tensor:
        return torch.exp(self.log_lipschitz)

    def forward_and_lipschitz_bound(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_and_lipschitz_bound(x)[0]

    def residual_and_lipschitz_bound(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        output, bound = self.forward_and_lipschitz_bound(x)
        return torch.addcmul(x, scale, output), bound

    def residual(self, x: Tensor, scale: Tensor) -> Tensor:
        return self.residual_and_lipschitz_bound(x, scale)[0]

    def lipschitz_bound(self) -> Tensor:
        """The bound alone: on an empty batch the forward pass only normalises the weights."""
        return self.forward_and_lipschitz_bound(self.log_lipschitz.new_zeros(0, self.d_model))[1]


class LinearFF(_ScaledLipschitz):
    """The static layer without a nonlinearity: x -> s W x, ||W||_2 <= 1, so Lip <= s ||W||.

    A DeepSSM built with it is a linear system end to end: the "no nonlinearity between layers"
    variant of the depth experiments (Cirone et al. 2024, Figure 1)."""

    def __init__(self, d_model: int, lipschitz: float = 1.0) -> None:
        super().__init__(d_model, lipschitz)
        self.linear = ContractiveLinear(d_model, d_model)

    def forward_and_lipschitz_bound(self, x: Tensor) -> tuple[Tensor, Tensor]:
        output, norm = self.linear.forward_and_norm(x)
        return self.lipschitz * output, self.lipschitz * norm


class LMLP(_ScaledLipschitz):
    """Lipschitz MLP: x -> s W2 relu(W1 x), ||W1||, ||W2|| <= 1, ReLU 1-Lipschitz: Lip <= s ||W1|| ||W2||."""

    def __init__(self, d_model: int, expand: int = 4, lipschitz: float = 1.0) -> None:
        super().__init__(d_model, lipschitz)
        self.hidden = ContractiveLinear(d_model, expand * d_model)
        self.output = ContractiveLinear(expand * d_model, d_model)

    def forward_and_lipschitz_bound(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden, hidden_norm = self.hidden.forward_and_norm(x)
        output, output_norm = self.output.forward_and_norm(torch.relu(hidden))
        return self.lipschitz * output, self.lipschitz * hidden_norm * output_norm


def group_sort_2(x: Tensor) -> Tensor:
    """GroupSort with groups of 2 (Anil, Lucas & Grosse 2019): each pair (x1, x2) -> (max, min).
    A permutation of the coordinates in each pair, so 1-Lipschitz and gradient-norm preserving."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([pairs.amax(dim=-1), pairs.amin(dim=-1)], dim=-1).flatten(-2)


class TLIP(_ScaledLipschitz):
    """Tight Lipschitz network: contractive linears with GroupSort-2 between them (Anil et al. 2019),
    x -> s W_k gs(... gs(W_1 x)); Lip <= s prod ||W_i||, nearly attained since GroupSort keeps norms."""

    def __init__(
        self, d_model: int, d_hidden: int | None = None, n_hidden_layers: int = 1, lipschitz: float = 1.0
    ) -> None:
        super().__init__(d_model, lipschitz)
        d_hidden = 2 * d_model if d_hidden is None else d_hidden
        if d_hidden <= 0 or d_hidden % 2:
            raise ValueError(f"TLIP d_hidden must be a positive even number (GroupSort pairs), got {d_hidden}")
        if n_hidden_layers < 0:
            raise ValueError(f"TLIP n_hidden_layers must be >= 0, got {n_hidden_layers}")
        widths = [d_model] + [d_hidden] * (n_hidden_layers + 1) + [d_model]
        self.linears = nn.ModuleList(ContractiveLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward_and_lipschitz_bound(self, x: Tensor) -> tuple[Tensor, Tensor]:
        bound = self.lipschitz
        for index, linear in enumerate(self.linears):
            x, norm = linear.forward_and_norm(x)
            bound = bound * norm
            if index < len(self.linears) - 1:
                x = group_sort_2(x)
        return self.lipschitz * x, bound


class LGLU(_ScaledLipschitz):
    """Lipschitz gated unit: x -> s tanh(W_v x) * sigmoid(W_g x), [W_v; W_g] = W with ||W||_2 <= 1.

    The plain GLU (W_v x) * sigmoid(W_g x) is not globally Lipschitz: its Jacobian holds
    (W_v x) sigmoid'(W_g x) W_g, which grows with ||x||. Saturating the value with tanh fixes it.

    Proof of Lip <= s sqrt(17)/4 ||W||. Per coordinate g(a, b) = tanh(a) sigmoid(b) has
    |dg/da| = (1 - tanh^2 a) sigmoid(b) <= 1 and |dg/db| = |tanh a| sigmoid(b)(1 - sigmoid(b)) <= 1/4.
    By the mean value theorem on the segment between two points, |g(a, b) - g(a', b')| <=
    |a - a'| + |b - b'| / 4 <= sqrt(1 + 1/16) sqrt((a - a')^2 + (b - b')^2) (Cauchy-Schwarz).
    Summing the squares over coordinates: ||f(x) - f(x')|| <= s sqrt(17/16) ||(a, b) - (a', b')||
    = s sqrt(17/16) ||W (x - x')|| <= s sqrt(17)/4 ||W|| ||x - x'||. And f(0) = 0.
    """

    def __init__(self, d_model: int, lipschitz: float = 1.0) -> None:
        super().__init__(d_model, lipschitz)
        self.linear = ContractiveLinear(d_model, 2 * d_model)

    def forward_and_lipschitz_bound(self, x: Tensor) -> tuple[Tensor, Tensor]:
        projected, norm = self.linear.forward_and_norm(x)
        return gated_tanh(projected, self.lipschitz), self.lipschitz * _LGLU_CONSTANT * norm

    def residual_and_lipschitz_bound(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """x + scale LGLU(x) in one fused pass where it applies (``ssm_lab.ops.gated_residual``), and the bound."""
        weight, norm = self.linear.contraction()
        lipschitz = self.lipschitz
        return gated_residual(x, weight, None, lipschitz, scale, saturate=True), lipschitz * _LGLU_CONSTANT * norm
