"""The selective scan ops (loop reference vs the blocked fast path, outputs and gradients), the mode
dispatch (Triton kernel on CUDA, C kernel on CPU, torch path elsewhere) and the Mamba core's options."""

from __future__ import annotations

import json

import pytest
import torch

from ssm_lab.cores.mamba import Mamba
from ssm_lab.ops.selective_scan import (
    CPU_KERNEL_UNAVAILABLE,
    kernel_applies,
    selective_scan,
    selective_scan_by_mode,
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


@pytest.mark.parametrize(("reference", "fast"), PAIRS, ids=["positive", "signed"])
@pytest.mark.parametrize("length", [1, 7, 64, 1000])
@pytest.mark.parametrize("chunk_size", [1, 3, 32])
@pytest.mark.parametrize("optional", [True, False], ids=["with_D_h0", "no_D_h0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_blocked_selective_scan_matches_the_loop(reference, fast, length, chunk_size, optional, dtype):
    """Outputs, final state and the gradients of u, delta, A, B, C, D and the initial state."""
    tensors = scan_inputs(length=length, dtype=dtype)
    if not optional:
        tensors = tensors[:5] + [None, None]
    leaves = [t for t in tensors if t is not None]
    tolerance = {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {"atol": 5e-5, "rtol": 5e-5}
    generator = torch.Generator().manual_seed(3)
    weights_y = torch.randn(2, length, 3, generator=generator, dtype=dtype)
    weights_final = torch.randn(2, 3, 4, generator=generator, dtype=dtype)
    results = []
    for scan, kwargs in ((reference, {}), (fast, {"chunk_size": chunk_size})):
        y, final = scan(*tensors[:6], initial_state=tensors[6], **kwargs)
        grads = torch.autograd.grad((y * weights_y).sum() + (final * weights_final).sum(), leaves)
        results.append((y, final, *grads))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, **tolerance)


def test_blocked_scan_promotes_mixed_dtypes_like_the_loop():
    """A float32 A (a parameter) with float64 activations: the result is float64, as in the loop."""
    u, delta, A, B, C, D, h0 = scan_inputs()
    y, final = selective_scan(u, delta, A.float(), B, C, D, h0)
    y_ref, final_ref = selective_scan_ref(u, delta, A.float(), B, C, D, h0)
    assert y.dtype == final.dtype == torch.float64
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(final, final_ref)


@pytest.mark.parametrize("signed", [False, True])
def test_scan_mode_on_cpu_agrees_with_the_torch_path_and_the_loop(signed):
    """Off CUDA the Triton kernel does not apply: "scan" runs the C kernel where it was built (else the torch path;
    its dispatch is tested in test_cpu_selective_scan.py) and agrees with "torch_scan" and the loop."""
    tensors = scan_inputs(length=9)
    assert not kernel_applies(*tensors)
    results = {}
    for mode in ("scan", "torch_scan", "loop"):
        y, final = selective_scan_by_mode(*tensors, mode=mode, signed=signed, chunk_size=4)
        results[mode] = (y, final, *torch.autograd.grad((y**2).sum() + final.sum(), tensors))
    for other in ("torch_scan", "loop"):
        for ours, theirs in zip(results["scan"], results[other], strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-8)


def test_mamba_scan_mode_agrees_with_the_torch_scan_on_cpu():
    torch.manual_seed(0)
    core = Mamba(6, d_state=3, chunk_size=4).double()
    x = torch.randn(2, 10, 6, dtype=torch.float64)
    y_scan, (window_scan, state_scan) = core(x, mode="scan")
    y_torch, (window_torch, state_torch) = core(x, mode="torch_scan")
    torch.testing.assert_close(y_scan, y_torch, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(state_scan, state_torch, atol=1e-12, rtol=1e-10)
    assert torch.equal(window_scan, window_torch)


def test_selective_scan_modes_are_checked():
    tensors = scan_inputs()
    with pytest.raises(ValueError, match="unknown selective scan mode 'fast'; choose one of scan, torch_scan, kernel"):
        selective_scan_by_mode(*tensors, mode="fast")
    with pytest.raises(ValueError, match="kernel"):  # no Triton here, or CPU tensors refused by the kernel
        selective_scan_by_mode(*[t.float() for t in tensors], mode="kernel")
    with pytest.raises(ValueError, match="L = 0"):
        selective_scan(*scan_inputs(length=0))


def _cuda_core_and_input(signed: bool, dtype: torch.dtype) -> tuple[Mamba, torch.Tensor]:
    torch.manual_seed(0)
    core = Mamba(8, d_state=4, eigenvalues="signed" if signed else "positive", chunk_size=16).cuda().to(dtype)
    return core, torch.randn(2, 50, 8, device="cuda", dtype=dtype)


def _outputs_and_gradients(core: Mamba, x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    state = core.default_state(x.shape[0], x.device)
    state = (state[0], torch.randn(state[1].shape, generator=torch.Generator().manual_seed(4)).to(state[1]))
    core.zero_grad()
    y, (_, final) = core(x, state=state, mode=mode)
    generator = torch.Generator().manual_seed(5)
    weights = torch.randn(y.shape, generator=generator).to(y)
    ((y * weights).sum() + final.sum()).backward()
    return [y.detach(), final.detach(), *(p.grad.clone() for p in core.parameters())]


@pytest.mark.gpu
@pytest.mark.parametrize("signed", [False, True])
def test_scan_mode_runs_the_kernel_on_cuda_and_matches_torch_scan(signed):
    """On CUDA fp32 "scan" is the Triton kernel (bit for bit) and agrees with the torch path; float64
    falls back to the torch path."""
    core, x = _cuda_core_and_input(signed, torch.float32)
    assert kernel_applies(x, core.D)
    scan, kernel, torch_scan = (_outputs_and_gradients(core, x, mode) for mode in ("scan", "kernel", "torch_scan"))
    for ours, theirs, reference in zip(scan, kernel, torch_scan, strict=True):
        assert torch.equal(ours, theirs)
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    core, x = _cuda_core_and_input(signed, torch.float64)
    assert not kernel_applies(x, core.D)
    for ours, theirs in zip(*(_outputs_and_gradients(core, x, mode) for mode in ("scan", "torch_scan")), strict=True):
        assert torch.equal(ours, theirs)


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


def test_mamba_benchmark_smoke_on_cpu(tmp_path):
    """The GPU benchmark's CPU smoke check: one row per path, each output checked against mode "scan"."""
    from ssm_lab.bench.mamba import main

    out = tmp_path / "mamba.jsonl"
    sizes = ["--batch", "1", "--d-model", "8", "--d-state", "4", "--lengths", "9", "--repeats", "1"]
    records = main(["--device", "cpu", *sizes, "--out", str(out)])
    names = [record["name"] for record in records]
    scan_path = "torch" if CPU_KERNEL_UNAVAILABLE else "C"  # the C kernel where it was built
    assert names == [
        f"ssm_lab Mamba scan ({scan_path})",
        "ssm_lab Mamba torch_scan (torch)",
        "mamba-ssm Mamba block (CUDA kernel)",
    ]
    for record in records[:2]:  # on CPU "scan" runs the C kernel where it was built: fp32 rounding apart
        assert record["ms"] > 0 and record["relative_error_vs_scan"] < 1e-5 and record["length"] == 9
    assert "error" in records[2] or records[2]["relative_error_vs_scan"] < 1e-4
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == names
