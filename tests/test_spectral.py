"""The Gram-iteration spectral norm bound is never below the exact norm, and is tight."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.ops.spectral import _GramLogBound, gram_log_bound_ref, normalize_to_contraction, spectral_norm_bound


def exact_norm(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix.to(torch.complex128 if matrix.is_complex() else torch.float64), ord=2))


def with_singular_values(values: list[float], rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64))
    S = torch.zeros(rows, cols, dtype=torch.float64)
    S[range(len(values)), range(len(values))] = torch.tensor(values, dtype=torch.float64)
    return (U @ S @ V.T).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_bound_is_above_the_exact_norm_for_random_matrices(dtype):
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        rows, cols = torch.randint(1, 48, (2,), generator=generator).tolist()
        scale = 10 ** (8 * torch.rand((), generator=generator).item() - 4)
        matrix = (scale * torch.randn(rows, cols, generator=generator, dtype=torch.float64)).to(dtype)
        if dtype.is_complex:
            matrix = matrix + 1j * scale * torch.randn(rows, cols, generator=generator)
        bound, exact = float(spectral_norm_bound(matrix)), exact_norm(matrix)
        assert bound >= exact
        assert bound <= exact * min(rows, cols) ** (1 / 2**9) * (1 + 1e-5)  # rank^(1/2^(T+1)), T = 8


@pytest.mark.parametrize(
    "values",
    [
        [3.0],  # rank one: Frobenius = spectral, the bound has no slack but rounding
        [1.0] * 16,  # all equal: the worst case of the tightness factor
        [1.0, 1.0 - 1e-7, 1.0 - 2e-7, 0.5],  # nearly repeated top values
        [1e30, 1e29],  # near the float32 overflow of the squares
        [1e-30, 1e-31],  # below sqrt of the smallest normal float32
    ],
)
def test_bound_is_above_the_exact_norm_for_adversarial_spectra(values):
    matrix = with_singular_values(values, 20, 17)
    assert float(spectral_norm_bound(matrix)) >= exact_norm(matrix)


def test_gradient_search_for_an_underestimate_fails():
    """Minimise bound / exact norm over the matrix itself: the ratio never drops below 1."""
    matrix = torch.randn(12, 9, generator=torch.Generator().manual_seed(1), requires_grad=True)
    optimizer = torch.optim.Adam([matrix], lr=0.05)
    for _ in range(80):
        ratio = spectral_norm_bound(matrix) / torch.linalg.matrix_norm(matrix, ord=2)
        assert exact_norm(matrix.detach()) <= float(spectral_norm_bound(matrix.detach()))
        optimizer.zero_grad()
        ratio.backward()
        optimizer.step()


def test_bound_gradient_matches_finite_differences():
    matrix = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: spectral_norm_bound(w, iterations=6), (matrix,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize(("rows", "cols", "iterations"), [(7, 5, 1), (9, 9, 4), (12, 3, 8), (1, 1, 3)])
def test_gram_bound_node_equals_its_autograd_reference(dtype, rows, cols, iterations):
    generator = torch.Generator().manual_seed(rows * cols + iterations)
    tall = torch.randn(rows, cols, generator=generator, dtype=dtype).requires_grad_()
    fast, reference = _GramLogBound.apply(tall, iterations), gram_log_bound_ref(tall, iterations)
    torch.testing.assert_close(fast, reference, rtol=1e-13, atol=1e-13)
    (fast_grad,), (reference_grad,) = (torch.autograd.grad(value, tall) for value in (fast, reference))
    torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)])
def test_a_zero_matrix_has_bound_zero_and_finite_gradients(shape):
    """A zero-initialised weight must not make the first step's gradients NaN (0 * inf in the backward)."""
    matrix = torch.zeros(shape, requires_grad=True)
    assert float(spectral_norm_bound(matrix)) == 0.0
    contraction, certified = normalize_to_contraction(matrix)
    (gradient,) = torch.autograd.grad(contraction.sum() + certified + spectral_norm_bound(matrix), matrix)
    assert torch.isfinite(gradient).all()


def test_the_autograd_reference_works_after_a_first_call_in_inference_mode():
    """Lightning validates (under inference mode) before it trains: nothing cached then may break a backward."""
    matrix = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    with torch.inference_mode():
        spectral_norm_bound(matrix, iterations=13)  # an iteration count no other test uses: a first call
    (gradient,) = torch.autograd.grad(gram_log_bound_ref(matrix, 13), matrix)
    assert torch.isfinite(gradient).all()


def test_normalize_to_contraction_certifies_the_result():
    generator = torch.Generator().manual_seed(2)
    for scale in (1e-3, 0.5, 1.0, 7.0, 1e4):
        matrix = scale * torch.randn(30, 20, generator=generator)
        contraction, certified = normalize_to_contraction(matrix)
        assert exact_norm(contraction) <= float(certified) <= 1.0
    small = 0.1 * with_singular_values([1.0, 0.5], 6, 6)
    contraction, certified = normalize_to_contraction(small)
    torch.testing.assert_close(contraction, small, rtol=1e-5, atol=0)  # a contraction maps (almost) to itself
    assert float(certified) < 0.11


@pytest.mark.parametrize(
    ("matrix", "iterations", "message"),
    [(torch.ones(3), 8, "matrix"), (torch.ones(3, 3), 0, "iterations")],
)
def test_bad_input_is_rejected(matrix, iterations, message):
    with pytest.raises(ValueError, match=message):
        spectral_norm_bound(matrix, iterations)


@pytest.mark.parametrize("shape", [(5, 7), (7, 5)])  # tall and wide: each bounded through its smaller Gram matrix
def test_a_stack_is_bounded_matrix_by_matrix(shape):
    """spectral_norm_bound and normalize_to_contraction of a (2, 3, m, n) stack equal those of each matrix, in values
    and gradients (the tv core bounds W_in and W_out^T in one call)."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.05, 0.5, 1.0, 2.0, 5.0, 40.0]).view(2, 3, 1, 1)  # both sides of the contraction's 1
    stack = (scales * torch.randn(2, 3, *shape, generator=generator)).requires_grad_()
    weights = torch.randn(2, 3, *shape, generator=generator)
    normalized, certified = normalize_to_contraction(stack)
    bounds = spectral_norm_bound(stack)
    batched = torch.autograd.grad((normalized * weights).sum() + certified.sum() + bounds.sum(), stack)[0]
    for index in [(i, j) for i in range(2) for j in range(3)]:
        matrix = stack[index].detach().requires_grad_()
        one_normalized, one_certified = normalize_to_contraction(matrix)
        one_bound = spectral_norm_bound(matrix)
        torch.testing.assert_close(normalized[index], one_normalized, rtol=1e-6, atol=0)
        torch.testing.assert_close(certified[index], one_certified, rtol=1e-6, atol=0)
        torch.testing.assert_close(bounds[index], one_bound, rtol=1e-6, atol=0)
        total = (one_normalized * weights[index]).sum() + one_certified + one_bound
        torch.testing.assert_close(batched[index], torch.autograd.grad(total, matrix)[0], rtol=1e-5, atol=1e-7)
        assert float(bounds[index]) >= float(torch.linalg.matrix_norm(matrix.double(), ord=2))
