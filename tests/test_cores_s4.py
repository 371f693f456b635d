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
