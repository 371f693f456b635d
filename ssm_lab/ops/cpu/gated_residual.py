"""The gated static layer and its residual add as a C kernel (``gated_residual.c``), one pass forward and one
backward; the autograd node that calls them and the torch twin are in ``ssm_lab.ops.gated_residual``.
Importing this module compiles the kernel (``ssm_lab.ops.cpu.build``) or raises ImportError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ssm_lab.ops.cpu.build import INT, LONG, POINTER, bind, load_library, on_cpu_in_one_dtype

__all__ = ["SUPPORTED_DTYPES", "applies", "backward", "forward"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)
_ROWS = 256  # rows per block of the backward's column sums, as ROWS in gated_residual.c

_LIBRARY = load_library(Path(__file__).with_name("gated_residual.c"))
# (z, bias, x, c, y, rows, d, saturate, threads) and (z, bias, grad, c, grad_z, partial_bias, partial_c, rows, d,
# saturate, threads)
_FORWARD = bind(
    _LIBRARY, "gated_residual_forward", SUPPORTED_DTYPES,
    lambda real: [*[POINTER] * 3, real, POINTER, LONG, LONG, INT, INT],
)  # fmt: skip
_BACKWARD = bind(
    _LIBRARY, "gated_residual_backward", SUPPORTED_DTYPES,
    lambda real: [*[POINTER] * 3, real, *[POINTER] * 3, LONG, LONG, INT, INT],
)  # fmt: skip


def applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether the layer's input, weight and bias are CPU tensors of one dtype in ``SUPPORTED_DTYPES``."""
    return on_cpu_in_one_dtype(SUPPORTED_DTYPES, x, weight, bias)


def _bias(bias: Tensor | None, projected: Tensor) -> Tensor:
    """The bias as the kernel reads it: contiguous, zeros where the layer has none (held by the caller)."""
    return projected.new_zeros(projected.shape[-1]) if bias is None else bias.contiguous()


def forward(x: Tensor, projected: Tensor, bias: Tensor | None, scale: Tensor, saturate: bool) -> Tensor:
    """x + scale act(v) sigmoid(g) for (v, g) the halves of projected (+ bias): x (..., d), projected (..., 2 d),
    scale a 0-dim tensor."""
    x, projected, bias = x.contiguous(), projected.contiguous(), _bias(bias, projected)
    out = torch.empty_like(x)
    rows, d = x.numel() // x.shape[-1], x.shape[-1]
    _FORWARD[x.dtype](projected.data_ptr(), bias.data_ptr(), x.data_ptr(), float(scale), out.data_ptr(), rows, d,
                      int(saturate), torch.get_num_threads())  # fmt: skip
    return out


def backward(
    projected: Tensor, bias: Tensor | None, grad: Tensor, scale: Tensor, saturate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dprojected, dL/dbias summed over rows (float64), dL/dscale (float64)) from dL/dout."""
    projected, grad, bias = projected.contiguous(), grad.to(projected.dtype).contiguous(), _bias(bias, projected)
    rows, d = grad.numel() // grad.shape[-1], grad.shape[-1]
    grad_projected = torch.empty_like(projected)
    blocks = -(-rows // _ROWS)
    partial_bias = torch.empty(blocks, 2 * d, dtype=torch.float64)
    partial_scale = torch.empty(blocks, dtype=torch.float64)
    _BACKWARD[projected.dtype](
        projected.data_ptr(), bias.data_ptr(), grad.data_ptr(), float(scale),
        grad_projected.data_ptr(), partial_bias.data_ptr(), partial_scale.data_ptr(), rows, d, int(saturate),
        torch.get_num_threads(),
    )  # fmt: skip
    return grad_projected, partial_bias.sum(0), partial_scale.sum()
