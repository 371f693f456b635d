"""IDS4's maps against the formula of its docstring, written out with explicit inverses."""

from __future__ import annotations

import pytest
import torch

import ssm_lab.ops.inverse as inverse_op
import ssm_lab.ops.matrix_scan as matrix_scan
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


@pytest.mark.parametrize("mode", ["scan", "parallel", "loop"])
def test_ids4_recurrence_keeps_the_parameters_precision_under_autocast(mode):
    """Under bf16 autocast the maps (their inverse and products) and the recurrence stay in float32 in every mode;
    only the readout runs in bf16."""
    torch.manual_seed(0)
    core = IDS4(4, d_state=8, input_dependence_std=0.5)
    x = torch.randn(2, 9, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, final = core(x, mode=mode)
    assert final.dtype == torch.float32
    reference, reference_final = core(x, mode=mode)
    torch.testing.assert_close(final, reference_final)
    assert (y.float() - reference).norm() <= 1e-2 * reference.norm()


@pytest.mark.gpu
@pytest.mark.skipif(matrix_scan.gpu_loops is None, reason="Triton is not installed")
@pytest.mark.parametrize("mode", ["scan", "parallel", "loop"])
def test_ids4_on_cuda_matches_the_float64_loop(mode):
    """float32 on CUDA: "scan" builds the maps with the Gauss-Jordan inverse kernel and runs the Triton time loop,
    "parallel" composes the same maps by the parallel scan, "loop" steps through them. Outputs, final state and
    the gradients w.r.t. input, initial state and every parameter against the loop of the same core in float64 on
    the CPU, normwise per tensor."""
    torch.manual_seed(0)
    core = IDS4(4, d_state=8, input_dependence_std=0.5)
    generator = torch.Generator().manual_seed(1)
    inputs = (torch.randn(3, 40, 4, generator=generator), torch.randn(3, 8, generator=generator))
    weights = torch.randn(3, 40, 4, generator=generator)
    calls, results = [], []
    affine_steps, inverse = matrix_scan.gpu_loops.affine_steps, inverse_op.gpu_kernel.inverse

    def recorded(name, function):
        def call(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)

        return call

    for device, dtype, run_mode in (("cuda", torch.float32, mode), ("cpu", torch.float64, "loop")):
        model = core.to(device, dtype)
        x, h0 = (tensor.to(device, dtype).requires_grad_(True) for tensor in inputs)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(matrix_scan.gpu_loops, "affine_steps", recorded("time loop", affine_steps))
            patch.setattr(inverse_op.gpu_kernel, "inverse", recorded("inverse", inverse))
            y, final = model(x, h0, mode=run_mode)
            loss = (y * weights.to(device, dtype)).sum() + final.sum()
            gradients = torch.autograd.grad(loss, (x, h0, *model.parameters()))
        results.append([t.cpu().double() for t in (y, final, *gradients)])
    expected = {"scan": ["inverse", "time loop", "time loop"], "parallel": ["inverse"], "loop": ["inverse"] * 40}
    assert calls == expected[mode]  # "scan": the forward loop and the adjoint's
    for ours, reference in zip(*results, strict=True):
        assert (ours - reference).norm() <= 2e-5 * reference.norm()
