"""A gated static layer and the residual add of its block as one operation:

    y = x + r s act(v) sigmoid(g),   (v, g) = the two halves of x W^T + b,

act = identity for GLU (Dauphin et al. 2017, "Language Modeling with Gated Convolutional Networks") and tanh
for LGLU (``ssm_lab.layers.lipschitz``: the saturated value makes it Lipschitz); s is the layer's scale (LGLU's
Lipschitz level, 1 for GLU) and r the block's residual weight. The activation, the bias, both scales and the add
run in one kernel pass each way after one GEMM, where the torch path makes some ten full passes (addmm's bias
copy, the activation, the add, their backward): Triton on CUDA (``ssm_lab.ops.triton.gated_residual``), C on
CPU (``ssm_lab.ops.cpu.gated_residual``), float32/float64 and not under autocast; elsewhere (or with neither
kernel) the torch path runs. ``gated_residual_ref`` is the plain twin.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor, nn

from ssm_lab.ops.activations import gated_tanh

try:  # Triton ships with CUDA builds of torch
    from ssm_lab.ops.triton import gated_residual as triton_gated
except ImportError:
    triton_gated = None
try:  # compiled on first import (ssm_lab.ops.cpu.build); without a compiler the torch path runs
    from ssm_lab.ops.cpu import gated_residual as cpu_gated
except ImportError:
    cpu_gated = None

__all__ = ["gated_residual", "gated_residual_ref"]


def gated_residual_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None, layer_scale: Tensor | None, residual_scale: Tensor, saturate: bool
) -> Tensor:
    """x + r s act(v) sigmoid(g) by autograd through each operation. x: (..., d), weight: (2 d, d), bias: (2 d,)
    or None, layer_scale s: () or None (1), residual_scale r: (); saturate: act = tanh, else the identity."""
    value, gate = nn.functional.linear(x, weight, bias).chunk(2, dim=-1)
    gated = (torch.tanh(value) if saturate else value) * torch.sigmoid(gate)
    return x + residual_scale * (gated if layer_scale is None else layer_scale * gated)


def gated_residual(
    x: Tensor, weight: Tensor, bias: Tensor | None, layer_scale: Tensor | None, residual_scale: Tensor, saturate: bool
) -> Tensor:
    """``gated_residual_ref``, fused: one GEMM and the kernel pair of ``_kernels`` (not under autocast, whose
    half-precision GEMM output the kernels do not take); elsewhere the layers' own torch path (GLU: linear and
    glu; LGLU: linear and its gated_tanh node, which takes s) and one addcmul with r."""
    kernels = None if torch.is_autocast_enabled(x.device.type) else _kernels(x, weight, bias)
    if kernels is not None:
        scale = residual_scale if layer_scale is None else residual_scale * layer_scale
        return _GatedResidual.apply(x, x @ weight.transpose(0, 1), bias, scale, saturate, kernels)
    projected = nn.functional.linear(x, weight, bias)
    if saturate:
        gated = gated_tanh(projected, torch.ones_like(residual_scale) if layer_scale is None else layer_scale)
    else:
        gated = nn.functional.glu(projected, dim=-1)
        gated = gated if layer_scale is None else layer_scale * gated
    return torch.addcmul(x, residual_scale, gated)


def _kernels(x: Tensor, weight: Tensor, bias: Tensor | None) -> ModuleType | None:
    """The kernel pair for these tensors (Triton on CUDA, C on CPU), or None: the torch path."""
    for kernels in (triton_gated, cpu_gated):
        if kernels is not None and kernels.applies(x, weight, bias):
            return kernels
    return None


class _GatedResidual(torch.autograd.Function):
    """y = x + c act(v) sigmoid(g) from (v, g) = projected + bias; the kernels compute y and, backward,
    dL/dprojected, the bias's and c's gradients; dL/dx is the incoming gradient itself."""

    @staticmethod
    def forward(
        ctx, x: Tensor, projected: Tensor, bias: Tensor | None, scale: Tensor, saturate: bool, kernels: ModuleType
    ) -> Tensor:
        ctx.save_for_backward(projected, bias, scale)
        ctx.saturate, ctx.kernels = saturate, kernels
        return kernels.forward(x, projected, bias, scale, saturate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor, None, None]:
        projected, bias, scale = ctx.saved_tensors
        grad_projected, grad_bias, grad_scale = ctx.kernels.backward(projected, bias, grad, scale, ctx.saturate)
        grad_bias = None if bias is None else grad_bias.to(bias.dtype)
        return grad, grad_projected, grad_bias, grad_scale.to(scale.dtype), None, None
