"""The LRU core meets the core contract: scan == loop (outputs and gradients), chunked == whole,
step() == forward, padding never reaches the final state, and |lambda| < 1."""

import pytest
import torch

from ssm_lab.cores.lru import LRU
from ssm_lab.ops.scan import (
    linear_recurrence_adjoint,
    linear_recurrence_chunked,
    linear_recurrence_ref,
    linear_recurrence_scan,
)


@pytest.fixture
def core() -> LRU:
    torch.manual_seed(0)
    return LRU(d_model=6, d_state=5, r_min=0.5, r_max=0.99)


@pytest.mark.parametrize("length", [1, 2, 7, 64])
def test_scan_matches_loop_outputs_and_gradients(core: LRU, length: int):
    x = torch.randn(3, length, 6, requires_grad=True)
    h0 = torch.randn(3, 5, dtype=torch.complex64)
    outputs = {}
    for mode in ("loop", "scan"):
        core.zero_grad()
        x.grad = None
        y, state = core(x, state=h0, mode=mode)
        (y.square().sum() + state.abs().sum()).backward()
        outputs[mode] = (y, state, x.grad.clone(), [p.grad.clone() for p in core.parameters()])
    (y_l, s_l, gx_l, gp_l), (y_s, s_s, gx_s, gp_s) = outputs["loop"], outputs["scan"]
    torch.testing.assert_close(y_s, y_l, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_s, s_l, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_s, gx_l, atol=1e-4, rtol=1e-4)
    for g_s, g_l in zip(gp_s, gp_l, strict=True):
        torch.testing.assert_close(g_s, g_l, atol=1e-4, rtol=1e-4)


def test_time_varying_scan_matches_loop():
    torch.manual_seed(1)
    a = torch.rand(2, 37, 4) * torch.exp(1j * torch.rand(2, 37, 4))
    b = torch.randn(2, 37, 4, dtype=torch.complex64)
    h0 = torch.randn(2, 4, dtype=torch.complex64)
    torch.testing.assert_close(linear_recurrence_scan(a, b, h0), linear_recurrence_ref(a, b, h0), atol=1e-5, rtol=1e-5)


def test_chunked_calls_equal_whole(core: LRU):
    x = torch.randn(2, 20, 6)
    y, state = core(x)
    y1, s1 = core(x[:, :8])
    y2, s2 = core(x[:, 8:], state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, state, atol=1e-5, rtol=1e-5)


def test_step_matches_forward(core: LRU):
    x = torch.randn(2, 9, 6)
    y, final = core(x)
    state = core.default_state(2)
    steps = []
    for t in range(9):
        y_t, state = core.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, final, atol=1e-5, rtol=1e-5)


def test_padding_never_reaches_the_final_state(core: LRU):
    x = torch.randn(2, 10, 6)
    lengths = torch.tensor([10, 4])
    y, state = core(x, lengths=lengths)
    _, short_state = core(x[1:, :4])
    torch.testing.assert_close(state[1], short_state[0], atol=1e-6, rtol=1e-6)
    padded = x.clone()
    padded[1, 4:] = 99.0
    y_padded, state_padded = core(padded, lengths=lengths)
    torch.testing.assert_close(y_padded[1, :4], y[1, :4])
    torch.testing.assert_close(state_padded, state)


def test_eigenvalues_are_stable_for_any_parameters(core: LRU):
    with torch.no_grad():
        for p in (core.nu_log, core.theta_log):
            p.add_(10 * torch.randn_like(p))
    assert bool((core.eigenvalues().abs() < 1).all())


def test_init_ring(core: LRU):
    torch.manual_seed(0)
    radius = LRU(d_model=4, d_state=2000, r_min=0.5, r_max=0.9).eigenvalues().abs()
    assert 0.5 - 1e-4 <= radius.min() and radius.max() <= 0.9 + 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 0}, "d_model must be a positive integer, got 0"),
        ({"d_model": 4, "d_state": -2}, "d_state must be a positive integer, got -2"),
        ({"d_model": 4, "r_min": 0.9, "r_max": 0.5}, "r_min < r_max"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRU(**kwargs)


def test_bad_mode_and_shape(core: LRU):
    with pytest.raises(ValueError, match="no mode 'bogus'; choose one of scan, loop"):
        core(torch.randn(1, 3, 6), mode="bogus")
    with pytest.raises(ValueError, match=r"core input must be \(B, L, 6\), got shape \(1, 3, 5\)"):
        core(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="initial state must be"):
        core(torch.randn(1, 3, 6), state=torch.zeros(2, 5, dtype=torch.complex64))


def _recurrence_inputs(dtype, decay_shape, with_h0, sizes, seed):
    """(a of the given decay shape, b, h0 or None, a random cotangent of the states), scaled by 1/2, on autograd."""
    generator = torch.Generator().manual_seed(seed)
    batch, length, n = sizes

    def sample(*shape):
        real = torch.randn(*shape, generator=generator, dtype=torch.float64)
        if dtype.is_complex:
            real = torch.complex(real, torch.randn(*shape, generator=generator, dtype=torch.float64))
        return (0.5 * real).to(dtype)

    shapes = {"N": (n,), "1LN": (1, length, n), "BLN": (batch, length, n), "B1N": (batch, 1, n)}
    a = sample(*shapes[decay_shape]).requires_grad_()
    b = sample(batch, length, n).requires_grad_()
    h0 = sample(batch, n).requires_grad_() if with_h0 else None
    return a, b, h0, sample(batch, length, n)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
@pytest.mark.parametrize("length", [1, 2, 7, 31, 32, 33, 100])
@pytest.mark.parametrize("decay_shape", ["N", "1LN", "BLN", "B1N"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_chunked_recurrence_matches_the_loop_in_values_and_gradients(dtype, length, decay_shape, with_h0):
    """Constant and per-step decays, shared or per-sequence, lengths around the chunk size (4)."""
    a, b, h0, weights = _recurrence_inputs(dtype, decay_shape, with_h0, (3, length, 5), seed=length)
    inputs = [a, b] + ([h0] if with_h0 else [])
    results = []
    for states in (linear_recurrence_chunked(a, b, h0, chunk_size=4), linear_recurrence_ref(a, b, h0)):
        results.append((states, torch.autograd.grad((states * weights).real.sum(), inputs)))
    (chunked, chunked_grads), (loop, loop_grads) = results
    torch.testing.assert_close(chunked, loop, atol=1e-10, rtol=1e-10)
    for got, expected in zip(chunked_grads, loop_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_chunked_recurrence_rejects_a_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):
        linear_recurrence_chunked(torch.ones(3), torch.ones(1, 2, 3), chunk_size=0)


@pytest.mark.parametrize("mode", ["scan", "chunked", "torch_scan", "loop"])
@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
@pytest.mark.parametrize("decay_shape", ["N", "1LN", "BLN", "B1N"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_adjoint_from_the_states_equals_autograd_of_the_loop(mode, dtype, decay_shape, with_h0):
    """linear_recurrence_adjoint (what a fused node calls in its backward) == autograd of the loop."""
    a, b, h0, grad_states = _recurrence_inputs(dtype, decay_shape, with_h0, (3, 37, 4), seed=7)
    inputs = [a, b] + ([h0] if with_h0 else [])
    states = linear_recurrence_ref(a, b, h0)
    expected = torch.autograd.grad(states, inputs, grad_states)
    grad_a, grad_b, grad_h0 = linear_recurrence_adjoint(a.detach(), states.detach(), h0, grad_states, mode=mode)
    got = [grad_a.reshape(a.shape), grad_b] + ([grad_h0] if with_h0 else [])
    for value, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(value, reference, atol=1e-10, rtol=1e-10)
    assert grad_h0 is None or with_h0
    with pytest.raises(ValueError, match="unknown recurrence mode 'bogus'"):
        linear_recurrence_adjoint(a.detach(), states.detach(), None, grad_states, mode="bogus")
