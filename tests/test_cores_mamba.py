"""The selective scan ops (loop reference vs chunked fast path, outputs and gradients) and the
Mamba core's options."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.cores.mamba import Mamba
from ssm_lab.ops.scan import linear_recurrence_ref
from ssm_lab.ops.selective_scan import (
    chunked_linear_recurrence,
    selective_scan,
    selective_scan_ref,
    signed_selective_scan,
    signed_selective_scan_ref,
)

PAIRS = [(selective_scan_ref, selective_scan), (signed_selective_scan_ref, signed_selective_scan)]


def scan_inputs(batch=2, length=11, channels=3, n=4, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(batch, length, channels, generator=generator, dtype=dtype)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, channels, generator=generator, dtype=dtype))
    A = -torch.exp(torch.randn(channels, n, generator=generator, dtype=dtype))
    B, C = (torch.randn(batch, length, n, generator=generator, dtype=dtype) for _ in range(2))
    D = torch.randn(channels, generator=generator, dtype=dtype)
    h0 = torch.randn(batch, channels, n, generator=generator, dtype=dtype)
    return [t.requires_grad_(True) for t in (u, delta, A, B, C, D, h0)]


@pytest.mark.parametrize(("reference", "fast"), PAIRS)
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_selective_scan_matches_the_loop(reference, fast, chunk_size, dtype):
    tensors = scan_inputs(dtype=dtype)
    tolerance = {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 2e-5}
    results = []
    for scan, kwargs in ((reference, {}), (fast, {"chunk_size": chunk_size})):
        y, final = scan(*tensors[:6], initial_state=tensors[6], **kwargs)
        grads = torch.autograd.grad((y**2).sum() + (final * 1.5).sum(), tensors)
        results.append((y, final, *grads))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, **tolerance)


def test_signed_decays_go_negative_and_positive_ones_do_not():
    """2 exp(delta A) - 1 < 0 once delta |A| > log 2: the sign flips the plain scan cannot make."""
    u = torch.ones(1, 2, 1, dtype=torch.float64)
    delta = torch.full((1, 2, 1), 2.0, dtype=torch.float64)
    A, B, C = (
        -torch.ones(1, 1, dtype=torch.float64),
        torch.ones(1, 2, 1, dtype=torch.float64),
        torch.ones(1, 2, 1, dtype=torch.float64),
    )
    y_signed, _ = signed_selective_scan(u, delta, A, B, C)
    y_plain, _ = selective_scan(u, delta, A, B, C)
    decay = 2 * torch.exp(torch.tensor(-2.0, dtype=torch.float64)) - 1
    torch.testing.assert_close(y_signed[0, 1, 0], decay * 2 + 2)
    torch.testing.assert_close(y_plain[0, 1, 0], torch.exp(torch.tensor(-2.0, dtype=torch.float64)) * 2 + 2)


@pytest.mark.parametrize("length", [1, 5, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_chunked_linear_recurrence_matches_the_reference_with_gradients(length, dtype):
    """The hand-written backward (a reversed chunked scan) against autograd through the loop."""
    generator = torch.Generator().manual_seed(1)
    shape = (2, length, 3)
    radius = torch.rand(shape, generator=generator, dtype=torch.float64)
    if dtype == torch.complex128:
        a = torch.polar(radius, torch.randn(shape, generator=generator, dtype=torch.float64))
    else:
        a = 2 * radius - 1
    b = torch.randn(shape, generator=generator, dtype=dtype)
    h0 = torch.randn(2, 3, generator=generator, dtype=dtype)
    weights = torch.randn(shape, generator=generator, dtype=dtype)
    results = []
    for scan in (lambda *t: chunked_linear_recurrence(*t, chunk_size=4), linear_recurrence_ref):
        leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
        states = scan(*leaves)
        loss = (states * weights).real.sum() + (states.abs() ** 2).sum()
        results.append((states, *torch.autograd.grad(loss, leaves)))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_scan_shapes_and_chunk_size_are_checked():
    u, delta, A, B, C, D, h0 = scan_inputs()
    with pytest.raises(ValueError, match="A must have shape"):
        selective_scan(u, delta, A[:, :2], B, C)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan_ref(u, delta, A, B, C, D, h0[:, :1])
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        selective_scan(u, delta, A, B, C, chunk_size=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"eigenvalues": "complex"}, "unknown eigenvalues 'complex'; choose one of positive, signed"),
        ({"d_conv": 1}, "d_conv must be >= 2"),
        ({"expand": 0}, "expand must be a positive integer"),
        ({"chunk_size": -4}, "chunk_size must be a positive integer"),
    ],
)
def test_bad_mamba_options_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        Mamba(8, **options)
