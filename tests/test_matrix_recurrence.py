"""The dense recurrence h_t = M_t h_{t-1} + v_t: every path (parallel scan, sequential recurrence with
its hand-written backward, the "scan" dispatch) against the loop reference, outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.ops.matrix_scan import (
    MODES,
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
