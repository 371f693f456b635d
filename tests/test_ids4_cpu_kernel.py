"""IDS4's CPU kernels (ssm_lab.ops.cpu.matrix_recurrence: bilinear_forward factorises K_t = I - S_t itself,
bilinear_adjoint writes dS_t) against the loop over the explicit bilinear maps, values and every gradient, in
both dtypes, with and without h0, at sizes off and on the vector width and with matrices that need row
interchanges; and the time windows IDS4 runs them in on CPU."""

from __future__ import annotations

import pytest
import torch

import ssm_lab.ops.matrix_scan as matrix_scan
from ssm_lab.cores.ids4 import IDS4
from ssm_lab.ops.matrix_scan import bilinear_maps, bilinear_recurrence, matrix_recurrence_ref

cpu_loops = matrix_scan.cpu_loops
needs_kernel = pytest.mark.skipif(
    cpu_loops is None, reason=f"the C loops were not built: {matrix_scan.CPU_LOOPS_UNAVAILABLE}"
)

# ||ours - reference|| / ||reference||, the reference computed in float64 from the same inputs
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).norm() / reference.norm()).item()


def problem(n: int, length: int, dtype: torch.dtype, with_h0: bool, pivoting: bool, batch: int = 3):
    """(S, u, h0, dLoss/dh). Without ``pivoting`` dt/2 A has its spectrum in the left half-plane (contracting maps,
    I - S diagonally dominant); with it I - S = 2 P + noise + I / 100 for P the cyclic shift: a diagonal far
    smaller than the entry beside it, so every factorisation interchanges rows (the maps then grow the state by up
    to 3x a step: lengths stay short)."""
    generator = torch.Generator().manual_seed(100 * n + length)
    noise = torch.randn(batch, length, n, n, generator=generator, dtype=torch.float64) / n**0.5
    eye = torch.eye(n, dtype=torch.float64)
    S = eye - (2 * eye.roll(1, dims=1) + 0.3 * noise + 0.01 * eye) if pivoting else 0.3 * noise - 0.3 * eye
    u = torch.randn(batch, length, n, generator=generator, dtype=torch.float64)
    h0 = torch.randn(batch, n, generator=generator, dtype=torch.float64) if with_h0 else None
    weights = torch.randn(batch, length, n, generator=generator, dtype=torch.float64)
    return S.to(dtype), u.to(dtype), None if h0 is None else h0.to(dtype), weights.to(dtype)


def reference(S: torch.Tensor, u: torch.Tensor, h0: torch.Tensor | None, weights: torch.Tensor):
    """(states, dS, du, dh0) of the loss sum(states * weights) by autograd through the loop over the explicit maps
    (Abar_t, Bbar_t x_t) = bilinear_maps(S_t, u_t), in float64."""
    leaves = [t.double().requires_grad_() for t in (S, u, h0) if t is not None]
    states = matrix_recurrence_ref(*bilinear_maps(leaves[0], leaves[1]), leaves[2] if h0 is not None else None)
    gradients = torch.autograd.grad((states * weights.double()).sum(), leaves)
    return states.detach(), *gradients, *([None] if h0 is None else [])


CASES = pytest.mark.parametrize(
    ("n", "length"), [(5, 1), (5, 7), (13, 1), (13, 7), (64, 1), (64, 7)], ids=lambda value: str(value)
)


@needs_kernel
@CASES
@pytest.mark.parametrize("pivoting", [False, True], ids=["diagonal", "interchanges"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_match_the_loop_over_explicit_maps(n, length, pivoting, with_h0, dtype):
    """bilinear_forward's states and bilinear_adjoint's (dS, du = q, dh0 = -r_0), called directly (whatever
    SSM_LAB_CPU_KERNELS says), against autograd through the loop reference."""
    S, u, h0, weights = problem(n, length, dtype, with_h0, pivoting)
    factors, pivots, states = cpu_loops.bilinear_forward(S, u, h0)
    q, r0, grad_S = cpu_loops.bilinear_adjoint(factors, pivots, states, h0, weights, with_grad_S=True)
    ours = [states, grad_S, q, None if h0 is None else -r0]
    for value, expected in zip(ours, reference(S, u, h0, weights), strict=True):
        if expected is None:
            assert value is None
        else:
            assert value.dtype == dtype
            assert _relative_error(value, expected) < TOLERANCE[dtype]
    interchanged = (pivots != torch.arange(n, dtype=torch.int32)).any(-1)
    assert bool(interchanged.all()) if pivoting else True


@needs_kernel
@pytest.mark.parametrize("kind", ["cyclic", "gaussian"])
@pytest.mark.parametrize("n", [5, 13, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factors_are_an_lu_factorisation_with_partial_pivoting(kind, n, dtype):
    """The factors the forward keeps for the backward: P L U = K = I - S with L unit lower triangular and every
    multiplier |L[i, k]| <= 1 (each pivot the largest entry left in its column), rows padded to whole vectors;
    for K of ``problem``'s interchanges and for Gaussian K (pivots that depend on the updates before them)."""
    S, u, _, _ = problem(n, 4, dtype, with_h0=False, pivoting=True)
    if kind == "gaussian":
        S = torch.eye(n, dtype=dtype) - torch.randn(S.shape, generator=torch.Generator().manual_seed(n), dtype=dtype)
    factors, pivots, _ = cpu_loops.bilinear_forward(S, u, None)
    assert factors.shape[:3] == S.shape[:3] and factors.shape[-1] >= n
    assert factors.shape[-1] * factors.element_size() % cpu_loops.VECTOR_BYTES == 0
    lu = factors[..., :n].double()
    lower = lu.tril(-1) + torch.eye(n, dtype=torch.float64)
    rebuilt = lower @ lu.triu()
    for k in range(n - 1, -1, -1):  # P L U: undo step k's interchange of rows k and pivots[k], last step first
        swapped = pivots[..., k, None, None].long().expand(-1, -1, 1, n)
        row_k, row_p = rebuilt[..., k : k + 1, :].clone(), rebuilt.gather(-2, swapped)
        rebuilt[..., k : k + 1, :] = row_p
        rebuilt.scatter_(-2, swapped, row_k)
    K = torch.eye(n, dtype=torch.float64) - S.double()
    assert _relative_error(rebuilt, K) < 10 * TOLERANCE[dtype]
    assert float(lower.abs().max()) <= 1 + 4 * torch.finfo(dtype).eps


@needs_kernel
def test_adjoint_without_the_matrix_gradient_gives_the_same_q_and_r0():
    S, u, h0, weights = problem(13, 7, torch.float64, with_h0=True, pivoting=True)
    factors, pivots, states = cpu_loops.bilinear_forward(S, u, h0)
    with_S = cpu_loops.bilinear_adjoint(factors, pivots, states, h0, weights, with_grad_S=True)
    without_S = cpu_loops.bilinear_adjoint(factors, pivots, states, h0, weights, with_grad_S=False)
    assert without_S[2] is None
    assert torch.equal(with_S[0], without_S[0]) and torch.equal(with_S[1], without_S[1])


@pytest.mark.parametrize("loops", ["c", "python"])
@pytest.mark.parametrize("n", [13, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bilinear_recurrence_in_c_and_python_matches_the_loop(loops, n, dtype, monkeypatch):
    """The autograd path IDS4 runs on CPU (mode "sequential"), with its loops in C and in Python."""
    if loops == "python":
        monkeypatch.setattr(matrix_scan, "cpu_loops", None)
    elif cpu_loops is None:
        pytest.skip(f"the C loops were not built: {matrix_scan.CPU_LOOPS_UNAVAILABLE}")
    S, u, h0, weights = problem(n, 7, dtype, with_h0=True, pivoting=True)
    leaves = [t.clone().requires_grad_() for t in (S, u, h0)]
    states = bilinear_recurrence(*leaves, mode="sequential")
    ours = [states.detach(), *torch.autograd.grad((states * weights).sum(), leaves)]
    for value, expected in zip(ours, reference(S, u, h0, weights), strict=True):
        assert _relative_error(value, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("loops", ["c", "python"])
def test_a_singular_map_is_an_error_naming_where(loops, monkeypatch):
    if loops == "python":
        monkeypatch.setattr(matrix_scan, "cpu_loops", None)
    elif cpu_loops is None:
        pytest.skip(f"the C loops were not built: {matrix_scan.CPU_LOOPS_UNAVAILABLE}")
    S, u, _, _ = problem(5, 7, torch.float64, with_h0=False, pivoting=False)
    S[1, 4] = torch.eye(5, dtype=torch.float64)  # I - S = 0
    # C: the batch element and step; torch.linalg.lu_factor: the flat matrix index b L + t
    message = "singular at batch element 1, step 4" if loops == "c" else "Batch element 11"
    with pytest.raises(RuntimeError, match=message):
        bilinear_recurrence(S, u, mode="sequential")


@pytest.mark.parametrize("with_state", [False, True])
def test_ids4_windows_on_cpu_equal_the_whole_sequence_and_the_loop(with_state, monkeypatch):
    """IDS4 builds and runs its maps a window of steps at a time on CPU: windows of 3 steps over 10 (the last one
    short) give the outputs, final state and every gradient of one window (also at lengths and irregular steps) and
    of mode "loop" (whose outputs past a length differ by design: compared without lengths)."""
    torch.manual_seed(0)
    core = IDS4(4, d_state=5, input_dependence_std=0.5).double()
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    state = torch.randn(2, 5, dtype=torch.float64) if with_state else None
    tau = 0.5 + torch.rand(2, 10, dtype=torch.float64)
    window_bytes = {"whole": 2**40, "windows": 3 * x.shape[0] * 5**2 * 8}

    def run(mode: str, windows: str, lengths: torch.Tensor | None) -> list[torch.Tensor]:
        monkeypatch.setattr(matrix_scan, "CPU_WINDOW_BYTES", window_bytes[windows])
        leaves = [x.clone().requires_grad_(), *([state.clone().requires_grad_()] if with_state else [])]
        y, final = core(leaves[0], leaves[1] if with_state else None, mode, lengths, tau)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + final.square().sum()
        return [y, final, *torch.autograd.grad(loss, [*leaves, *core.parameters()])]

    for lengths, reference_mode in ((torch.tensor([10, 6]), "scan"), (None, "loop")):
        for value, expected in zip(run("scan", "windows", lengths), run(reference_mode, "whole", lengths), strict=True):
            torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
