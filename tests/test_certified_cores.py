"""lru, l2n, tv and l2ru cores: every mode against the loop reference (outputs and gradients),
chunking and streaming, and their certificates (gain <= gain_bound() <= gamma for any parameters)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ssm_lab.cores import tv as tv_module
from ssm_lab.cores.l2n import L2N
from ssm_lab.cores.l2ru import L2RU, dense_recurrence
from ssm_lab.cores.lru import LRU, diagonal_recurrence_conv
from ssm_lab.cores.tv import TV, normalize_2x2, tv_recurrence, tv_recurrence_ref
from ssm_lab.ops.scan import linear_recurrence
from ssm_lab.ops.spectral import normalize_to_contraction
from ssm_lab.optim import param_groups

D_MODEL, D_STATE = 6, 8
BUILDERS = {
    "lru": lambda: LRU(D_MODEL, D_STATE, r_min=0.5, r_max=0.99),
    "l2n": lambda: L2N(D_MODEL, D_STATE, gamma=1.7),
    "tv": lambda: TV(D_MODEL, D_STATE, gamma=1.7),
    "l2ru": lambda: L2RU(D_MODEL, D_STATE, gamma=1.7),
}
LTI = ("lru", "l2n", "l2ru")


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]()


def perturb(core: torch.nn.Module, scale: float, seed: int) -> None:
    """Add large noise to every parameter (the certificate must hold for ANY values)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in core.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def grads(core: torch.nn.Module, x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y, state = core(x, mode=mode)
    weights = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)
    loss = (weights * y).sum() + state.abs().sum()
    # with L = 1 the eigenvalues do not reach the output yet: their gradient is zero
    return torch.autograd.grad(loss, [x, *core.parameters()], allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("length", [1, 2, 7, 64])
def test_every_mode_matches_the_loop_reference(name, length):
    core = build(name, seed=length)
    x = torch.randn(3, length, D_MODEL)
    y_ref, state_ref = core(x, mode="loop")
    ref_grads = grads(core, x, "loop")
    for mode in core.modes:
        y, state = core(x, mode=mode)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state, state_ref, atol=1e-5, rtol=1e-5)
        for got, want in zip(grads(core, x, mode), ref_grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_chunks_steps_and_padding_match_the_whole_sequence(name):
    core = build(name)
    x = torch.randn(2, 11, D_MODEL)
    y, final = core(x)
    first, middle = core(x[:, :4])
    second, last = core(x[:, 4:], state=middle)
    torch.testing.assert_close(torch.cat([first, second], dim=1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, final, atol=1e-5, rtol=1e-5)
    state, outputs = core.default_state(2), []
    for t in range(x.shape[1]):
        y_t, state = core.step(x[:, t], state)
        outputs.append(y_t)
    torch.testing.assert_close(torch.stack(outputs, dim=1), y, atol=1e-5, rtol=1e-5)
    padded = torch.cat([x, 100 * torch.randn(2, 3, D_MODEL)], dim=1)
    y_padded, state_padded = core(padded, lengths=torch.tensor([11, 5]))
    torch.testing.assert_close(y_padded[0, :11], y[0], atol=1e-5, rtol=1e-5)  # the real tokens' outputs only
    torch.testing.assert_close(y_padded[1, :5], y[1, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_padded[0], final[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_padded[1], core(x[1:, :5])[1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "dynamics"),
    [
        ("lru", {"nu_log", "theta_log", "gamma_log"}),
        ("l2n", {"rho_logit", "theta"}),
        ("tv", {"delta_bias", "alpha"}),
        ("l2ru", {"X", "S"}),
    ],
)
def test_recurrence_parameters_are_tagged(name, dynamics):
    core = build(name)
    recurrence = param_groups(core, recurrence_lr=1e-3)[1]
    assert recurrence["weight_decay"] == 0.0 and recurrence["lr"] == 1e-3
    tagged = {key for key, value in core.named_parameters() if any(value is p for p in recurrence["params"])}
    assert tagged == dynamics


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_padding_of_any_value_reaches_no_real_output_state_or_gradient(name, fill):
    """As for the baseline cores (tests/test_cores_contract.py): in every mode, whatever the padding holds, the real
    tokens' outputs, the final state and the gradients of a loss on them equal those of zero padding."""
    core, x, lengths = build(name), torch.randn(3, 7, D_MODEL), torch.tensor([7, 4, 1])
    real = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    for mode in core.modes:
        results = []
        for padding in (0.0, fill):
            padded = torch.where(real.unsqueeze(-1), x, padding).requires_grad_(True)
            y, state = core(padded, mode=mode, lengths=lengths)
            loss = torch.where(real.unsqueeze(-1), y, 0.0).sum() + state.abs().sum()
            gradients = torch.autograd.grad(loss, [padded, *core.parameters()], allow_unused=True)
            results.append([y[real], state, gradients[0][real], *(g for g in gradients[1:] if g is not None)])
        for zero_padded, filled in zip(*results, strict=True):
            torch.testing.assert_close(filled, zero_padded, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_forward_and_gain_bound_agrees_with_its_parts(name):
    core = build(name)
    x = torch.randn(2, 5, D_MODEL)
    y, state, bound = core.forward_and_gain_bound(x)
    torch.testing.assert_close((y, state), core(x))
    torch.testing.assert_close(bound, core.gain_bound())


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("with_state", [False, True])
def test_residual_scale_equals_the_skip_added_after_the_core(name, with_state):
    """forward(x, residual_scale=s) folds s and the skip into the output products: it must equal
    x + s forward(x) in values and in the gradients of x, s and every parameter, in every mode."""
    core = build(name)
    x = torch.randn(2, 7, D_MODEL, requires_grad=True)
    scale = torch.tensor(0.3, requires_grad=True)
    state = core.default_state(2) + torch.randn_like(core.default_state(2)) if with_state else None
    inputs = [x, scale, *core.parameters()]
    for mode in core.modes:
        y, final = core(x, state=state, mode=mode, residual_scale=scale)
        y_ref, final_ref = core(x, state=state, mode=mode)
        y_ref = x + scale * y_ref
        torch.testing.assert_close((y, final), (y_ref, final_ref), atol=1e-5, rtol=1e-5)
        weights = torch.randn_like(y)
        got = torch.autograd.grad((weights * y).sum(), inputs, allow_unused=True, materialize_grads=True)
        want = torch.autograd.grad((weights * y_ref).sum(), inputs, allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("mode", ["scan", "loop"])
def test_l2n_equals_its_real_block_diagonal_definition(with_state, mode):
    """z_{t+1} = K11 z_t + K12 gamma u_t, y_t = K21 z_t + K22 gamma u_t with the dense real K, from z_0 = 0 or a
    given z_0 (the complex state h_j = z_2j + i z_2j+1): values and the gradients of x, z_0 and every parameter."""
    core = build("l2n").double()
    n = D_STATE
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 9, D_MODEL, dtype=torch.float64)

    def reference():
        K, _ = normalize_to_contraction(core.raw_step_matrix())
        assert torch.count_nonzero(K[:n, :n] * (1 - torch.block_diag(*[torch.ones(2, 2)] * (n // 2)))) == 0
        gamma, outputs = torch.exp(core.log_gamma), []
        z = z0 if with_state else torch.zeros(2, n, dtype=torch.float64)
        for x_t in x.unbind(1):
            outputs.append(z @ K[n:, :n].T + gamma * x_t @ K[n:, n:].T)
            z = z @ K[:n, :n].T + gamma * x_t @ K[:n, n:].T
        return torch.stack(outputs, dim=1)

    h0 = torch.complex(z0[:, 0::2], z0[:, 1::2]) if with_state else None
    inputs = [x, z0, *core.parameters()] if with_state else [x, *core.parameters()]
    ours, expected = core(x, h0, mode=mode)[0], reference()
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-10)
    gradients = torch.autograd.grad((ours * weights).sum(), inputs)
    for got, want in zip(gradients, torch.autograd.grad((expected * weights).sum(), inputs), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_conv_and_dense_recurrences_match_their_references():
    eigenvalues = 0.95 * torch.exp(1j * torch.rand(5) * math.pi)
    drive, h0 = torch.randn(2, 33, 5, dtype=torch.complex64), torch.randn(2, 5, dtype=torch.complex64)
    torch.testing.assert_close(
        diagonal_recurrence_conv(eigenvalues, drive, h0),
        linear_recurrence(eigenvalues, drive, h0, mode="loop"),
        atol=1e-5,
        rtol=1e-5,
    )
    A, real_drive, real_h0 = 0.3 * torch.randn(5, 5), torch.randn(2, 33, 5), torch.randn(2, 5)
    torch.testing.assert_close(
        dense_recurrence(A, real_drive, real_h0, "scan"),
        dense_recurrence(A, real_drive, real_h0, "loop"),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", LTI)
def test_frequency_response_is_the_transform_of_the_impulse_response(name):
    core = build(name).double()
    length = 256  # the impulse response has decayed below 1e-6 by then for these eigenvalues
    impulses = torch.eye(D_MODEL, dtype=torch.float64).unsqueeze(1) * (torch.arange(length) == 0).view(1, -1, 1)
    if name == "lru":
        with torch.no_grad():
            core.nu_log.clamp_(min=math.log(-math.log(0.9)))  # |lambda| <= 0.9
    response = core(impulses, mode="loop")[0].detach()  # (input k, s, output h)
    omega = torch.linspace(0, math.pi, 7, dtype=torch.float64)
    phases = torch.exp(-1j * omega.view(-1, 1) * torch.arange(length, dtype=torch.float64))
    transform = torch.einsum("fs,ksh->fhk", phases, response.to(torch.complex128))
    torch.testing.assert_close(core.frequency_response(omega).detach(), transform, atol=1e-6, rtol=1e-6)


def hinf_norm(core: torch.nn.Module) -> float:
    """max over a dense frequency grid of the largest singular value: the exact gain (from below)."""
    omega = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    with torch.no_grad():
        return float(torch.linalg.matrix_norm(core.double().frequency_response(omega), ord=2).max())


@pytest.mark.parametrize("name", LTI)
def test_lti_gain_bound_is_above_the_exact_hinf_norm(name):
    for seed in range(4):
        core = build(name, seed)
        if seed:
            perturb(core, scale=2.0, seed=seed)
        with torch.no_grad():
            bound = float(core.double().gain_bound())
        assert hinf_norm(core) <= bound * (1 + 1e-9)


@pytest.mark.parametrize("name", ["l2n", "tv", "l2ru"])
def test_prescribed_core_gain_holds_under_large_parameter_noise(name):
    for seed in range(5):
        core = build(name, seed)
        gamma = float(torch.exp(core.log_gamma.detach()))
        perturb(core, scale=5.0, seed=seed)
        with torch.no_grad():
            core.log_gamma.fill_(math.log(gamma))  # the noise must not move gamma itself
            bound = float(core.gain_bound())
            assert bound <= gamma * (1 + 1e-6)
            x = 10 * torch.randn(4, 40, D_MODEL)
            y, _ = core(x)
            ratios = y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
            assert float(ratios.max()) <= bound * (1 + 1e-5)


def test_tv_adversarial_input_never_beats_its_bound():
    core = build("tv")
    perturb(core, scale=1.0, seed=3)
    core.requires_grad_(False)
    u = torch.randn(4, 24, D_MODEL, requires_grad=True)
    optimizer = torch.optim.Adam([u], lr=0.1)
    bound = float(core.gain_bound())
    for _ in range(30):
        ratio = core(u)[0].flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
        assert float(ratio.detach().max()) <= bound * (1 + 1e-5)
        optimizer.zero_grad()
        (-ratio.log().sum()).backward()
        optimizer.step()


def test_tv_step_matrices_are_contractions():
    a, b, c, d = (5 * torch.randn(4000) for _ in range(4))
    a, b, c, d = normalize_2x2(a, b, c, d)
    blocks = torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2).double()
    assert float(torch.linalg.matrix_norm(blocks, ord=2).max()) <= 1.0
    # a rotation makes one of the two moduli in the closed-form norm zero: gradients stay finite
    entries = torch.tensor([0.6, -0.8, 0.8, 0.6], requires_grad=True)
    (gradient,) = torch.autograd.grad(sum(normalize_2x2(*entries)), entries)
    assert torch.isfinite(gradient).all()


@pytest.mark.parametrize("steps", ["c", "torch"])  # the step matrices by the C kernel or the torch passes
@pytest.mark.parametrize("mode", ["scan", "chunked", "torch_scan"])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("spread", [0.1, 2.0, 6.0])  # small pre-activations: norms < 1; large: most > 1
def test_tv_fused_recurrence_equals_the_reference_in_values_and_gradients(steps, mode, with_h0, spread, monkeypatch):
    """Both outputs (readout z and the states) used by the loss, so both incoming gradients matter."""
    if steps == "torch":
        monkeypatch.setattr(tv_module, "cpu_steps", None)
    elif tv_module.cpu_steps is None:
        pytest.skip("the C step kernels were not built")
    generator = torch.Generator().manual_seed(int(10 * spread))
    batch, length, n = 2, 45, 5

    def sample(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).requires_grad_()

    h0 = sample(batch, n) if with_h0 else None
    inputs = [sample(3, batch, length, n, scale=spread), sample(batch, length, n), h0, sample(n), sample(n)]
    weights = [torch.randn(batch, length, n, generator=generator, dtype=torch.float64) for _ in range(2)]
    differentiable = [tensor for tensor in inputs if tensor is not None]
    assert (tv_module._steps_kernel(inputs[0], inputs[1]) is None) == (steps == "torch")
    results = []
    for outputs in (tv_recurrence(*inputs, mode=mode), tv_recurrence_ref(*inputs)):
        loss = sum((output * weight).sum() for output, weight in zip(outputs, weights, strict=True))
        results.append((outputs, torch.autograd.grad(loss, differentiable)))
    (fused, fused_grads), (reference, reference_grads) = results
    for got, expected in zip((*fused, *fused_grads), (*reference, *reference_grads), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-11, rtol=1e-10)
    tiny = (sample(3, 1, 4, 2, scale=spread), sample(1, 4, 2), sample(1, 2) if with_h0 else None, sample(2), sample(2))
    assert torch.autograd.gradcheck(lambda *args: tv_recurrence(*args, mode=mode), tiny)


def test_tv_component_major_selection_equals_the_linear_layer():
    core = TV(6, 4).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(core.selected(x), torch.stack(core.selection(x).chunk(3, dim=-1)))


def test_l2ru_satisfies_the_bounded_real_lemma():
    core = build("l2ru").double()
    perturb(core, scale=1.0, seed=4)
    A, B, C, D = core.system()
    gamma = float(torch.exp(core.log_gamma.detach()))
    n = D_STATE
    X = core.X
    Z = gamma**2 * torch.eye(D_MODEL, dtype=torch.float64) - D.T @ D
    P = X @ X.T + core.epsilon * torch.eye(n, dtype=torch.float64) + C.T @ C + C.T @ D @ torch.linalg.solve(Z, D.T @ C)
    AB, CD = torch.cat([A, B], 1), torch.cat([C, D], 1)
    lmi = AB.T @ P @ AB + CD.T @ CD - torch.block_diag(P, gamma**2 * torch.eye(D_MODEL, dtype=torch.float64))
    assert torch.linalg.eigvalsh(0.5 * (lmi + lmi.T)).max().item() <= 1e-8


def test_l2ru_keeps_its_certificate_and_a_float32_state_under_autocast():
    """The input that reaches the peak of ||G(e^{i w})|| (its top right singular vector v there, u_t = Re(v e^{i w t})):
    under CPU bf16 autocast the recurrence and readout ran with bf16-rounded A, B, C, D, a gain of 1.015 > gamma = 1
    for this seed, and a bf16 state that a float32 call could not continue from."""
    torch.manual_seed(8)
    core = L2RU(4, d_state=8, gamma=1.0)
    omega = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    with torch.no_grad():
        response = copy.deepcopy(core).double().frequency_response(omega)
    _, singular_values, right = torch.linalg.svd(response)
    peak = int(singular_values[:, 0].argmax())
    steps = torch.arange(1024, dtype=torch.float64)
    u = (right[peak, 0].conj() * torch.exp(1j * omega[peak] * steps).unsqueeze(1)).real.float().unsqueeze(0)
    y_reference, state_reference = core(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = core(u)
    assert state.dtype == torch.float32
    torch.testing.assert_close((y, state), (y_reference, state_reference))
    assert float(y.norm() / u.norm()) <= 1.0 + 1e-5
    torch.testing.assert_close(core(u, state=state)[1], core(u, state=state_reference)[1])


def test_tv_recurrence_runs_in_the_parameters_precision_under_autocast():
    """The GEMMs may run in bf16, the step matrices, scan and states not: "scan" and "chunked" ran the recurrence in
    bf16 (the norm's 1 + 4 eps(bf16) margin a compounding decay), 9% off the float32 loop, with a bf16 state."""
    torch.manual_seed(0)
    core = TV(8, d_state=8, gamma=1.0)
    x = torch.randn(2, 64, 8)
    y_reference, state_reference = core(x, mode="loop")
    for mode in core.modes:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, state = core(x, mode=mode)
        assert state.dtype == torch.float32, mode
        for got, want in ((y.float(), y_reference), (state, state_reference)):
            assert (got - want).norm() <= 2e-2 * want.norm(), (mode, float((got - want).norm() / want.norm()))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: L2N(4, 7), "d_state must be even"),
        (lambda: L2N(4, 8, gamma=0.0), "gamma must be a positive"),
        (lambda: TV(4, 8, gamma=-1.0), "gamma must be a positive"),
        (lambda: L2RU(4, 8, gamma=float("inf")), "gamma must be a positive"),
        (lambda: L2N(0, 8), "d_model must be a positive integer"),
        (lambda: L2RU(4, 8, epsilon=-1), "L2RU epsilon must be a positive finite number, got -1"),
        (lambda: L2RU(4, 8, epsilon=0.0), "L2RU epsilon must be a positive finite number, got 0.0"),
        (lambda: L2N(4, 8, gram_iterations=0), "gram_iterations must be a positive integer, got 0"),
        (lambda: TV(4, 8, gram_iterations=0), "gram_iterations must be a positive integer, got 0"),
    ],
)
def test_bad_settings_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bad_calls_are_rejected(name):
    core = build(name)
    x = torch.randn(2, 5, D_MODEL)
    with pytest.raises(ValueError, match="no mode 'fast'; choose one of"):
        core(x, mode="fast")
    with pytest.raises(ValueError, match=r"initial state must be \(B, "):
        core(x, state=core.default_state(3))
    with pytest.raises(ValueError, match=f"must be \\(B, L, {D_MODEL}\\)"):
        core(torch.randn(2, 5, D_MODEL + 1))
    if name in ("tv", "l2ru"):
        with pytest.raises(ValueError, match="no mode 'conv'"):
            core(x, mode="conv")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(BUILDERS))
def test_cuda_modes_match_the_cpu_loop_reference(name):
    """On CUDA "scan" runs ssm_lab.ops.scan's GPU kernel: outputs and gradients against the CPU loop."""
    core = build(name)
    x = torch.randn(3, 300, D_MODEL)
    y_ref, state_ref = core(x, mode="loop")
    ref_grads = grads(core, x, "loop")
    gpu_core = copy.deepcopy(core).cuda()
    for mode in core.modes:
        y, state = gpu_core(x.cuda(), mode=mode)
        torch.testing.assert_close(y.cpu(), y_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(state.cpu(), state_ref, atol=1e-4, rtol=1e-4)
        for got, want in zip(grads(gpu_core, x.cuda(), mode), ref_grads, strict=True):
            torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(gpu_core.gain_bound().cpu(), core.gain_bound())


def _tv_steps_formula(selected, u, delta_bias, alpha, dtype):
    """The tv step matrices written out in float64 with the tiny and the margin (1 + 4 eps) of the dtype
    under test: (a k, b k u, c k) (see ssm_lab.ops.triton.tv_steps)."""
    delta, beta, kappa = selected.unbind(0)
    softplus = torch.nn.functional.softplus
    a = torch.exp(-softplus(delta + delta_bias) * softplus(alpha))
    b, c = torch.tanh(beta), torch.tanh(kappa)
    tiny, eps = torch.finfo(dtype).tiny ** 0.5, torch.finfo(dtype).eps
    norm = 0.5 * (torch.sqrt(a**2 + (b - c) ** 2 + tiny) + torch.sqrt(a**2 + (b + c) ** 2 + tiny))
    k = 1 / (norm.clamp_min(1.0) * (1 + 4 * eps))
    return a * k, b * k * u, c * k


# (device, dtype) of the step-matrix kernels: C on CPU, Triton on CUDA
STEP_KERNEL_CASES = [
    ("cpu", torch.float32),
    ("cpu", torch.float64),
    *(pytest.param("cuda", dtype, marks=pytest.mark.gpu) for dtype in (torch.float32, torch.bfloat16, torch.float16)),
]


def _step_kernels(device: str):
    """The step-matrix kernel module the tv core uses on ``device`` (skips where it was not built)."""
    kernels = tv_module.triton_steps if device == "cuda" else tv_module.cpu_steps
    if kernels is None:
        pytest.skip(f"no tv step kernels on {device} (no Triton / no C compiler)")
    return kernels


@pytest.mark.parametrize(("device", "dtype"), STEP_KERNEL_CASES)
@pytest.mark.parametrize("spread", [0.1, 6.0])  # small pre-activations: norms < 1; large: most > 1
def test_tv_step_kernels_match_the_formula(device, dtype, spread):
    """The step-matrix kernels (C on CPU, Triton on CUDA) read the selection's (B, L, 3 N) output in place:
    their three outputs and the gradients of the pre-activations, u, delta_bias and alpha against float64
    autograd of the formula."""
    kernels = _step_kernels(device)
    generator = torch.Generator().manual_seed(int(10 * spread))
    batch, length, n = 3, 50, 70  # 150 tokens: 3 backward programs, the last partly masked; n: 2 channel blocks
    selection = (spread * torch.randn(batch, length, 3 * n, generator=generator)).to(dtype).to(device)
    u = torch.randn(batch, length, n, generator=generator).to(dtype).to(device)
    delta_bias, alpha = torch.randn(2, n, generator=generator).to(torch.promote_types(dtype, torch.float32)).to(device)
    grads = torch.randn(3, batch, length, n, generator=generator).to(dtype).to(device)
    selected = selection.unflatten(-1, (3, n)).movedim(-2, 0)  # the layout TV.selected gives
    assert kernels.tv_steps_applies(selected, u)
    leaves = [x.double().requires_grad_() for x in (selected, u, delta_bias, alpha)]
    expected = _tv_steps_formula(*leaves, dtype=dtype)
    expected_grads = torch.autograd.grad(expected, leaves, [g.double() for g in grads])
    *got, saved = kernels.tv_steps(selected, u, delta_bias, alpha)
    got_grads = kernels.tv_steps_backward(selected, u, delta_bias, alpha, *grads, saved)
    relative = {torch.float32: 1e-5, torch.float64: 1e-12}.get(dtype, 2e-2)
    for value, reference in zip((*got, *got_grads), (*expected, *expected_grads), strict=True):
        assert value.shape == reference.shape
        error = (value.double() - reference).norm() / reference.norm()
        assert error < relative, (value.dtype, tuple(value.shape), float(error))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("length", [1, 7, 300])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("spread", [0.1, 6.0])
def test_tv_fused_recurrence_matches_the_reference(device, length, with_h0, spread):
    """The tv node with the step-matrix kernels and the scan kernel of ``device`` (C on CPU, Triton on CUDA):
    readout, states and every gradient against the float64 loop reference, fp32 (normwise: gradients sum up
    to 900 tokens of products through a 300-step adjoint; fp32 gives ~1e-5, measured with Triton's
    interpreter)."""
    step_kernels = _step_kernels(device)
    generator = torch.Generator().manual_seed(length + int(10 * spread))
    batch, n = 3, 70

    def sample(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(device)

    selection, u, h0 = sample(batch, length, 3 * n, scale=spread), sample(batch, length, n), sample(batch, n)
    delta_bias, alpha = sample(n), sample(n)
    weights = [sample(batch, length, n).double() for _ in range(2)]
    results = []
    kernels = (torch.float32, lambda *inputs: tv_recurrence(*inputs, mode="scan"))
    for dtype, run in (kernels, (torch.float64, tv_recurrence_ref)):
        leaves = [selection, u, h0 if with_h0 else None, delta_bias, alpha]
        leaves = [None if x is None else x.to(dtype).detach().requires_grad_() for x in leaves]
        selected = leaves[0].unflatten(-1, (3, n)).movedim(-2, 0)  # the layout TV.selected gives
        if dtype is torch.float32:
            assert step_kernels.tv_steps_applies(selected, leaves[1])
        outputs = run(selected, *leaves[1:])
        loss = sum((output.double() * weight).sum() for output, weight in zip(outputs, weights, strict=True))
        gradients = torch.autograd.grad(loss, [x for x in leaves if x is not None])
        results.append([x.double() for x in (*outputs, *gradients)])
    for got, expected in zip(*results, strict=True):
        assert got.shape == expected.shape
        assert (got - expected).norm() <= 1e-4 * expected.norm(), (tuple(got.shape), float((got - expected).norm()))
