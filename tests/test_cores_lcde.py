"""The matrix-product scan (loop vs parallel), the Linear CDE's solvers and the least-squares
readout of the random-feature baseline."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.cores.lcde import LinearCDE, dormand_prince_affine
from ssm_lab.ops.matrix_scan import matrix_recurrence, matrix_recurrence_ref, matrix_recurrence_scan
from ssm_lab.task import LeastSquaresReadout


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13])
def test_matrix_scan_matches_the_loop_outputs_and_gradients(length):
    generator = torch.Generator().manual_seed(0)
    M = (0.5 * torch.randn(2, length, 3, 3, generator=generator, dtype=torch.float64)).requires_grad_(True)
    v = torch.randn(2, length, 3, generator=generator, dtype=torch.float64).requires_grad_(True)
    h0 = torch.randn(2, 3, generator=generator, dtype=torch.float64).requires_grad_(True)
    weights = torch.randn(2, length, 3, generator=generator, dtype=torch.float64)
    results = []
    for scan in (matrix_recurrence_ref, matrix_recurrence_scan):
        states = scan(M, v, h0)
        results.append((states, *torch.autograd.grad((states * weights).sum(), (M, v, h0))))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_matrix_scan_errors():
    with pytest.raises(ValueError, match="unknown matrix recurrence mode 'tree'; choose one of loop, scan"):
        matrix_recurrence(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3), mode="tree")
    with pytest.raises(ValueError, match="need M: \\(B, L, N, N\\)"):
        matrix_recurrence(torch.zeros(1, 2, 3, 2), torch.zeros(1, 2, 3))


def test_exact_solver_is_the_affine_flow():
    """h(1) of h' = M h + v is e^M h0 + M^{-1}(e^M - I) v for invertible M."""
    core = LinearCDE(3, d_state=4).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    M, v = core.vector_field(x, None)
    transition, offset = core.transitions(x, None)
    exponential = torch.linalg.matrix_exp(M)
    torch.testing.assert_close(transition, exponential)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(offset, torch.linalg.solve(M, ((exponential - eye) @ v.unsqueeze(-1))).squeeze(-1))


def test_dormand_prince_takes_several_steps_on_a_stiff_increment():
    M = torch.diag(torch.tensor([-30.0, 0.5], dtype=torch.float64)).unsqueeze(0)
    v, h = torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    solution, steps = dormand_prince_affine(M, v, h, rtol=1e-8, atol=1e-10)
    exact = (
        torch.exp(M.diagonal(dim1=1, dim2=2)) * h
        + torch.expm1(M.diagonal(dim1=1, dim2=2)) / M.diagonal(dim1=1, dim2=2) * v
    )
    torch.testing.assert_close(solution, exact, atol=1e-7, rtol=1e-7)
    assert steps > 3


def test_euler_converges_to_the_exact_solver_as_increments_shrink():
    core = LinearCDE(2, d_state=3).double()
    x = torch.randn(1, 6, 2, dtype=torch.float64)
    errors = []
    for scale in (0.1, 0.01):
        core.solver = "exp"
        exact = core(scale * x, integration_timesteps=torch.full((1, 6), scale, dtype=torch.float64))[1]
        core.solver = "euler"
        euler = core(scale * x, integration_timesteps=torch.full((1, 6), scale, dtype=torch.float64))[1]
        errors.append((exact - euler).abs().max().item())
    assert errors[1] < errors[0] / 50  # local error O(step^2): ten times smaller steps, ~100x smaller


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"solver": "rk4"}, "unknown solver 'rk4'; choose one of exp, euler"),
        ({"d_state": 0}, "d_state must be a positive integer"),
        ({"rtol": 0.0}, "must be positive"),
    ],
)
def test_bad_lcde_options_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        LinearCDE(4, **options)


def test_least_squares_readout_is_the_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    targets = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    readout = LeastSquaresReadout(4, 2, ridge=0.0)
    readout.update(features[:20], targets[:20])  # in two batches: the normal equations add up
    readout.update(features[20:], targets[20:])
    weight, bias = readout.solve()
    design = torch.cat([features, torch.ones(50, 1, dtype=torch.float64)], dim=1)
    expected = torch.linalg.lstsq(design, targets).solution
    torch.testing.assert_close(weight, expected[:-1].T)
    torch.testing.assert_close(bias, expected[-1])
