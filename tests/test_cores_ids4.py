"""IDS4's maps against the formula of its docstring, written out with explicit inverses."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.cores.ids4 import IDS4


@pytest.mark.parametrize("irregular", [False, True])
def test_ids4_transitions_are_the_bilinear_maps_of_the_input_dependent_matrix(irregular):
    """Abar_t = (I - dt_t/2 A(x_t))^-1 (I + dt_t/2 A(x_t)), Bbar_t x_t = (I - dt_t/2 A(x_t))^-1 dt_t B x_t with
    A(x_t) = A_0 + sum_j x_t,j A_j and dt_t = tau_t exp(log_dt), for a token batch of shape (2, 3)."""
    torch.manual_seed(0)
    core = IDS4(4, d_state=5, input_dependence_std=0.5).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    tau = 0.5 + torch.rand(2, 3, dtype=torch.float64) if irregular else None
    transition, inputs = core.transitions(x, tau)
    dt = torch.exp(core.log_dt) * (torch.ones(2, 3, dtype=torch.float64) if tau is None else tau)
    eye = torch.eye(5, dtype=torch.float64)
    for b in range(2):
        for t in range(3):
            A = core.A_0 + sum(x[b, t, j] * core.A_input[j] for j in range(4))
            inverse = torch.linalg.inv(eye - dt[b, t] / 2 * A)
            torch.testing.assert_close(transition[b, t], inverse @ (eye + dt[b, t] / 2 * A))
            torch.testing.assert_close(inputs[b, t], inverse @ (dt[b, t] * core.B @ x[b, t]))
