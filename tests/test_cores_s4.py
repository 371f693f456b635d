"""HiPPO-LegS and its DPLR form, the S4 Cauchy kernel against explicit powers, and the options of
the LTI cores."""

from __future__ import annotations

import math

import pytest
import torch

from ssm_lab.cores.s4 import S4, DecayPowers, cauchy_sums, cauchy_sums_ref
from ssm_lab.cores.s4d import S4D
from ssm_lab.cores.s5 import S5
from ssm_lab.ops.fft_conv import causal_conv, causal_conv_ref
from ssm_lab.ops.hippo import conjugate_half, legs, legs_dplr, s4d_lin_eigenvalues


def test_legs_matrix_entries():
    A, B = legs(3)
    expected = -torch.tensor([[1, 0, 0], [math.sqrt(3), 2, 0], [math.sqrt(5), math.sqrt(15), 3]], dtype=torch.float64)
    torch.testing.assert_close(A, expected)
    torch.testing.assert_close(B, torch.sqrt(torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)))


@pytest.mark.parametrize("n", [1, 4, 16])
def test_dplr_form_reconstructs_legs(n):
    eigenvalues, p, b, V = legs_dplr(n)
    A, B = legs(n)
    rebuilt = V @ (torch.diag(eigenvalues) - p.unsqueeze(1) * p.conj().unsqueeze(0)) @ V.conj().T
    torch.testing.assert_close(rebuilt.real, A)
    torch.testing.assert_close(rebuilt.imag, torch.zeros_like(A), atol=1e-10, rtol=0)
    torch.testing.assert_close((V @ b).real, B)
    torch.testing.assert_close(eigenvalues.real, torch.full((n,), -0.5, dtype=torch.float64))


def test_conjugate_half_keeps_one_of_each_pair():
    eigenvalues, *_ = legs_dplr(6)
    kept = eigenvalues[conjugate_half(eigenvalues)]
    assert len(kept) == 3 and bool((kept.imag > 0).all())
    torch.testing.assert_close(
        torch.sort(s4d_lin_eigenvalues(3).imag).values, math.pi * torch.arange(3.0, dtype=torch.float64)
    )


def test_s4_kernel_equals_explicit_powers():
    torch.manual_seed(0)
    core = S4(3, d_state=5).double()
    length = 12
    impulse = torch.zeros(1, length, 3, dtype=torch.float64)
    impulse[:, 0] = 1
    response, _ = core(impulse, mode="conv")
    decay, input_map = core.discrete()
    C = torch.complex(core.C_re, core.C_im)
    state, expected = input_map, []
    for _ in range(length):
        expected.append((C * state).sum(-1).real)
        state = torch.einsum("hnm,hm->hn", decay, state)
    expected = torch.stack(expected) + torch.cat([core.D.unsqueeze(0), torch.zeros(length - 1, 3, dtype=torch.float64)])
    torch.testing.assert_close(response[0], expected)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: S4D(4, d_state=5), "d_state must be an even integer"),
        (lambda: S4D(4, init="random"), "unknown init 'random'; choose one of legs, lin"),
        (lambda: S4D(4, discretization="dirac"), "S4D takes discretization zoh or bilinear"),
        (lambda: S4D(4, discretization="euler"), "unknown discretization 'euler'; choose one of zoh, bilinear, dirac"),
        (lambda: S4D(4, dt_min=0.1, dt_max=0.01), "need 0 < dt_min <= dt_max"),
        (lambda: S5(4, d_state=5), "d_state must be an even integer"),
        (lambda: S5(4, discretization="foh"), "unknown discretization 'foh'"),
        (lambda: S4(4, d_state=0), "d_state must be a positive integer"),
    ],
)
def test_bad_lti_options_are_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _perturbed_s4(d_model: int, d_state: int) -> S4:
    """float64 S4 with every parameter moved off its init (C, B, p, Lambda no longer in the HiPPO pattern)."""
    torch.manual_seed(0)
    core = S4(d_model, d_state=d_state).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in core.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return core


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
def test_s4_cauchy_kernel_equals_dense_powers_values_and_gradients(length):
    """Algorithm 1 (Woodbury over Cauchy sums at the roots of unity, inverse FFT) against
    Re(C Abar^k Bbar) by dense solves and powers: the kernel and its gradient w.r.t. each parameter it uses."""
    core = _perturbed_s4(3, 6)
    weights = torch.randn(length, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    parameters = {name: p for name, p in core.named_parameters() if name != "D"}  # D is the skip, not the kernel
    results = []
    for kernel in (core.kernel_ref, core.kernel):
        values = kernel(length)
        results.append((values, *torch.autograd.grad((values * weights).sum(), list(parameters.values()))))
    names = ["kernel", *parameters]
    for name, ours, reference in zip(names, results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-10, rtol=1e-8, msg=lambda m, name=name: f"{name}: {m}")


def test_s4_closed_form_discretisation_equals_the_dense_solves():
    core = _perturbed_s4(3, 6)
    decay, input_map = core.discrete()
    torch.testing.assert_close(core.dense_decay(), decay)
    torch.testing.assert_close(core.discrete_dplr()[3], input_map)


@pytest.mark.parametrize("length", [5, 12])
def test_s4_conv_equals_loop_with_state_and_padding(length):
    core = _perturbed_s4(3, 6)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, length, 3, generator=generator, dtype=torch.float64)
    state = torch.randn(2, 3, 6, generator=generator, dtype=torch.complex128)
    lengths = torch.tensor([length, length - 2])
    real = (torch.arange(length) < lengths.unsqueeze(1)).unsqueeze(-1)  # outputs on padding are unspecified
    for mode_state in (None, state):
        (y, final), (y_loop, final_loop) = (core(x, mode_state, mode=m, lengths=lengths) for m in ("conv", "loop"))
        torch.testing.assert_close(y * real, y_loop * real)
        torch.testing.assert_close(final, final_loop)


def _cauchy_inputs(heads: int, length: int, states: int, columns: int) -> dict[str, torch.Tensor]:
    """S4's nodes (alpha = 1 - w, beta = dt/2 (1 + w) at the roots of unity w) with random poles and sums, float64."""
    generator = torch.Generator().manual_seed(4)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.complex128)

    roots = torch.polar(
        torch.ones(length, dtype=torch.float64), -2 * math.pi * torch.arange(length, dtype=torch.float64) / length
    )
    dt = torch.rand(heads, 1, generator=generator, dtype=torch.float64) + 0.1
    eigenvalues = torch.complex(
        -torch.rand(heads, states, generator=generator, dtype=torch.float64) - 0.1, randn(heads, states).imag
    )
    return {
        "eigenvalues": eigenvalues.requires_grad_(),
        "alpha": 1 - roots,
        "beta": (dt / 2 * (1 + roots)).requires_grad_(),
        "numerators": randn(heads, states, columns).requires_grad_(),
    }


def test_cauchy_sums_gradcheck():
    """The hand-written backward of the Cauchy sums against finite differences."""
    inputs = _cauchy_inputs(heads=2, length=6, states=3, columns=2)

    def sums(eigenvalues, beta, numerators):
        return cauchy_sums(eigenvalues, inputs["alpha"], beta, numerators)

    assert torch.autograd.gradcheck(sums, (inputs["eigenvalues"], inputs["beta"], inputs["numerators"]))


def test_cauchy_sums_equal_the_reference_values_and_gradients():
    """At a size split into uneven blocks of heads on CPU (1024 x 128 poles per head: blocks of 2, then 1)."""
    inputs = _cauchy_inputs(heads=3, length=1024, states=128, columns=4)
    differentiable = [inputs[name] for name in ("eigenvalues", "beta", "numerators")]
    cotangent = torch.randn(3, 1024, 4, generator=torch.Generator().manual_seed(5), dtype=torch.complex128)
    results = []
    for function in (cauchy_sums_ref, cauchy_sums):
        sums = function(**inputs)
        results.append((sums, *torch.autograd.grad((sums * cotangent.conj()).real.sum(), differentiable)))
    for name, ours, reference in zip(["sums", "eigenvalues", "beta", "numerators"], *results[::-1], strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-10, rtol=1e-8, msg=lambda m, name=name: f"{name}: {m}")


def test_cauchy_sums_refuse_differentiable_nodes():
    inputs = _cauchy_inputs(heads=1, length=4, states=2, columns=1)
    with pytest.raises(ValueError, match="nodes alpha as constants"):
        cauchy_sums(inputs["eigenvalues"], inputs["alpha"].requires_grad_(), inputs["beta"], inputs["numerators"])


@pytest.mark.parametrize("d_state", [1, 6, 16])
def test_decay_powers_equal_dense_matrix_powers(d_state):
    """Every product of ``DecayPowers`` (low-rank doublings, dense powers, sequential row steps, the state kernel)
    against torch.linalg.matrix_power of the dense Abar, values and gradients, float64."""
    core = _perturbed_s4(3, d_state)
    generator = torch.Generator().manual_seed(8)
    rows = torch.randn(3, 2, d_state, generator=generator, dtype=torch.complex128)
    parameters = [p for name, p in core.named_parameters() if name not in ("C_re", "C_im", "D")]

    def products(exponent, fast):
        decay = core.dense_decay()
        if not fast:
            power = torch.linalg.matrix_power(decay, exponent)
            kernel = torch.stack(
                [torch.linalg.matrix_power(decay, k) @ core.discrete_dplr()[3].unsqueeze(-1) for k in range(8)], 1
            )
            return rows @ power, rows @ power.mT, kernel.squeeze(-1), torch.linalg.matrix_power(decay, 8).mT
        powers = DecayPowers(*core.discrete_dplr()[:3])
        values = (powers.row_power(rows, exponent), powers.times(rows, exponent, transposed=True))
        return (*values, powers.state_kernel(core.discrete_dplr()[3], 3), powers.chunk_step(3))

    for exponent in (1, 5, 8, 40, 1000):
        results = []
        for fast in (False, True):
            values = products(exponent, fast)
            loss = sum((value * value.detach().conj()).real.sum() for value in values)
            results.append((*values, *torch.autograd.grad(loss, parameters)))
        for index, (ours, reference) in enumerate(zip(*results[::-1], strict=True)):
            torch.testing.assert_close(
                ours, reference, atol=1e-10, rtol=1e-8, msg=lambda m, i=index, e=exponent: f"{e}, output {i}: {m}"
            )


@pytest.mark.parametrize(("length", "d_state"), [(100, 8), (257, 16)])
def test_s4_conv_equals_loop_over_several_chunks(length, d_state):
    """Long enough for dense powers, several row steps and several chunks of the final state's Horner sum."""
    core = _perturbed_s4(2, d_state)
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(3, length, 2, generator=generator, dtype=torch.float64)
    state = torch.randn(3, 2, d_state, generator=generator, dtype=torch.complex128)
    lengths = torch.tensor([length, length - 30, 1])
    real = (torch.arange(length) < lengths.unsqueeze(1)).unsqueeze(-1)
    for mode_state in (None, state):
        (y, final), (y_loop, final_loop) = (core(x, mode_state, mode=m, lengths=lengths) for m in ("conv", "loop"))
        torch.testing.assert_close(y * real, y_loop * real)
        torch.testing.assert_close(final, final_loop)


def test_s4_conv_in_float32_keeps_float64_accuracy():
    """At the benchmark's state size and length (low-rank doublings up to rank 32, dense powers, 32 row steps, 8
    chunks), float32 outputs, final states and gradients stay close to the same computation in float64."""
    torch.manual_seed(0)
    single = S4(4, d_state=64)
    double = S4(4, d_state=64).double()
    double.load_state_dict(single.state_dict())
    x = torch.randn(3, 1024, 4, generator=torch.Generator().manual_seed(10))
    results = []
    for core, inputs in ((single, x), (double, x.double())):
        y, final = core(inputs, mode="conv")
        loss = y.square().mean() + final.abs().square().mean()
        results.append((y, final, *torch.autograd.grad(loss, list(core.parameters()))))
    names = ["y", "final", *(name for name, _ in single.named_parameters())]
    for name, ours, reference in zip(names, *results, strict=True):
        error = (ours.to(reference.dtype) - reference).norm() / reference.norm()
        assert error < (2e-5 if name in ("y", "final") else 1e-3), f"{name}: relative error {error:.1e}"


@pytest.mark.parametrize("length", [1, 2, 7, 16])
def test_causal_conv_equals_the_direct_sum_values_and_gradients(length):
    """The FFT convolution's hand-written adjoint against autograd through the O(L^2) sum."""
    generator = torch.Generator().manual_seed(6)
    u = torch.randn(3, length, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(length, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, length, 4, generator=generator, dtype=torch.float64)
    results = []
    for convolve in (causal_conv_ref, causal_conv):
        out = convolve(u, kernel)
        results.append((out, *torch.autograd.grad((out * weights).sum(), (u, kernel))))
    for name, ours, reference in zip(["out", "u", "kernel"], results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


def test_causal_conv_gradcheck():
    generator = torch.Generator().manual_seed(7)
    u = torch.randn(2, 5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_conv, (u, kernel))
