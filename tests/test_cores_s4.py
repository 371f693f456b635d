"""HiPPO-LegS and its DPLR form, the S4 Cauchy kernel against explicit powers, and the options of
the LTI cores."""

from __future__ import annotations

import math

import pytest
import torch

from ssm_lab.cores.s4 import S4
from ssm_lab.cores.s4d import S4D
from ssm_lab.cores.s5 import S5
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
