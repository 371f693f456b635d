"""The Triton selective-scan kernel against the torch loop reference (outputs, final state, every gradient),
and the "scan" mode's dispatch to it on CUDA."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.ops.selective_scan import (
    kernel_applies,
    selective_scan_by_mode,
    selective_scan_ref,
    signed_selective_scan_ref,
)

LENGTHS = (1, 7, 64, 1000, 4096)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
NAMES = ("u", "delta", "A", "B", "C", "D", "initial_state")


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.to(reference.dtype) - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def _inputs(batch: int, length: int, channels: int, state_size: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Mamba-like values: delta in (0.001, 0.1) softplus range, A = -(1..N) (S4D-real init), random B, C."""
    device = "cuda"
    u = torch.randn(batch, length, channels, device=device)
    delta = torch.exp(torch.empty(batch, length, channels, device=device).uniform_(-6.9, -2.3))
    A = -torch.arange(1, state_size + 1, device=device, dtype=torch.float32).repeat(channels, 1)
    A = A * (0.5 + torch.rand(channels, state_size, device=device))
    B = torch.randn(batch, length, state_size, device=device)
    C = torch.randn(batch, length, state_size, device=device)
    D = torch.randn(channels, device=device)
    h0 = torch.randn(batch, channels, state_size, device=device)
    return [x.to(dtype) for x in (u, delta, A, B, C, D, h0)]


@pytest.mark.gpu
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 40, 16), (3, 5, 5)], ids=["D40_N16", "D5_N5"])
@pytest.mark.parametrize("optional", [True, False], ids=["with_D_h0", "no_D_h0"])
@pytest.mark.parametrize("signed", [False, True], ids=["exp_decay", "signed_decay"])
def test_kernel_matches_reference(length: int, dtype: torch.dtype, shape: tuple, optional: bool, signed: bool) -> None:
    from ssm_lab.ops.triton.selective_scan import selective_scan, signed_selective_scan

    kernel, reference = (
        (signed_selective_scan, signed_selective_scan_ref) if signed else (selective_scan, selective_scan_ref)
    )

    torch.manual_seed(length)
    batch, channels, state_size = shape
    inputs = _inputs(batch, length, channels, state_size, dtype)
    if not optional:
        inputs = inputs[:5]
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    y, final = kernel(*leaves)
    weights_y = torch.randn_like(y, dtype=torch.float32)
    weights_final = torch.randn_like(final, dtype=torch.float32)
    loss = (y.float() * weights_y).sum() + (final.float() * weights_final).sum()
    grads = torch.autograd.grad(loss, leaves)

    ref_leaves = [x.detach().double().requires_grad_(True) for x in inputs]
    y_ref, final_ref = reference(*ref_leaves)
    ref_loss = (y_ref * weights_y.double()).sum() + (final_ref * weights_final.double()).sum()
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)

    tolerance = TOLERANCE[dtype]
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert final.shape == final_ref.shape
    assert _relative_error(y, y_ref) < tolerance
    assert _relative_error(final, final_ref) < tolerance
    for name, grad, ref_grad, leaf in zip(NAMES, grads, ref_grads, leaves, strict=False):
        assert grad.shape == leaf.shape and grad.dtype == leaf.dtype, name
        assert _relative_error(grad, ref_grad) < tolerance, name


@pytest.mark.gpu
def test_kernel_refuses_cpu_and_float64_inputs() -> None:
    from ssm_lab.ops.triton.selective_scan import selective_scan

    inputs = _inputs(1, 4, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="u is torch.float32 on cpu"):
        selective_scan(*[x.cpu() for x in inputs])
    with pytest.raises(ValueError, match="delta is torch.float64"):
        selective_scan(inputs[0], inputs[1].double(), *inputs[2:])


@pytest.mark.gpu
@pytest.mark.parametrize("length", (1, 64, 1000))
@pytest.mark.parametrize("signed", [False, True], ids=["exp_decay", "signed_decay"])
def test_scan_mode_dispatches_to_the_kernel_and_torch_scan_agrees(length: int, signed: bool) -> None:
    """``selective_scan_by_mode``: "scan" on CUDA fp32 is the kernel (bit for bit, outputs and all seven
    gradients) and agrees with the pure-torch "torch_scan"; float64 is outside the kernel, so "scan" is torch."""
    torch.manual_seed(length)
    inputs = _inputs(2, length, 40, 16, torch.float32)
    assert kernel_applies(*inputs) and not kernel_applies(*(x.double() for x in inputs))
    weights_y, weights_final = torch.randn(2, length, 40, device="cuda"), torch.randn(2, 40, 16, device="cuda")

    def run(mode: str, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        leaves = [x.to(dtype).requires_grad_(True) for x in inputs]
        y, final = selective_scan_by_mode(*leaves, mode=mode, signed=signed)
        loss = (y * weights_y.to(dtype)).sum() + (final * weights_final.to(dtype)).sum()
        return [y, final, *torch.autograd.grad(loss, leaves)]

    scan, kernel, torch_scan = run("scan"), run("kernel"), run("torch_scan")
    for name, ours, theirs, reference in zip(("y", "final", *NAMES), scan, kernel, torch_scan, strict=True):
        assert torch.equal(ours, theirs), name
        assert _relative_error(ours, reference) < TOLERANCE[torch.float32], name
    for name, ours, theirs in zip(("y", "final", *NAMES), run("scan", torch.float64), run("torch_scan", torch.float64),
                                  strict=True):  # fmt: skip
        assert torch.equal(ours, theirs), name
