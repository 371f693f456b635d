"""Gain certificates of a DeepSSM: composing the bounds of its parts, prescribing the whole
network's bound, and auditing a trained network (certified bound vs the largest gain an
adversarial input search finds).

For zero initial state and the l2 norm over the whole sequence: a map with gain g satisfies
||F(u)|| <= g ||u||. Compositions multiply gains; a residual x + alpha F(x) has gain
<= 1 + alpha g; a static layer f with f(0) = 0 and Lipschitz constant L has gain <= L.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def residual_gain(mixing: Tensor, branch_gain: Tensor) -> Tensor:
    """Gain bound of x -> x + mixing * F(x) when F's gain is <= branch_gain (mixing >= 0)."""
    return 1 + mixing * branch_gain


def prescribed_output_scale(raw_bound: Tensor, gamma: float) -> Tensor:
    """gamma / max(gamma, raw_bound): scaling the output by it makes the bound min(raw_bound, gamma) <= gamma
    for every parameter value (it is 1 while the raw bound is already below gamma)."""
    return gamma / torch.clamp(raw_bound, min=gamma)


def empirical_gain(
    network: nn.Module, length: int = 32, restarts: int = 4, steps: int = 25, lr: float = 0.1, seed: int = 0
) -> float:
    """Largest ||y|| / ||u|| found by gradient ascent on the input u: (restarts, length, d_input),
    from zero state. A lower estimate of the true gain, so it must never exceed a valid bound.

    ``network`` is a DeepSSM (``forward(u) -> (y, states)``, ``d_input``). Adam on the log ratio
    with random restarts; the input's scale is free, since a nonlinear network's ratio depends on it.
    """
    generator = torch.Generator().manual_seed(seed)
    parameter = next(network.parameters())
    u = torch.randn(restarts, length, network.d_input, generator=generator, dtype=parameter.dtype)
    u = u.to(parameter.device).requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=lr)
    was_training = network.training
    requires_grad = [p.requires_grad for p in network.parameters()]
    network.eval()
    network.requires_grad_(False)  # only the input is optimised: no graph through the weights' bounds
    best = 0.0
    try:
        with torch.enable_grad():
            for _ in range(steps + 1):
                y, _ = network(u, reset_state=True)
                ratio = y.flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1).clamp_min(1e-12)
                best = max(best, float(ratio.detach().max()))
                optimizer.zero_grad()
                (-torch.log(ratio.clamp_min(1e-30)).sum()).backward()
                optimizer.step()
    finally:
        for weight, flag in zip(network.parameters(), requires_grad, strict=True):
            weight.requires_grad_(flag)
        network.train(was_training)
        network.reset()
    return best


def audit(model: nn.Module) -> dict[str, float]:
    """{"certified_gain", "empirical_gain"} of a certified model: a DeepSSM, or a wrapper whose
    ``network`` attribute is the DeepSSM whose u -> y map is certified."""
    network = getattr(model, "network", model)
    with torch.no_grad():
        certified = float(network.certified_gain_bound())
    return {"certified_gain": certified, "empirical_gain": empirical_gain(network)}
