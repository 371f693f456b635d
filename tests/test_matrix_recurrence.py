"""The dense recurrence h_t = M_t h_{t-1} + v_t: every path (parallel scan, sequential recurrence with
its hand-written backward, the "scan" dispatch) against the loop reference, outputs and gradients."""

from __future__ import annotations

import pytest
import torch

import ssm_lab.ops.matrix_scan as matrix_scan
from ssm_lab.ops.matrix_scan import (
    MODES,
    bilinear_recurrence,
    matrix_recurrence,
    matrix_recurrence_ref,
    matrix_recurrence_scan,
    matrix_recurrence_sequential,
)

TOLERANCES = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}
PATHS = {
    "parallel": matrix_recurrence_scan,
    "sequential": matrix_recurrence_sequential,
    "scan": lambda M, v, h0: matrix_recurrence(M, v, h0, mode="scan"),
}


def problem(length: int, dtype: torch.dtype, with_h0: bool, batch: int = 3, n: int = 5):
    """Contracting random maps (spectral radius ~0.8, so 64 steps stay O(1)), leaves that need gradients."""
    generator = torch.Generator().manual_seed(length)
    M = 0.8 / n**0.5 * torch.randn(batch, length, n, n, generator=generator, dtype=dtype)
    v = torch.randn(batch, length, n, generator=generator, dtype=dtype)
    h0 = torch.randn(batch, n, generator=generator, dtype=dtype) if with_h0 else None
    weights = torch.randn(batch, length, n, generator=generator, dtype=dtype)
    leaves = [t.requires_grad_(True) for t in (M, v, h0) if t is not None]
    return M, v, h0, weights, leaves


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_path_matches_the_loop_outputs_and_gradients(path, with_h0, length, dtype):
    M, v, h0, weights, leaves = problem(length, dtype, with_h0)
    results = []
    for recurrence in (matrix_recurrence_ref, PATHS[path]):
        states = recurrence(M, v, h0)
        # materialised: the parallel scan leaves M_0 out of the graph when h0 is None (its gradient is zero)
        results.append((states, *torch.autograd.grad((states * weights).sum(), leaves, materialize_grads=True)))
    for ours, reference in zip(results[1], results[0], strict=True):
        assert torch.allclose(ours, reference, **TOLERANCES[dtype])


def _recording(function, calls: list):
    def recorded(*args, **kwargs):
        calls.append(function.__name__)
        return function(*args, **kwargs)

    return recorded


@pytest.mark.parametrize("loops", ["c", "python"])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("length", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sequential_time_loops_in_c_and_python_match_the_loop(loops, with_h0, length, dtype, monkeypatch):
    """The CPU sequential paths (affine maps and the bilinear maps of IDS4) with their time loops in C
    (ssm_lab.ops.cpu.matrix_recurrence) and in Python: outputs and every gradient against the loop reference."""
    calls = []
    if loops == "python":
        monkeypatch.setattr(matrix_scan, "cpu_loops", None)
    else:
        if matrix_scan.cpu_loops is None:
            pytest.skip(f"the C loops were not built: {matrix_scan.CPU_LOOPS_UNAVAILABLE}")
        for name in ("affine_steps", "bilinear_forward", "bilinear_adjoint"):
            monkeypatch.setattr(matrix_scan.cpu_loops, name, _recording(getattr(matrix_scan.cpu_loops, name), calls))
    M, v, h0, weights, leaves = problem(length, dtype, with_h0)
    # dt/2 A with its spectrum in the left half-plane: the bilinear maps contract, the states stay O(1)
    half_step_A = (0.3 * M - 0.3 * torch.eye(M.shape[-1], dtype=dtype)).detach().requires_grad_()
    pairs = [
        (lambda: matrix_recurrence_sequential(M, v, h0), lambda: matrix_recurrence_ref(M, v, h0), leaves),
        (lambda: bilinear_recurrence(half_step_A, v, h0, mode="sequential"),
         lambda: bilinear_recurrence(half_step_A, v, h0, mode="loop"), [half_step_A, *leaves[1:]]),
    ]  # fmt: skip
    for ours, reference, inputs in pairs:
        results = []
        for run in (ours, reference):
            states = run()
            results.append((states, *torch.autograd.grad((states * weights).sum(), inputs, materialize_grads=True)))
        for got, expected in zip(*results, strict=True):
            assert torch.allclose(got, expected, **TOLERANCES[dtype])
    if loops == "c":
        assert calls == ["affine_steps", "affine_steps", "bilinear_forward", "bilinear_adjoint"]


def test_sequential_gradient_of_v_and_h0_alone():
    """Only v and h0 need gradients (M a constant): the backward skips dM and still gives the rest."""
    M, v, h0, weights, _ = problem(7, torch.float64, with_h0=True)
    M = M.detach()
    results = []
    for recurrence in (matrix_recurrence_ref, matrix_recurrence_sequential):
        states = recurrence(M, v, h0)
        results.append(torch.autograd.grad((states * weights).sum(), (v, h0)))
    for ours, reference in zip(*results, strict=True):
        assert torch.allclose(ours, reference)


def test_modes_and_errors():
    assert MODES == ("scan", "parallel", "sequential", "loop")
    M, v = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="unknown matrix recurrence mode 'tree'; choose one of scan, parallel"):
        matrix_recurrence(M, v, mode="tree")
    with pytest.raises(ValueError, match="need M: \\(B, L, N, N\\) and v: \\(B, L, N\\), got \\(1, 2, 3, 2\\)"):
        matrix_recurrence_sequential(torch.zeros(1, 2, 3, 2), v)
    with pytest.raises(ValueError, match="initial state must be \\(B, N\\) = \\(1, 3\\), got \\(1, 4\\)"):
        matrix_recurrence_sequential(M, v, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="unknown matrix recurrence mode 'tree'; choose one of scan, parallel"):
        bilinear_recurrence(M, v, mode="tree")


# The Triton time loop (CUDA, float32, N <= MAX_STATE): what "scan" runs there.

needs_triton = pytest.mark.skipif(matrix_scan.gpu_loops is None, reason="Triton is not installed")


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("length", [1, 7, 300])
@pytest.mark.parametrize("n", [5, 64, 128])
def test_gpu_scan_runs_the_triton_loop_and_matches_the_float64_loop(n, length, with_h0):
    """ "scan" on CUDA float32 is the sequential path with the Triton time loop; outputs and the gradients of M, v
    and h0 against the loop reference in float64 on the CPU, normwise (N = 5 pads the kernel's tile)."""
    M, v, h0, weights, leaves = problem(length, torch.float64, with_h0, n=n)
    reference = matrix_recurrence_ref(M, v, h0)
    expected = (reference, *torch.autograd.grad((reference * weights).sum(), leaves))
    on_gpu = [t.detach().float().cuda().requires_grad_(True) for t in leaves]
    calls = []
    gpu_loops = matrix_scan.gpu_loops
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu_loops, "affine_steps", _recording(gpu_loops.affine_steps, calls))
        states = matrix_recurrence(on_gpu[0], on_gpu[1], on_gpu[2] if with_h0 else None, mode="scan")
        got = (states, *torch.autograd.grad((states * weights.float().cuda()).sum(), on_gpu))
    assert calls == ["affine_steps", "affine_steps"]  # forward, and the adjoint's reverse loop
    for ours, reference in zip(got, expected, strict=True):
        assert (ours.cpu().double() - reference).norm() <= 2e-5 * reference.norm()


@pytest.mark.gpu
@needs_triton
def test_gpu_scan_takes_the_parallel_scan_where_the_loop_does_not_apply():
    """float64 and states past MAX_STATE run the parallel scan on CUDA (equal values); so does mode "parallel"."""
    M, v, h0, _, _ = problem(9, torch.float64, with_h0=True)
    M, v, h0 = (t.detach().cuda() for t in (M, v, h0))
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matrix_scan.gpu_loops, "affine_steps", _recording(matrix_scan.gpu_loops.affine_steps, calls))
        double = matrix_recurrence(M, v, h0)
        parallel = matrix_recurrence(M.float(), v.float(), h0.float(), mode="parallel")
        n = matrix_scan.gpu_loops.MAX_STATE + 1
        matrix_recurrence(torch.zeros(1, 2, n, n, device="cuda"), torch.ones(1, 2, n, device="cuda"))
    assert calls == []
    torch.testing.assert_close(double, matrix_recurrence_ref(M, v, h0))
    torch.testing.assert_close(parallel, matrix_recurrence(M.float(), v.float(), h0.float()), rtol=1e-5, atol=1e-5)
