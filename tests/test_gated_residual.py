"""x + r s act(v) sigmoid(g) as one operation (GLU, LGLU and the residual add of a DeepSSM block): the kernel
paths (C on CPU, Triton on CUDA) and the torch path against the plain autograd twin, values and every gradient."""

from __future__ import annotations

import pytest
import torch

import ssm_lab.ops.gated_residual as gated_module
from ssm_lab.ops.gated_residual import gated_residual, gated_residual_ref


def _inputs(dtype, with_bias: bool, with_layer_scale: bool, rows: int = 7, seed: int = 0, device="cpu", d: int = 5):
    generator = torch.Generator().manual_seed(seed)

    def sample(*shape: int, scale: float = 1.0) -> torch.Tensor:
        values = scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
        return values.to(dtype=dtype, device=device).requires_grad_()

    x, weight = sample(3, rows, d), sample(2 * d, d, scale=2.0)  # pre-activations of a few units: both tails
    bias = sample(2 * d) if with_bias else None
    layer_scale = sample(()).detach().abs().add(0.5).requires_grad_() if with_layer_scale else None
    residual_scale = torch.tensor(0.7, dtype=dtype, device=device, requires_grad=True)
    return x, weight, bias, layer_scale, residual_scale


@pytest.mark.parametrize("path", ["c", "torch", pytest.param("triton", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("saturate", [False, True], ids=["glu", "lglu"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [0, 7, 300])  # none (the bound's empty batch), one block, two blocks
def test_gated_residual_matches_its_autograd_twin(path, saturate, with_bias, dtype, rows, monkeypatch):
    calls, device = [], "cuda" if path == "triton" else "cpu"
    d = 70 if path == "triton" else 5  # Triton: two column blocks of 64, the second partly masked
    kernels = {"c": gated_module.cpu_gated, "triton": gated_module.triton_gated}.get(path)
    if path == "torch":
        monkeypatch.setattr(gated_module, "cpu_gated", None)
        monkeypatch.setattr(gated_module, "triton_gated", None)
    elif kernels is None:
        pytest.skip(f"the {path} kernel is not available")
    else:
        kernel = kernels.forward
        monkeypatch.setattr(kernels, "forward", lambda *args: calls.append(1) or kernel(*args))
    inputs = _inputs(dtype, with_bias, with_layer_scale=saturate, rows=rows, seed=rows, device=device, d=d)
    leaves = [t for t in inputs if t is not None]
    weights = torch.randn(3, rows, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = gated_residual(*inputs, saturate=saturate)
    got = (y, *torch.autograd.grad((y * weights.to(y)).sum(), leaves, materialize_grads=True))
    # the twin in float64 on the CPU: the truth for every path (GEMMs on a GPU sum in another order)
    exact = [t.detach().cpu().double().requires_grad_() for t in leaves]
    exact_inputs = iter(exact)
    y = gated_residual_ref(*[None if t is None else next(exact_inputs) for t in inputs], saturate=saturate)
    expected = (y, *torch.autograd.grad((y * weights).sum(), exact, materialize_grads=True))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12  # normwise: the scale's gradient sums 900 d terms
    for value, truth in zip(got, expected, strict=True):
        assert value.dtype == dtype and value.shape == truth.shape
        assert (value.cpu().double() - truth).norm() <= tolerance * truth.norm(), float((value.cpu() - truth).norm())
    assert calls == ([] if path == "torch" else [1])


def test_autocast_takes_the_torch_path(monkeypatch):
    """Under bf16 autocast the GEMM's output is bf16, which the kernel does not take: the torch path runs."""
    if gated_module.cpu_gated is None:
        pytest.skip("the C kernel was not built")
    monkeypatch.setattr(gated_module.cpu_gated, "forward", lambda *args: pytest.fail("the C kernel ran"))
    x, weight, bias, _, residual_scale = _inputs(torch.float32, True, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gated_residual(x, weight, bias, None, residual_scale, saturate=False)
    assert y.dtype == torch.float32  # the residual stream stays float32
    reference = gated_residual_ref(x, weight, bias, None, residual_scale, False)
    assert (y - reference).norm() <= 1e-2 * reference.norm()  # bf16's rounding of the GEMM
