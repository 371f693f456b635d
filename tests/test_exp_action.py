"""The Linear CDE's exact flow by the action of the exponentials (``ssm_lab.ops.exp_action``, C kernel) against its
reference twin, the maps formed by ``affine_exp`` and run by the loop; values and gradients."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.ops import exp_action
from ssm_lab.ops.exp_action import GPU_MIN_BATCH, MAX_ACTION_SQUARINGS, affine_flow_recurrence, exp_action_recurrence
from ssm_lab.ops.matrix_scan import affine_exp, matrix_recurrence_ref

pytestmark = pytest.mark.skipif(exp_action.cpu_kernel is None, reason="the C kernel did not build")

#: per-step scales of M's skew-symmetric part, whose exponential is a rotation: 1-norms up to ~9 sqrt(N), so from no
#: halving to 7 (N = 64) mixed within a sequence, with states that stay O(1)
SCALES = (0.02, 0.3, 1.0, 3.0, 8.0, 0.6, 0.1)


def _problem(batch: int, length: int, n: int, dtype: torch.dtype, column_major: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor(SCALES * (length // len(SCALES) + 1), dtype=torch.float64)[:length]
    skew = torch.randn(batch, length, n, n, generator=generator, dtype=torch.float64)
    general = torch.randn(batch, length, n, n, generator=generator, dtype=torch.float64)
    M = ((skew - skew.mT) * scales[:, None, None] + 0.5 * general) / n**0.5
    M = (M.mT.contiguous().mT if column_major else M).to(dtype)  # column-major: the layout the kernel reads
    v = torch.randn(batch, length, n, generator=generator, dtype=torch.float64).to(dtype)
    h0 = torch.randn(batch, n, generator=generator, dtype=torch.float64).to(dtype)
    weights = torch.randn(batch, length, n, generator=generator, dtype=torch.float64).to(dtype)
    return M.requires_grad_(True), v.requires_grad_(True), h0.requires_grad_(True), weights


def _values_and_gradients(recurrence, M, v, h0, weights):
    states = recurrence(M, v, h0)
    inputs = (M, v) if h0 is None else (M, v, h0)
    return (states, *torch.autograd.grad((states * weights).sum(), inputs))


def _assert_normwise_close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> None:
    error = (ours - reference).norm() / reference.norm()
    assert error <= tolerance, f"relative error {error:.2e} > {tolerance:.0e}"


@pytest.mark.parametrize("column_major", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize(("n", "length"), [(5, 1), (13, 7), (64, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_action_equals_the_formed_exponentials_values_and_gradients(dtype, n, length, with_h0, column_major):
    """Against affine_exp + the loop evaluated in float64, normwise per output and gradient (M, v, h0); N = 13 leaves
    a remainder after the kernel's eight-row passes, the scales give from 1 to 2^7 substeps per step."""
    M, v, h0, weights = _problem(2, length, n, dtype, column_major)
    h0 = h0 if with_h0 else None
    ours = _values_and_gradients(exp_action_recurrence, M, v, h0, weights)
    truth = [
        x.to(dtype)
        for x in _values_and_gradients(
            lambda *args: matrix_recurrence_ref(*affine_exp(args[0], args[1]), args[2]),
            *(None if x is None else x.detach().double().requires_grad_(True) for x in (M, v, h0)),
            weights.double(),
        )
    ]
    tolerance = 2e-5 if dtype == torch.float32 else 1e-12
    assert len(ours) == len(truth) == (4 if with_h0 else 3)
    for value, reference in zip(ours, truth, strict=True):
        _assert_normwise_close(value, reference, tolerance)


def test_exp_action_is_the_augmented_matrix_exponential_step_by_step():
    """One step from h0 against torch.linalg.matrix_exp([[M, v], [0, 0]]) applied to [h0; 1] (float64)."""
    M, v, h0, _ = _problem(3, 1, 6, torch.float64, column_major=False)
    augmented = torch.nn.functional.pad(torch.cat([M[:, 0], v[:, 0].unsqueeze(-1)], -1), (0, 0, 0, 1))
    expected = torch.linalg.matrix_exp(augmented) @ torch.nn.functional.pad(h0, (0, 1), value=1.0).unsqueeze(-1)
    torch.testing.assert_close(exp_action_recurrence(M, v, h0)[:, 0], expected[:, :-1, 0], rtol=1e-12, atol=1e-12)


def test_gradients_without_the_matrices_gradient():
    """With M constant the backward skips dM; dv and dh0 are unchanged."""
    M, v, h0, weights = _problem(2, 7, 4, torch.float64, column_major=True)
    with_M = _values_and_gradients(exp_action_recurrence, M, v, h0, weights)
    states = exp_action_recurrence(M.detach(), v, h0)
    grad_v, grad_h0 = torch.autograd.grad((states * weights).sum(), (v, h0))
    torch.testing.assert_close(grad_v, with_M[2], rtol=0, atol=0)
    torch.testing.assert_close(grad_h0, with_M[3], rtol=0, atol=0)


def test_dispatch_picks_the_action_on_cpu_and_forms_the_maps_past_the_squaring_limit():
    M, v, h0, _ = _problem(2, 7, 4, torch.float64, column_major=True)
    assert type(affine_flow_recurrence(M, v, h0).grad_fn).__name__ == "_ExpActionRecurrenceBackward"
    assert type(affine_flow_recurrence(M, v, h0, mode="loop").grad_fn).__name__ != "_ExpActionRecurrenceBackward"
    large = M * 2.0 ** (MAX_ACTION_SQUARINGS + 1)  # past the limit: the maps are formed (values equal)
    states = affine_flow_recurrence(large, v, h0)
    assert type(states.grad_fn).__name__ != "_ExpActionRecurrenceBackward"
    torch.testing.assert_close(states, exp_action_recurrence(large, v, h0), rtol=1e-10, atol=0)


def test_dispatch_forms_the_maps_without_the_kernel(monkeypatch):
    M, v, h0, _ = _problem(1, 5, 3, torch.float64, column_major=False)
    expected = exp_action_recurrence(M, v, h0)
    monkeypatch.setattr(exp_action, "cpu_kernel", None)
    states = affine_flow_recurrence(M, v, h0)
    assert type(states.grad_fn).__name__ != "_ExpActionRecurrenceBackward"
    torch.testing.assert_close(states, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="the exp-action CPU kernel is unavailable"):
        exp_action_recurrence(M, v, h0)


def test_non_finite_matrices_give_non_finite_states_and_do_not_stall():
    """An infinite norm takes no halvings (2^inf substeps would never end); the state is not finite."""
    M, v, h0, _ = _problem(1, 3, 4, torch.float32, column_major=False)
    M = M.detach().clone()
    M[0, 1, 2, 3] = float("inf")
    states = exp_action_recurrence(M, v.detach(), h0.detach())
    assert torch.isfinite(states[:, 0]).all() and not torch.isfinite(states[:, 1:]).all()


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="need M: \\(B, L, N, N\\) and v: \\(B, L, N\\), got \\(1, 2, 3, 2\\)"):
        exp_action_recurrence(torch.zeros(1, 2, 3, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="initial state must be \\(B, N\\) = \\(1, 3\\), got \\(3,\\)"):
        exp_action_recurrence(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="take CPU float32/float64 tensors or .*; got torch.float16 on cpu, N = 3"):
        exp_action_recurrence(torch.zeros(1, 2, 3, 3, dtype=torch.float16), torch.zeros(1, 2, 3, dtype=torch.float16))


# The Triton kernel (CUDA): the same contract as the C kernel, float32, N <= MAX_STATE.

needs_triton = pytest.mark.skipif(exp_action.gpu_kernel is None, reason="Triton is not installed")


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("column_major", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("length", [1, 9, 300])
@pytest.mark.parametrize("n", [5, 13, 64, 128])
def test_gpu_kernel_equals_the_formed_exponentials_values_and_gradients(n, length, with_h0, column_major):
    """The Triton kernel in float32 against affine_exp + the loop in float64 (on the CPU), normwise per output and
    gradient; N = 5 and 13 pad the kernel's power-of-two tile, the scales mix 1 to 2^7 substeps per step."""
    M, v, h0, weights = _problem(2, length, n, torch.float32, column_major)
    h0 = h0 if with_h0 else None
    on_gpu = [None if x is None else x.detach().cuda().requires_grad_(True) for x in (M, v, h0)]
    ours = _values_and_gradients(exp_action_recurrence, *on_gpu, weights.cuda())
    assert type(ours[0].grad_fn).__name__ == "_ExpActionRecurrenceBackward"
    truth = _values_and_gradients(
        lambda *args: matrix_recurrence_ref(*affine_exp(args[0], args[1]), args[2]),
        *(None if x is None else x.detach().double().requires_grad_(True) for x in (M, v, h0)),
        weights.double(),
    )
    assert len(ours) == len(truth) == (4 if with_h0 else 3)
    for value, reference in zip(ours, truth, strict=True):
        _assert_normwise_close(value.cpu().double(), reference, 5e-5 if length > 9 else 2e-5)


@pytest.mark.gpu
@needs_triton
def test_gpu_kernel_matches_the_c_kernel_and_skips_the_matrices_gradient_when_constant():
    """The two kernels run the same arithmetic: float32 values and gradients agree to rounding."""
    M, v, h0, weights = _problem(3, 40, 24, torch.float32, column_major=True)
    on_cpu = _values_and_gradients(exp_action_recurrence, M, v, h0, weights)
    on_gpu = [x.detach().cuda().requires_grad_(True) for x in (M, v, h0)]
    ours = _values_and_gradients(exp_action_recurrence, *on_gpu, weights.cuda())
    for value, reference in zip(ours, on_cpu, strict=True):
        _assert_normwise_close(value.cpu(), reference, 1e-5)
    states = exp_action_recurrence(on_gpu[0].detach(), *on_gpu[1:])
    grad_v, grad_h0 = torch.autograd.grad((states * weights.cuda()).sum(), on_gpu[1:])
    torch.testing.assert_close(grad_v, ours[2], rtol=0, atol=0)
    torch.testing.assert_close(grad_h0, ours[3], rtol=0, atol=0)


@pytest.mark.gpu
@needs_triton
def test_gpu_dispatch_takes_the_kernel_for_float32_states_it_holds():
    """float32, N <= MAX_STATE, GPU_MIN_BATCH rows: the kernel; fewer rows, float64, a larger state or mode "loop":
    the formed maps (same values)."""
    M, v, h0, _ = _problem(GPU_MIN_BATCH, 7, 4, torch.float32, column_major=True)
    M, v, h0 = (x.detach().cuda() for x in (M, v, h0))
    states = affine_flow_recurrence(M.requires_grad_(True), v, h0)
    assert type(states.grad_fn).__name__ == "_ExpActionRecurrenceBackward"
    formed = affine_flow_recurrence(M, v, h0, mode="loop")
    assert type(formed.grad_fn).__name__ != "_ExpActionRecurrenceBackward"
    torch.testing.assert_close(states, formed, rtol=1e-5, atol=1e-5)
    fewer = affine_flow_recurrence(M[1:], v[1:], h0[1:])
    assert type(fewer.grad_fn).__name__ != "_ExpActionRecurrenceBackward"
    torch.testing.assert_close(fewer, states[1:], rtol=1e-5, atol=1e-5)
    double = affine_flow_recurrence(M.double(), v.double(), h0.double())
    assert type(double.grad_fn).__name__ != "_ExpActionRecurrenceBackward"
    n = exp_action.gpu_kernel.MAX_STATE + 1
    large = torch.zeros(GPU_MIN_BATCH, 2, n, n, device="cuda", requires_grad=True)
    drive = torch.ones(GPU_MIN_BATCH, 2, n, device="cuda")
    assert type(affine_flow_recurrence(large, drive).grad_fn).__name__ != "_ExpActionRecurrenceBackward"
    with pytest.raises(ValueError, match=f"CUDA float32 tensors with N <= {n - 1}; got torch.float32 on cuda:0"):
        exp_action_recurrence(large, drive)
