"""The core contract, checked for every baseline core in float64 at tiny sizes: every fast mode
equals the loop reference (outputs and gradients), chunked calls equal whole ones, step() from
default_state() equals forward, right padding never changes real outputs or final states, and
unknown modes are errors naming the choices."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from ssm_lab.cores import base
from ssm_lab.cores.ids4 import IDS4
from ssm_lab.cores.lcde import LinearCDE
from ssm_lab.cores.lru import LRU
from ssm_lab.cores.mamba import Mamba
from ssm_lab.cores.rglru import RGLRU
from ssm_lab.cores.rnn import TorchRecurrentCore
from ssm_lab.cores.s4 import S4
from ssm_lab.cores.s4d import S4D
from ssm_lab.cores.s5 import S5
from ssm_lab.cores.transformer import CausalSelfAttention

D_MODEL, BATCH, LENGTH = 4, 3, 9

CORES: dict[str, Callable[[int], nn.Module]] = {
    "rnn": lambda d: TorchRecurrentCore(d, cell="rnn"),
    "lstm": lambda d: TorchRecurrentCore(d, cell="lstm"),
    "gru": lambda d: TorchRecurrentCore(d, cell="gru"),
    "transformer": lambda d: CausalSelfAttention(d, n_heads=2),
    "s4": lambda d: S4(d, d_state=6),
    "s4d_legs_zoh": lambda d: S4D(d, d_state=6, init="legs", discretization="zoh"),
    "s4d_lin_bilinear": lambda d: S4D(d, d_state=6, init="lin", discretization="bilinear"),
    "s5_zoh": lambda d: S5(d, d_state=6),
    "s5_bilinear_full": lambda d: S5(d, d_state=5, discretization="bilinear", conjugate_symmetry=False),
    "s5_dirac": lambda d: S5(d, d_state=6, discretization="dirac"),
    "mamba": lambda d: Mamba(d, d_state=3, chunk_size=4),
    "mamba_signed": lambda d: Mamba(d, d_state=3, eigenvalues="signed", chunk_size=4),
    "rglru": lambda d: RGLRU(d),
    "ids4": lambda d: IDS4(d, d_state=5),
    "lcde_exp": lambda d: LinearCDE(d, d_state=5, solver="exp"),
    "lcde_euler": lambda d: LinearCDE(d, d_state=5, solver="euler", init_std=0.5),
}
TIME_VARYING = [name for name, make in CORES.items() if getattr(make(D_MODEL), "time_varying", False)]
# "adaptive" is a different solver (compared with the exact one below), not a twin of "loop";
# "kernel" (Mamba's Triton scan) takes CUDA float tensors only: tested under the gpu marker
SKIPPED = ("adaptive", "kernel")
ALL_MODES = [(name, mode) for name, make in CORES.items() for mode in make(D_MODEL).modes if mode not in SKIPPED]
FAST_MODES = [(name, mode) for name, mode in ALL_MODES if mode != "loop"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return CORES[name](D_MODEL).double()


def inputs(seed: int = 1, length: int = LENGTH) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, length, D_MODEL, generator=generator, dtype=torch.float64)


def leaves(state) -> list[torch.Tensor]:
    return [t for s in state for t in leaves(s)] if isinstance(state, tuple) else [state]


def assert_close(a, b, atol: float = 1e-9, rtol: float = 1e-7) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def scalar(y: torch.Tensor, state) -> torch.Tensor:
    """A loss touching every output and every state entry, with fixed random weights."""
    generator = torch.Generator().manual_seed(7)
    total = (y * torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)).sum()
    for leaf in leaves(state):
        if leaf.is_floating_point() or leaf.is_complex():
            weights = torch.randn(leaf.shape, generator=generator, dtype=torch.float64).to(leaf.device)
            total = total + (torch.view_as_real(leaf).sum(-1) if leaf.is_complex() else leaf).mul(weights).sum()
    return total


def gradients(core: nn.Module, x: torch.Tensor, mode: str, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    core.zero_grad()
    x = x.clone().requires_grad_(True)
    y, state = core(x, mode=mode, **kwargs)
    scalar(y, state).backward()
    return x.grad, [p.grad.clone() for p in core.parameters()]


def warm_state(core: nn.Module):
    """A non-trivial state: the final state after a short random prefix."""
    return core(inputs(seed=5, length=4), mode="loop")[1]


@pytest.mark.parametrize(("name", "mode"), FAST_MODES)
def test_fast_mode_matches_loop_outputs_and_gradients(name, mode):
    core, x = build(name), inputs()
    state = warm_state(core)
    assert_close(core(x, state=state, mode=mode), core(x, state=state, mode="loop"))
    fast, loop = gradients(core, x, mode), gradients(core, x, "loop")
    assert_close(fast[0], loop[0])
    for fast_grad, loop_grad in zip(fast[1], loop[1], strict=True):
        assert_close(fast_grad, loop_grad)


@pytest.mark.parametrize(("name", "mode"), ALL_MODES)
def test_chunked_equals_whole(name, mode):
    core, x = build(name), inputs()
    y_whole, state_whole = core(x, mode=mode)
    y_first, state = core(x[:, :4], mode=mode)
    y_second, state = core(x[:, 4:], state=state, mode=mode)
    assert_close(torch.cat([y_first, y_second], dim=1), y_whole)
    assert_close(state, state_whole)


@pytest.mark.parametrize("name", list(CORES))
def test_step_from_default_state_matches_forward(name):
    core, x = build(name), inputs()
    state = core.default_state(BATCH)
    outputs = []
    for t in range(LENGTH):
        y_t, state = core.step(x[:, t], state)
        outputs.append(y_t)
    for mode in core.modes:
        if mode not in SKIPPED:
            y, final = core(x, mode=mode)
            assert_close(torch.stack(outputs, dim=1), y)
            assert_close(state, final)


@pytest.mark.parametrize(("name", "mode"), ALL_MODES)
def test_padding_never_changes_real_outputs_or_final_state(name, mode):
    core, x = build(name), inputs()
    lengths = torch.tensor([LENGTH, 5, 1])
    padding = torch.arange(LENGTH).unsqueeze(0) >= lengths.unsqueeze(1)
    other = torch.where(padding.unsqueeze(-1), 100 * inputs(seed=3), x)
    y, state = core(x, mode=mode, lengths=lengths)
    y_other, state_other = core(other, mode=mode, lengths=lengths)
    assert_close(y[~padding], y_other[~padding])
    assert_close(state, state_other)
    continuation = inputs(seed=4, length=3)
    y_next = core(continuation, state=state, mode=mode)[0]
    for b, length in enumerate(lengths.tolist()):  # each sequence alone, unpadded, then continued
        y_alone, state_alone = core(x[b : b + 1, :length], mode=mode)
        assert_close(y[b : b + 1, :length], y_alone)
        assert_close(y_next[b : b + 1], core(continuation[b : b + 1], state=state_alone, mode=mode)[0])
        if not isinstance(core, CausalSelfAttention):  # a cache keeps (masked) padding: compared by continuation
            assert_close(tuple(leaf[b : b + 1] for leaf in leaves(state)), tuple(leaves(state_alone)))


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30])
@pytest.mark.parametrize(("name", "mode"), ALL_MODES)
def test_non_finite_or_huge_padding_reaches_no_real_output_state_or_gradient(name, mode, fill):
    """Whatever the padding holds, the real tokens' outputs, the final state, the continuation and every gradient of
    a loss on the real tokens equal those of zero padding: the FFT convolutions, attention and the recurrences'
    backward would otherwise carry 0 * inf or rounding of huge values into them."""
    core, x = build(name), inputs()
    lengths = torch.tensor([LENGTH, 5, 1])
    real = torch.arange(LENGTH).unsqueeze(0) < lengths.unsqueeze(1)
    results = []
    for padding in (0.0, fill):
        padded = torch.where(real.unsqueeze(-1), x, padding).requires_grad_(True)
        core.zero_grad()
        y, state = core(padded, mode=mode, lengths=lengths)
        y_next = core(inputs(seed=4, length=3), state=state, mode=mode)[0]
        scalar(torch.where(real.unsqueeze(-1), y, 0.0), state).backward()
        grads = (padded.grad[real], *(p.grad for p in core.parameters() if p.grad is not None))
        final = tuple(s for s in leaves(state) if s.is_floating_point() or s.is_complex())
        results.append((y[real], y_next, final, grads))
    for zero_padded, filled in zip(*results, strict=True):
        assert_close(filled, zero_padded, atol=0, rtol=0)


def test_conv_kernels_stay_finite_when_a_decay_underflows():
    """A strongly damped mode whose decay underflows to 0 (valid: every nu_log is stable) gives decay^0 = 1 and
    decay^s = 0 after in the conv modes, as in the recurrence, instead of exp(0 * log 0) = NaN."""
    lru, s4d = LRU(3, d_state=4).double(), S4D(3, d_state=4).double()
    with torch.no_grad():
        lru.nu_log[0] = 7.0  # |lambda_0| = exp(-e^7) = 0 in float64
        s4d.log_neg_real[0, 0] = 14.0  # exp(dt lambda) = 0 in float64
    x = inputs()[..., :3]
    for core in (lru, s4d):
        assert float(core.system()[0].abs().min() if core is lru else core.discrete()[0].abs().min()) == 0.0
        assert_close(core(x, mode="conv"), core(x, mode="loop"))
        core.zero_grad()
        scalar(*core(x, mode="conv")).backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in core.parameters())


@pytest.mark.parametrize(("name", "mode"), ALL_MODES)
def test_lengths_are_checked_once_per_call(name, mode, monkeypatch):
    """Checking lengths reads them back to the host, a GPU synchronisation: once per call, however many times
    the core uses them (padding, final state)."""
    checks = []
    check = base.check_lengths
    monkeypatch.setattr(base, "check_lengths", lambda *args: checks.append(args) or check(*args))
    build(name)(inputs(), mode=mode, lengths=torch.tensor([LENGTH, 5, 1]))
    assert len(checks) == 1


@pytest.mark.parametrize(("name", "mode"), ALL_MODES)
def test_a_state_of_another_batch_size_is_an_error(name, mode):
    core = build(name)
    with pytest.raises(ValueError, match=r"state must "):
        core(inputs(), state=core.default_state(1), mode=mode)


@pytest.mark.parametrize(("name", "mode"), ALL_MODES)
@pytest.mark.parametrize("lengths", [[LENGTH, 0, 1], [LENGTH, LENGTH + 1, 1], [LENGTH, 1]])
def test_lengths_out_of_range_or_of_another_batch_size_are_errors(name, mode, lengths):
    with pytest.raises(ValueError, match=rf"lengths must be \(B,\) = \({BATCH},\) with values in 1..{LENGTH}"):
        build(name)(inputs(), mode=mode, lengths=torch.tensor(lengths))


@pytest.mark.parametrize("name", list(CORES))
def test_unknown_mode_is_an_error_naming_the_choices(name):
    core = build(name)
    with pytest.raises(ValueError, match="bogus") as error:
        core(inputs(), mode="bogus")
    for mode in core.modes:
        assert mode in str(error.value)


@pytest.mark.parametrize("name", list(CORES))
def test_wrong_input_width_is_an_error(name):
    with pytest.raises(ValueError, match=r"\(B, L, 4\)"):
        build(name)(torch.zeros(2, 3, 5, dtype=torch.float64))


@pytest.mark.parametrize("name", list(CORES))
def test_an_empty_sequence_is_an_error(name):
    with pytest.raises(ValueError, match=r"at least one step \(L >= 1\), got shape \(2, 0, 4\)"):
        build(name)(torch.zeros(2, 0, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", TIME_VARYING)
def test_unit_timesteps_equal_the_regular_grid(name):
    core, x = build(name), inputs()
    assert_close(core(x, integration_timesteps=torch.ones(BATCH, LENGTH, dtype=torch.float64)), core(x))


@pytest.mark.parametrize(("name", "mode"), [(n, m) for n, m in FAST_MODES if n in TIME_VARYING])
def test_irregular_timesteps_fast_mode_matches_loop(name, mode):
    core, x = build(name), inputs()
    timesteps = 0.1 + torch.rand(BATCH, LENGTH, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fast = core(x, mode=mode, integration_timesteps=timesteps)
    assert_close(fast, core(x, mode="loop", integration_timesteps=timesteps))
    assert not torch.allclose(fast[0], core(x, mode=mode)[0])  # the timesteps are used, not ignored


@pytest.mark.parametrize("name", TIME_VARYING)
def test_bad_timesteps_are_errors(name):
    core, x = build(name), inputs()
    with pytest.raises(ValueError, match="integration_timesteps must be"):
        core(x, integration_timesteps=torch.ones(BATCH, LENGTH + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        core(x, integration_timesteps=torch.zeros(BATCH, LENGTH, dtype=torch.float64))


def test_adaptive_solver_agrees_with_the_exact_exponential():
    core, x = build("lcde_exp"), inputs()
    timesteps = 0.1 + torch.rand(BATCH, LENGTH, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = core(x, mode="scan", integration_timesteps=timesteps)
    assert_close(core(x, mode="adaptive", integration_timesteps=timesteps), exact, atol=1e-6, rtol=1e-5)
    core.solver = "euler"  # a first-order step is visibly off: the comparison can fail
    assert not torch.allclose(core(x, mode="scan", integration_timesteps=timesteps)[0], exact[0], atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gru_sequence_equals_torch_gru_in_values_and_every_gradient(dtype):
    """The gru core's CPU path (a hand-written backward) against torch.nn.GRU on the same weights."""
    from ssm_lab.ops.gru import gru_sequence

    torch.manual_seed(0)
    gru = nn.GRU(5, 7, batch_first=True).to(dtype)
    x = torch.randn(3, 11, 5, dtype=dtype, requires_grad=True)
    h0 = torch.randn(3, 7, dtype=dtype, requires_grad=True)
    weights = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    ours = gru_sequence(x, h0, *weights)
    theirs, final = gru(x, h0.unsqueeze(0))
    assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    output_weights = torch.randn_like(ours)
    our_grads = torch.autograd.grad((ours * output_weights).sum() + ours[:, -1].sum(), [x, h0, *weights])
    their_grads = torch.autograd.grad((theirs * output_weights).sum() + final.sum(), [x, h0, *weights])
    for got, expected in zip(our_grads, their_grads, strict=True):
        assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if dtype is torch.float64:
        leaves = [x.detach()[:2, :4], h0.detach()[:2], *(w.detach() for w in weights)]
        assert torch.autograd.gradcheck(gru_sequence, [leaf.clone().requires_grad_() for leaf in leaves])


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CORES))
def test_every_core_trains_under_bf16_autocast_on_cuda(name):
    """Mixed precision (trainer precision bf16-mixed): forward and backward run, outputs and every gradient
    finite (S4's complex kernel product and IDS4's LU once failed on autocast's bf16 GEMM outputs)."""
    torch.manual_seed(0)
    core = CORES[name](D_MODEL).cuda()
    x = inputs().float().cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, state = core(x)
    gradients = torch.autograd.grad(y.float().square().mean(), [x, *core.parameters()], allow_unused=True)
    assert torch.isfinite(y).all() and all(torch.isfinite(leaf).all() for leaf in leaves(state))
    assert all(torch.isfinite(gradient).all() for gradient in gradients if gradient is not None)


@pytest.mark.gpu
@pytest.mark.parametrize("name", [name for name in CORES if name not in ("rnn", "lstm", "gru", "lcde_exp")])
def test_forward_and_backward_never_wait_for_the_gpu(name):
    """No host synchronisation in a training step's forward and backward (without lengths, whose check reads them
    back once): a sync makes the host wait for the GPU's queue, so the launch time of the rest of the step is no
    longer hidden behind the GPU's work. Left out: cuDNN's RNNs (rnn, lstm, gru), torch's own code, and the exact
    exponential of the Linear CDE, which reads its number of squarings off the data's norms."""
    torch.manual_seed(0)
    core = CORES[name](D_MODEL).cuda()
    x = inputs().float().cuda().requires_grad_()
    torch.autograd.grad(core(x)[0].square().mean(), [x, *core.parameters()], allow_unused=True)  # first-call setup
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, _ = core(x)
        torch.autograd.grad(y.square().mean(), [x, *core.parameters()], allow_unused=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba", "mamba_signed"])
def test_mamba_kernel_mode_matches_loop_on_gpu(name):
    torch.manual_seed(0)
    core = CORES[name](D_MODEL).cuda()
    x = inputs().float().cuda()
    state = core(inputs(seed=5, length=4).float().cuda(), mode="loop")[1]
    kernel, loop = core(x, state=state, mode="kernel"), core(x, state=state, mode="loop")
    assert_close(kernel, loop, atol=1e-4, rtol=1e-4)
    core.zero_grad()
    scalar(*core(x, mode="kernel")).backward()
    kernel_grads = [p.grad.clone() for p in core.parameters()]
    core.zero_grad()
    scalar(*core(x, mode="loop")).backward()
    for ours, theirs in zip(kernel_grads, [p.grad for p in core.parameters()], strict=True):
        assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_mamba_kernel_mode_off_the_gpu_is_an_error():
    with pytest.raises(ValueError, match="kernel"):
        build("mamba")(inputs(), mode="kernel")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TorchRecurrentCore(4, cell="elman"), "unknown cell 'elman'; choose one of rnn, lstm, gru"),
        (lambda: TorchRecurrentCore(0), "d_model must be a positive integer"),
        (lambda: CausalSelfAttention(6, n_heads=4), "n_heads must be a positive divisor of d_model=6"),
        (lambda: RGLRU(4, r_min=0.99, r_max=0.9), "need 0 < r_min < r_max < 1"),
        (lambda: RGLRU(4, c=0.0), "c must be positive"),
        (lambda: IDS4(4, d_state=0), "d_state must be a positive integer"),
        (lambda: IDS4(4, input_dependence_std=-1.0), "input_dependence_std must be >= 0"),
        (lambda: Mamba(4, dt_rank=0), "dt_rank must be a positive integer, got 0"),
        (lambda: LRU(4, max_phase=float("inf")), "max_phase must be positive and finite, got inf"),
        *((lambda make=make: make(0), "d_model must be a positive integer, got 0") for make in CORES.values()),
    ],
)
def test_bad_core_options_are_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()
