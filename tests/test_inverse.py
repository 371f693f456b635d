"""Batched inverses of small matrices (``ssm_lab.ops.inverse``): the Triton Gauss-Jordan kernel against
torch.linalg.inv in float64 (values and gradients), its dispatch, and IDS4's bilinear maps built on it."""

from __future__ import annotations

import pytest
import torch

import ssm_lab.ops.inverse as inverse_op
from ssm_lab.ops.inverse import batched_inverse, kernel_applies
from ssm_lab.ops.matrix_scan import bilinear_maps


def well_conditioned(shape: tuple[int, ...], n: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """I - S with S of 2-norm ~1: the shape of IDS4's I - dt/2 A(x), condition numbers below ~10 (at N = 64, 4096
    matrices, the largest is 6)."""
    generator = torch.Generator().manual_seed(seed)
    S = 0.5 / n**0.5 * torch.randn(*shape, n, n, generator=generator, dtype=torch.float64)
    return (torch.eye(n, dtype=torch.float64) - S).to(device)


def normwise(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.double() - reference).norm() / reference.norm()).item()


def test_bilinear_maps_equal_the_solve_with_n_plus_one_right_hand_sides():
    """Abar = 2 (I - S)^{-1} - I and Bbar x = (I - S)^{-1} u, against the defining solves, in float64."""
    S = torch.eye(6, dtype=torch.float64) - well_conditioned((4, 3), 6, seed=1)
    u = torch.randn(4, 3, 6, dtype=torch.float64)
    transition, inputs = bilinear_maps(S, u)
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(transition, torch.linalg.solve(eye - S, eye + S), rtol=1e-12, atol=1e-13)
    assert torch.allclose(inputs, torch.linalg.solve(eye - S, u.unsqueeze(-1)).squeeze(-1), rtol=1e-12, atol=1e-13)


def test_bilinear_maps_gradients_pass_gradcheck():
    S = (torch.eye(4, dtype=torch.float64) - well_conditioned((2,), 4, seed=2)).requires_grad_(True)
    u = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda S, u: bilinear_maps(S, u), (S, u))


def test_cpu_tensors_take_the_reference_and_bad_shapes_are_errors():
    K = well_conditioned((3,), 5, seed=3).float()
    assert not kernel_applies(K)
    assert torch.equal(batched_inverse(K), torch.linalg.inv(K))
    with pytest.raises(ValueError, match=r"square matrices \(\.\.\., N, N\), got shape \(3, 5, 4\)"):
        batched_inverse(torch.zeros(3, 5, 4))
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        batched_inverse(torch.zeros(5))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 33, 64])
@pytest.mark.parametrize("shape", [(1,), (3, 4), (4096,)])
def test_kernel_matches_the_float64_inverse_values_and_gradients(n, shape):
    K64 = well_conditioned(shape, n, seed=n)
    grad64 = torch.randn(*shape, n, n, dtype=torch.float64)
    K = K64.float().cuda().requires_grad_(True)
    assert kernel_applies(K)
    ours = batched_inverse(K)
    (grad_ours,) = torch.autograd.grad(ours, K, grad64.float().cuda())
    reference_K = K64.clone().requires_grad_(True)
    reference = torch.linalg.inv(reference_K)
    (grad_reference,) = torch.autograd.grad(reference, reference_K, grad64)
    assert normwise(ours.cpu(), reference) < 1e-5
    assert normwise(grad_ours.cpu(), grad_reference) < 3e-5
    assert ours.grad_fn is not None and "GaussJordan" in type(ours.grad_fn).__name__


@pytest.mark.gpu
def test_kernel_pivots_past_zero_diagonals_and_marks_a_singular_matrix_non_finite():
    n = 7
    permutations = torch.stack([torch.eye(n)[torch.randperm(n, generator=torch.Generator().manual_seed(s))]
                                for s in range(5)])  # fmt: skip
    ours = batched_inverse(permutations.cuda()).cpu()
    assert torch.equal(ours, permutations.mT)  # a permutation's inverse is its transpose, exactly
    singular = well_conditioned((2,), n, seed=4).float()
    singular[1, :, 3] = 0.0
    ours = batched_inverse(singular.cuda()).cpu()
    assert torch.allclose(ours[0].double(), torch.linalg.inv(singular[0].double()), rtol=1e-4, atol=1e-5)
    assert not ours[1].isfinite().all()


@pytest.mark.gpu
def test_dispatch_leaves_float64_and_large_matrices_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(inverse_op.gpu_kernel, "inverse", lambda K: calls.append(K.shape) or torch.linalg.inv(K))
    batched_inverse(well_conditioned((2,), 8, seed=5).float().cuda())
    assert calls == [torch.Size([2, 8, 8])]
    for K in (well_conditioned((2,), 8, seed=5).cuda(), well_conditioned((2,), 65, seed=6).float().cuda()):
        assert not kernel_applies(K)
        batched_inverse(K)
    assert len(calls) == 1


@pytest.mark.gpu
def test_bilinear_maps_on_the_kernel_match_the_float64_solve():
    S64 = torch.eye(64, dtype=torch.float64) - well_conditioned((2, 300), 64, seed=7)
    u64 = torch.randn(2, 300, 64, dtype=torch.float64)
    transition, inputs = bilinear_maps(S64.float().cuda(), u64.float().cuda())
    eye = torch.eye(64, dtype=torch.float64)
    assert normwise(transition.cpu(), torch.linalg.solve(eye - S64, eye + S64)) < 1e-5
    assert normwise(inputs.cpu(), torch.linalg.solve(eye - S64, u64.unsqueeze(-1)).squeeze(-1)) < 1e-5


@pytest.mark.gpu
def test_the_inverse_benchmark_records_every_method_with_its_error():
    from ssm_lab.bench.inverse import measure

    records = measure(count=64, n=8)
    assert [record["name"] for record in records] == [
        "batched_inverse", "torch.linalg.inv", "solve, N + 1 right-hand sides"
    ]  # fmt: skip
    assert all(record["kernel"] and record["error"] < 1e-5 and record["fwd_bwd_ms"] > 0 for record in records)
