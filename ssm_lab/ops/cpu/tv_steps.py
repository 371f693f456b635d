"""The tv core's step matrices as a C kernel (``tv_steps.c``), one pass forward and one backward: the CPU
counterpart of ``ssm_lab.ops.triton.tv_steps`` with the same functions (its forward always writes the drive:
only a recomputing backward asks for less); the torch twin is
``ssm_lab.cores.tv._raw_step_matrices`` / ``_step_matrices_backward`` (the formulas are in the Triton module).
The torch passes make some fifteen passes over (B, L, N) tensors forward and thirty backward, each with its
fresh buffer; these read their inputs once and write their outputs once. Unlike the Triton pair, the forward
also returns what the backward needs beyond its inputs (``saved``: k, softplus(s) and b, three (B, L, N) planes)
so that the backward does not recompute the transcendentals (on a CPU they are its cost: 2.2 -> 0.9 ms at
16 x 1024 x 64). Importing this module compiles the kernel (``ssm_lab.ops.cpu.build``) or raises ImportError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ssm_lab.ops import tv_layout
from ssm_lab.ops.cpu.build import INT, LONG, POINTER, bind, load_library, on_cpu_in_one_dtype

__all__ = ["SUPPORTED_DTYPES", "tv_steps", "tv_steps_applies", "tv_steps_backward"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)
_ROWS = 256  # tokens per block of the backward's column sums, as ROWS in tv_steps.c

_LIBRARY = load_library(Path(__file__).with_name("tv_steps.c"))
# (selected, component, token, u, delta_bias, alpha, a, drive, c, terms, tokens, channels, tiny, eps, threads)
_FORWARD = bind(
    _LIBRARY, "tv_steps_forward", SUPPORTED_DTYPES,
    lambda real: [POINTER, LONG, LONG, *[POINTER] * 7, LONG, LONG, real, real, INT],
)  # fmt: skip
# (selected, token, u, delta_bias, alpha, a, c, terms, grad_a, grad_drive, grad_c, grad_selected,
#  grad_component, grad_token, grad_u, partial_shifted, partial_rate, tokens, channels, tiny, eps, threads)
_BACKWARD = bind(
    _LIBRARY, "tv_steps_backward", SUPPORTED_DTYPES,
    lambda real: [POINTER, LONG, *[POINTER] * 10, LONG, LONG, *[POINTER] * 3, LONG, LONG, real, real, INT],
)  # fmt: skip


def _channel_parameters(delta_bias: Tensor, alpha: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """delta_bias, alpha as contiguous tensors of ``dtype`` for the kernel (the caller holds them during the call:
    a pointer into a temporary that Python already freed would be read after the free)."""
    return delta_bias.detach().to(dtype).contiguous(), alpha.detach().to(dtype).contiguous()


def tv_steps_applies(selected: Tensor, drive_input: Tensor) -> bool:
    """Whether the kernels run for these inputs: CPU tensors of one dtype in ``SUPPORTED_DTYPES``."""
    return on_cpu_in_one_dtype(SUPPORTED_DTYPES, selected, drive_input)


def tv_steps(
    selected: Tensor, drive_input: Tensor, delta_bias: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """(a k, b k u, c k, saved): the first three (B, L, N) contiguous in the input dtype, from the
    pre-activations selected (3, B, L, N), the drive input u (B, L, N) and the per-coordinate delta_bias, alpha
    (N,); ``saved`` = (a k, c k, the (3, B, L, N) planes (k, softplus(s), b)) for ``tv_steps_backward``."""
    planes, stride_component, stride_token = tv_layout.planes(selected)
    drive_input = drive_input.contiguous()
    dtype, (tokens, channels) = drive_input.dtype, planes.shape[1:]
    a, drive, c = (torch.empty_like(drive_input) for _ in range(3))
    terms = torch.empty((3, *drive_input.shape), dtype=dtype)
    delta_bias, alpha = _channel_parameters(delta_bias, alpha, dtype)  # kept alive across the call
    _FORWARD[dtype](
        planes.data_ptr(), stride_component, stride_token, drive_input.data_ptr(), delta_bias.data_ptr(),
        alpha.data_ptr(), a.data_ptr(), drive.data_ptr(), c.data_ptr(), terms.data_ptr(),
        tokens, channels, *tv_layout.precision(dtype), torch.get_num_threads(),
    )  # fmt: skip
    return a, drive, c, (a, c, terms)


def tv_steps_backward(
    selected: Tensor,
    drive_input: Tensor,
    delta_bias: Tensor,
    alpha: Tensor,
    grad_a: Tensor,
    grad_drive: Tensor,
    grad_c: Tensor,
    saved: tuple[Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dL/dselected in selected's layout, dL/du, dL/ddelta_bias, dL/dalpha) from the gradients of the three
    outputs of ``tv_steps`` (each (B, L, N)) and its ``saved``."""
    planes, _, stride_token = tv_layout.planes(selected)
    drive_input = drive_input.contiguous()
    dtype, (tokens, channels) = drive_input.dtype, planes.shape[1:]
    grad_planes = torch.empty_like(planes)  # planes' strides where they are dense, else contiguous
    grad_drive_input = torch.empty_like(drive_input)
    partials = torch.empty(2, -(-tokens // _ROWS), channels, dtype=torch.float64)
    grads = [grad.to(dtype).contiguous() for grad in (grad_a, grad_drive, grad_c)]
    saved = [tensor.contiguous() for tensor in saved]
    parameters = _channel_parameters(delta_bias, alpha, dtype)  # kept alive across the call
    _BACKWARD[dtype](
        planes.data_ptr(), stride_token, drive_input.data_ptr(), *(parameter.data_ptr() for parameter in parameters),
        *(tensor.data_ptr() for tensor in saved), *(grad.data_ptr() for grad in grads),
        grad_planes.data_ptr(), grad_planes.stride(0), grad_planes.stride(1),
        grad_drive_input.data_ptr(), partials[0].data_ptr(), partials[1].data_ptr(), tokens, channels,
        *tv_layout.precision(dtype), torch.get_num_threads(),
    )  # fmt: skip
    grad_delta_bias, weighted_rate = partials.sum(1)
    grad_alpha = -weighted_rate * torch.sigmoid(alpha.detach().double())
    grad_selected = grad_planes.unflatten(1, selected.shape[1:3])
    return grad_selected, grad_drive_input, grad_delta_bias.to(delta_bias.dtype), grad_alpha.to(alpha.dtype)
