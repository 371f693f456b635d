"""The matrix-product scan (loop vs parallel), the Linear CDE's solvers and the least-squares
readout of the random-feature baseline."""

from __future__ import annotations

import itertools

import pytest
import torch

from ssm_lab.cores import lcde as lcde_module
from ssm_lab.cores.ids4 import IDS4
from ssm_lab.cores.lcde import LinearCDE, dormand_prince_affine
from ssm_lab.ops import exp_action, matrix_scan
from ssm_lab.ops.matrix_scan import (
    AUTO_EXP_BATCH,
    affine_exp,
    affine_step,
    batched_affine_exp,
    chunked_matrix_recurrence,
    matrix_recurrence,
    matrix_recurrence_ref,
    matrix_recurrence_scan,
    window_steps,
)
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
    with pytest.raises(
        ValueError, match="unknown matrix recurrence mode 'tree'; choose one of scan, parallel, sequential, loop"
    ):
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
    torch.testing.assert_close(transition, exponential)  # affine_exp against torch's scaling and squaring
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


@pytest.mark.parametrize("max_batch", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 5.0])
def test_affine_exp_is_the_augmented_matrix_exp_values_and_gradients(scale, dtype, max_batch):
    """Against torch.linalg.matrix_exp([[M, v], [0, 0]]) for 1-norms from zero to ~40 (up to 6 squarings), in
    calls of at most 3 matrices (14 in calls of 3, 3, 3, 3, 2) or one."""
    generator = torch.Generator().manual_seed(3)
    M = (scale * torch.randn(2, 7, 4, 4, generator=generator, dtype=torch.float64)).to(dtype).requires_grad_(True)
    v = torch.randn(2, 7, 4, generator=generator, dtype=torch.float64).to(dtype).requires_grad_(True)
    weights = torch.randn(2, 7, 5, 5, generator=generator, dtype=torch.float64).to(dtype)[..., :4, :]
    augmented = torch.nn.functional.pad(torch.cat([M, v.unsqueeze(-1)], -1), (0, 0, 0, 1))  # a zero bottom row
    reference = torch.linalg.matrix_exp(augmented)[..., :4, :]
    exponential, offset = batched_affine_exp(M, v, max_batch)
    ours = torch.cat([exponential, offset.unsqueeze(-1)], -1)
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    assert torch.allclose(ours, reference, **tolerance)
    for ours_grad, reference_grad in zip(
        torch.autograd.grad((ours * weights).sum(), (M, v)),
        torch.autograd.grad((reference * weights).sum(), (M, v)),
        strict=True,
    ):
        assert torch.allclose(ours_grad, reference_grad, **tolerance)


def test_auto_exp_batch_splits_by_device_and_gives_the_same_values(monkeypatch):
    """On CPU "auto" calls affine_exp on at most AUTO_EXP_BATCH["cpu"] matrices: 600 matrices -> 256 + 256 + 88."""
    generator = torch.Generator().manual_seed(4)
    M = 0.3 * torch.randn(3, 200, 4, 4, generator=generator)
    v = torch.randn(3, 200, 4, generator=generator)
    sizes = []
    monkeypatch.setattr(matrix_scan, "affine_exp", lambda M, v: sizes.append(M.shape[0]) or affine_exp(M, v))
    exponential, offset = batched_affine_exp(M, v)
    assert sizes == [256, 256, 88] and AUTO_EXP_BATCH["cpu"] == 256
    whole = affine_exp(M, v)
    torch.testing.assert_close(exponential, whole[0])
    torch.testing.assert_close(offset, whole[1])
    sizes.clear()
    monkeypatch.setattr(exp_action, "cpu_kernel", None)  # the maps formed on CPU: what CUDA does, or without C
    LinearCDE(3, d_state=4)(torch.randn(2, 300, 3))  # the core's default is "auto" too: 600 maps
    assert sizes == [256, 256, 88]


def test_affine_exp_rejects_bad_batches():
    with pytest.raises(ValueError, match="max_batch must be a positive integer, 'auto' or None, got 0"):
        batched_affine_exp(torch.zeros(2, 3, 3), torch.zeros(2, 3), max_batch=0)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("solver", ["exp", "euler"])
def test_lcde_small_exp_batches_and_scan_windows_match_the_loop(solver, recompute):
    """A batch limit of 5 matrices and windows of 4 steps (not dividing L = 11) against the loop:
    outputs, final states and gradients w.r.t. input, initial state and every parameter."""
    torch.manual_seed(0)
    core = LinearCDE(3, d_state=4, solver=solver, init_std=0.5, max_exp_batch=5, chunk_length=4, recompute=recompute)
    core = core.double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, 3, generator=generator, dtype=torch.float64).requires_grad_(True)
    h0 = torch.randn(2, 4, generator=generator, dtype=torch.float64).requires_grad_(True)
    timesteps = 0.5 + torch.rand(2, 11, generator=generator, dtype=torch.float64)
    weights = torch.randn(2, 11, 3, generator=generator, dtype=torch.float64)
    results = []
    for mode in ("loop", "scan"):
        y, final = core(x, h0, mode=mode, integration_timesteps=timesteps)
        loss = (y * weights).sum() + final.sum()
        results.append((y, final, *torch.autograd.grad(loss, (x, h0, *core.parameters()))))
    for ours, reference in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference)


@pytest.mark.gpu
@pytest.mark.skipif(exp_action.gpu_kernel is None, reason="Triton is not installed")
@pytest.mark.parametrize("chunk_length", ["auto", 5])
def test_lcde_on_cuda_runs_the_kernel_and_matches_the_loop(chunk_length):
    """float32 on CUDA with GPU_MIN_BATCH rows: mode "scan" runs the Triton kernel (in windows or not). Its outputs,
    final states and gradients w.r.t. input, initial state and every parameter against the loop of the same core in
    float64 on the CPU, normwise per tensor."""
    torch.manual_seed(0)
    core = LinearCDE(6, d_state=8, init_std=0.5, chunk_length=chunk_length)
    batch = exp_action.GPU_MIN_BATCH
    generator = torch.Generator().manual_seed(1)
    inputs = (torch.randn(batch, 23, 6, generator=generator), torch.randn(batch, 8, generator=generator))
    weights = torch.randn(batch, 23, 6, generator=generator)
    results = []
    for device, dtype, mode in (("cuda", torch.float32, "scan"), ("cpu", torch.float64, "loop")):
        model = core.to(device, dtype)
        x, h0 = (tensor.to(device, dtype).requires_grad_(True) for tensor in inputs)
        y, final = model(x, h0, mode=mode)
        loss = (y * weights.to(device, dtype)).sum() + final.sum()
        results.append([t.cpu().double() for t in (y, final, *torch.autograd.grad(loss, (x, h0, *model.parameters())))])
        if device == "cuda":
            seen, pending = set(), [y.grad_fn]
            while pending:  # the backward graph of "scan" holds the kernel's node
                node = pending.pop()
                if node not in seen:
                    seen.add(node)
                    pending.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
            assert "_ExpActionRecurrenceBackward" in {type(node).__name__ for node in seen}
    for ours, reference in zip(*results, strict=True):
        assert (ours - reference).norm() <= 2e-5 * reference.norm()


@pytest.mark.parametrize(
    ("solver", "mode"), [("exp", "scan"), ("exp", "parallel"), ("exp", "loop"), ("exp", "adaptive"),
                         ("euler", "scan"), ("euler", "parallel"), ("euler", "loop")]
)  # fmt: skip
def test_lcde_recurrence_keeps_the_parameters_precision_under_autocast(solver, mode):
    """Under bf16 autocast the vector fields, the exponentials and the recurrence stay in float32 in every mode
    (the formed maps' products and the parallel scan ran in bf16 before); only the readout runs in bf16, so the
    final state is the float32 one and the output is within bf16 rounding of it."""
    torch.manual_seed(0)
    core = LinearCDE(6, d_state=8, init_std=0.5, solver=solver)
    x = torch.randn(2, 9, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        M, v = core.vector_field(x, None)
        y, final = core(x, mode=mode)
    assert M.dtype == v.dtype == final.dtype == torch.float32
    reference, reference_final = core(x, mode=mode)
    torch.testing.assert_close(final, reference_final)
    assert (y.float() - reference).norm() <= 1e-2 * reference.norm()


def test_chunked_matrix_recurrence_equals_the_scan_and_rejects_bad_windows():
    generator = torch.Generator().manual_seed(2)
    M = 0.5 * torch.randn(2, 9, 3, 3, generator=generator, dtype=torch.float64)
    v = torch.randn(2, 9, 3, generator=generator, dtype=torch.float64)
    h0 = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    windows = []
    states = chunked_matrix_recurrence(lambda M, v: windows.append(v.shape[1]) or (M, v), (M, v), h0, 4)
    assert windows == [4, 4, 1]
    torch.testing.assert_close(states, matrix_recurrence_ref(M, v, h0))
    with pytest.raises(ValueError, match="chunk_length must be a positive integer or None, got 0"):
        chunked_matrix_recurrence(lambda M, v: (M, v), (M, v), h0, 0)


def test_auto_windows_hold_16_mib_of_maps_on_cpu_and_the_whole_sequence_elsewhere():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert window_steps("auto", 16, 64, torch.float32, cpu) == 64  # 16 x 64 x 64 x 64 x 4 bytes = 16 MiB
    assert window_steps("auto", 16, 64, torch.float64, cpu) == 32
    assert window_steps("auto", 4096, 256, torch.float32, cpu) == 1  # never less than one step
    assert window_steps("auto", 16, 64, torch.float32, cuda) is None
    assert window_steps(7, 16, 64, torch.float32, cpu) == 7 and window_steps(None, 16, 64, torch.float32, cpu) is None
    with pytest.raises(ValueError, match="max_exp_batch must be a positive integer, 'auto' or None, got -1"):
        LinearCDE(3, max_exp_batch=-1)


@pytest.mark.parametrize(("d_model", "d_state"), [(4, 4), (32, 16)])
def test_one_adam_step_moves_the_vector_fields_by_a_width_independent_fraction(d_model, d_state):
    """Adam's first step moves every trained entry by lr (m / sqrt(v) = sign(g)). The vector fields A_i
    must move by lr / init_std of their size, not lr sqrt(N (1 + H)) / init_std: with the 1/sqrt(N (1 + H))
    scale inside the parameter, training at d_model 128, d_state 64 enlarged M_t until the state overflowed."""
    torch.manual_seed(0)
    lr, init_std = 1e-3, 0.5
    core = LinearCDE(d_model, d_state=d_state, init_std=init_std)
    before = core.vector_field(torch.eye(d_model), None)[0].detach()  # M for one unit increment per channel
    optimizer = torch.optim.Adam(core.parameters(), lr=lr)
    y, _ = core(torch.randn(8, 20, d_model))
    y.square().mean().backward()
    optimizer.step()
    after = core.vector_field(torch.eye(d_model), None)[0].detach()
    relative_change = ((after - before).norm() / before.norm()).item()
    assert 0.5 * lr / init_std < relative_change < 2 * lr / init_std


def test_state_log_norm_grows_by_half_the_squared_init_std_per_step():
    """With A_i ~ init_std N(0, 1 / (N (1 + H))) and unit-variance increments, M_t fills a disc of radius ~init_std
    and log|h_t| grows by ~init_std^2 / 2 per step, whatever the widths: 50 steps stay far inside fp32."""
    torch.manual_seed(0)
    core = LinearCDE(64, d_state=32, init_std=0.5)
    with torch.no_grad():
        states = core(torch.randn(16, 50, 64))[1]
        halfway = core(torch.randn(16, 25, 64))[1]
    rate = (states.norm(dim=-1).log().mean() - halfway.norm(dim=-1).log().mean()).item() / 25
    assert 0.06 < rate < 0.19  # 0.5^2 / 2 = 0.125


@pytest.mark.parametrize("make", [lambda: LinearCDE(3, d_state=4), lambda: LinearCDE(3, d_state=4, solver="euler"),
                                  lambda: IDS4(3, d_state=4)])  # fmt: skip
def test_parallel_mode_runs_the_parallel_scan_and_scan_mode_does_not_on_cpu(make, monkeypatch):
    """Mode "parallel" forms the maps and composes them by the parallel scan (the same values as "scan"); "scan"
    on CPU runs the sequential kernels instead."""
    calls = []
    parallel = matrix_scan._PATHS["parallel"]
    monkeypatch.setitem(matrix_scan._PATHS, "parallel", lambda *args: calls.append(1) or parallel(*args))
    torch.manual_seed(0)
    core = make().double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    y_scan, state_scan = core(x, mode="scan")
    assert calls == []
    y_parallel, state_parallel = core(x, mode="parallel")
    assert calls
    torch.testing.assert_close(y_parallel, y_scan)
    torch.testing.assert_close(state_parallel, state_scan)


@pytest.fixture
def bounded_solver(monkeypatch):
    """Fail, rather than hang, a test whose adaptive solve evaluates its field more than 20000 times (the endless
    step shrinking a NaN error estimate caused)."""
    calls = itertools.count(1)

    def counted(M, v, h):
        if next(calls) > 20_000:
            raise AssertionError("the adaptive solver did not stop")
        return affine_step(M, v, h)

    monkeypatch.setattr(lcde_module, "affine_step", counted)


def test_adaptive_mode_keeps_padding_out_of_the_solver(bounded_solver):
    """A NaN in the padding of a padded batch: the other modes give finite real outputs; "adaptive" looped forever
    (one step size for the batch, shrunk by every rejection of the NaN error). Its real outputs and final states
    must equal the loop's."""
    torch.manual_seed(0)
    core = LinearCDE(2, d_state=3, init_std=0.5, rtol=1e-10, atol=1e-12).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    x[1, 3] = float("nan")
    lengths = torch.tensor([4, 3])
    y, final = core(x, mode="adaptive", lengths=lengths)
    y_loop, final_loop = core(x, mode="loop", lengths=lengths)
    torch.testing.assert_close(y[0], y_loop[0])
    torch.testing.assert_close(y[1, :3], y_loop[1, :3])
    torch.testing.assert_close(final, final_loop)


def test_adaptive_solver_raises_on_a_nan_in_a_real_token(bounded_solver):
    torch.manual_seed(0)
    core = LinearCDE(2, d_state=3, init_std=0.5).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    x[1, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"field M h \+ v is not finite at s = 0 \(step 0.5\)"):
        core(x, mode="adaptive", lengths=torch.tensor([4, 3]))


def test_adaptive_solver_raises_when_its_step_underflows(bounded_solver):
    """Tolerances below float64's rounding cannot be met: the step shrinks to eps and the solver says so."""
    M = -torch.eye(2, dtype=torch.float64).unsqueeze(0)
    v, h = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)  # h(s) = e^-s h(0)
    with pytest.raises(FloatingPointError, match=r"the step fell to .* < eps = 2.22e-16 at s = \S+ without meeting"):
        dormand_prince_affine(M, v, h, rtol=1e-300, atol=1e-300)


def test_lcde_rejects_a_wrong_batch_initial_state_in_every_mode():
    """default_state(1) with B = 3 was broadcast silently by "scan", "loop" and "adaptive"."""
    core = LinearCDE(2, d_state=3)
    for mode in core.modes:
        with pytest.raises(
            ValueError, match=r"LinearCDE state must have shape \(3, 3\) \(default_state\(B\)\), got \(1, 3\)"
        ):
            core(torch.randn(3, 4, 2), state=core.default_state(1), mode=mode)
