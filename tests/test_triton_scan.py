"""The Triton linear-recurrence kernel against the torch loop reference, and the dispatch of linear_recurrence."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import ssm_lab.ops.scan as scan_module
from ssm_lab.ops.scan import (
    kernel_applies,
    linear_recurrence,
    linear_recurrence_chunked,
    linear_recurrence_ref,
)

LENGTHS = (1, 7, 64, 1000, 4096)
# relative error ||out - ref|| / ||ref|| against a float64 reference: fp32 arithmetic lands near 1e-7;
# bf16 inputs are rounded once on the way in and once on the way out (the state stays fp32)
TOLERANCE = {torch.float32: 1e-5, torch.complex64: 1e-5, torch.bfloat16: 2e-2}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value = value.to(reference.dtype)
    return ((value - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def _decays(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    """|a| in [0.5, 0.999]: long memories, as in the cores, so errors would accumulate over L."""
    modulus = 0.5 + 0.499 * torch.rand(shape, device=device)
    if dtype.is_complex:
        return torch.polar(modulus, 2 * torch.pi * torch.rand(shape, device=device)).to(dtype)
    sign = torch.where(torch.rand(shape, device=device) < 0.2, -1.0, 1.0)
    return (sign * modulus).to(dtype)


def _decay_shape(kind: str, batch: int, length: int, channels: int) -> tuple[int, ...]:
    return {"lti": (channels,), "per_batch": (batch, 1, channels), "per_step": (batch, length, channels),
            "shared_steps": (1, length, channels)}[kind]  # fmt: skip


def _weighted_sum(h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A real loss with gradient ``weights`` (conj-linear for complex, as torch's convention wants)."""
    return (h * weights.conj()).real.sum() if h.is_complex() else (h * weights).sum()


@pytest.mark.gpu
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("kind", ["lti", "per_batch", "per_step", "shared_steps"])
@pytest.mark.parametrize("with_initial_state", [False, True], ids=["zero_h0", "h0"])
def test_kernel_matches_reference(length: int, dtype: torch.dtype, kind: str, with_initial_state: bool) -> None:
    torch.manual_seed(length)
    batch, channels = 3, 40  # 40: not a multiple of the channel block, so masked lanes are exercised
    device = "cuda"
    a = _decays(_decay_shape(kind, batch, length, channels), dtype, device)
    b = torch.randn(batch, length, channels, device=device, dtype=torch.complex64 if dtype.is_complex else None)
    b = b.to(dtype)
    h0 = torch.randn(batch, channels, device=device).to(dtype) if with_initial_state else None
    inputs = [a, b] + ([h0] if h0 is not None else [])
    assert kernel_applies(a, b, h0)

    leaves = [x.clone().requires_grad_(True) for x in inputs]
    h = linear_recurrence(*leaves[:2], leaves[2] if with_initial_state else None, mode="scan")
    weights = torch.randn_like(h, dtype=torch.complex64 if dtype.is_complex else torch.float32)
    grads = torch.autograd.grad(_weighted_sum(h.to(weights.dtype), weights), leaves)

    wide = torch.complex128 if dtype.is_complex else torch.float64
    ref_leaves = [x.detach().to(wide).requires_grad_(True) for x in inputs]
    h_ref = linear_recurrence_ref(*ref_leaves[:2], ref_leaves[2] if with_initial_state else None)
    ref_grads = torch.autograd.grad(_weighted_sum(h_ref, weights.to(wide)), ref_leaves)

    assert h.dtype == dtype and h.shape == (batch, length, channels)
    tolerance = TOLERANCE[dtype]
    assert _relative_error(h, h_ref) < tolerance
    for name, grad, ref_grad, leaf in zip(("a", "b", "h0"), grads, ref_grads, leaves, strict=False):
        assert grad.shape == leaf.shape and grad.dtype == leaf.dtype, name
        assert _relative_error(grad, ref_grad) < tolerance, name


@pytest.mark.gpu
def test_kernel_final_state_continues_the_sequence() -> None:
    """Running two halves with the state passed along equals the whole run (the kernel's h0 path)."""
    torch.manual_seed(0)
    a = _decays((2, 300, 64), torch.complex64, "cuda")
    b = torch.randn(2, 300, 64, dtype=torch.complex64, device="cuda")
    whole = linear_recurrence(a, b)
    first = linear_recurrence(a[:, :123], b[:, :123])
    second = linear_recurrence(a[:, 123:], b[:, 123:], first[:, -1])
    assert _relative_error(torch.cat([first, second], 1), whole.to(torch.complex128)) < 1e-6


@pytest.mark.gpu
def test_scan_mode_uses_the_kernel_on_cuda_and_other_modes_do_not(monkeypatch) -> None:
    calls = []
    kernel = scan_module.triton_scan.linear_scan

    def recording_kernel(*args):
        calls.append(True)
        return kernel(*args)

    monkeypatch.setattr(scan_module.triton_scan, "linear_scan", recording_kernel)
    a = _decays((16,), torch.float32, "cuda")
    b = torch.randn(2, 50, 16, device="cuda")
    linear_recurrence(a, b, mode="scan")
    assert len(calls) == 1
    reference = linear_recurrence(a, b, mode="loop")
    torch_scan = linear_recurrence(a, b, mode="torch_scan")
    assert len(calls) == 1
    assert torch.allclose(torch_scan, reference, atol=1e-5)
    # float64 is outside the kernel's dtypes: the torch scan runs
    assert not kernel_applies(a.double(), b.double())
    linear_recurrence(a.double(), b.double(), mode="scan")
    assert len(calls) == 1


def test_cpu_dispatch_never_runs_the_triton_kernel(monkeypatch) -> None:
    def kernel_must_not_run(*args):
        raise AssertionError("the Triton kernel ran on CPU tensors")

    triton_stand_in = SimpleNamespace(linear_scan=kernel_must_not_run, SUPPORTED_DTYPES=(torch.complex64,))
    monkeypatch.setattr(scan_module, "triton_scan", triton_stand_in)
    torch.manual_seed(0)
    a = _decays((2, 9, 4), torch.complex64, "cpu")
    b = torch.randn(2, 9, 4, dtype=torch.complex64)
    h0 = torch.randn(2, 4, dtype=torch.complex64)
    torch.testing.assert_close(linear_recurrence(a, b, h0, mode="scan"), linear_recurrence_ref(a, b, h0))
    monkeypatch.setattr(scan_module, "cpu_scan", None)
    assert not kernel_applies(a, b, h0)
    assert torch.equal(linear_recurrence(a, b, h0, mode="scan"), linear_recurrence_chunked(a, b, h0))


def test_unknown_mode_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="'fast'.*scan, torch_scan, chunked, loop"):
        linear_recurrence(torch.ones(3), torch.ones(1, 2, 3), mode="fast")
