"""DeepSSM: neural-ssm's call semantics, modes, state handling, the prescribed gain under any
parameters, the audit, bad input, and training through run_experiment's config."""

from __future__ import annotations

import math

import pytest
import torch

from ssm_lab.data.spec import TaskSpec
from ssm_lab.models import DeepSSM, TaskDeepSSM
from ssm_lab.models.certificate import audit, empirical_gain

SIZES = {"d_input": 3, "d_output": 2, "d_model": 8, "d_state": 6, "n_layers": 2}


def make(param: str = "l2n", ff: str = "LGLU", gamma: float | None = None, seed: int = 0, **options) -> DeepSSM:
    torch.manual_seed(seed)
    return DeepSSM(**{**SIZES, **options}, param=param, ff=ff, gamma=gamma)


@pytest.mark.parametrize("param", ["lru", "l2n", "tv", "l2ru"])
def test_modes_agree_and_states_come_per_block(param):
    model = make(param, core_options={"r_min": 0.5, "r_max": 0.95} if param == "lru" else None)
    u = torch.randn(4, 17, 3)
    y_loop, states_loop = model(u, mode="loop")
    assert y_loop.shape == (4, 17, 2) and len(states_loop) == 2
    for mode in model.blocks[0].core.modes:
        y, states = model(u, mode=mode)
        torch.testing.assert_close(y, y_loop, atol=1e-5, rtol=1e-5)
        for state, reference in zip(states, states_loop, strict=True):
            torch.testing.assert_close(state, reference, atol=1e-5, rtol=1e-5)


def test_internal_state_continues_across_calls():
    model = make("tv")
    u = torch.randn(2, 12, 3)
    whole, _ = model(u)
    first, _ = model(u[:, :5])
    second, _ = model(u[:, 5:], reset_state=False)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=1e-5)
    _, states = model(u[:, :5])
    explicit, _ = model(u[:, 5:], state=states)
    torch.testing.assert_close(explicit, second, atol=1e-5, rtol=1e-5)
    model.reset()
    restarted, _ = model(u[:, 5:], reset_state=False)  # after reset(): zero state again
    torch.testing.assert_close(restarted, model(u[:, 5:])[0])


@pytest.mark.parametrize("detach_state", [True, False])
def test_detach_state_decides_whether_gradients_cross_calls(detach_state):
    model = make("l2n")
    first_input = torch.randn(2, 4, 3, requires_grad=True)
    model(first_input, detach_state=detach_state)
    second, _ = model(torch.randn(2, 4, 3), reset_state=False)
    second.sum().backward()
    reached = first_input.grad is not None and bool(first_input.grad.abs().sum() > 0)
    assert reached is (not detach_state)


@pytest.mark.parametrize("param", ["lru", "l2n", "tv", "l2ru"])
@pytest.mark.parametrize("ff", ["LGLU", "LMLP", "TLIP", "Linear"])
def test_prescribed_gamma_holds_for_any_parameters(param, ff):
    gamma = 0.8
    model = make(param, ff, gamma=gamma, n_layers=1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(4.0 * torch.randn(parameter.shape, generator=generator))
        bound = float(model.certified_gain_bound())
        u = torch.randn(3, 20, 3)
        ratios = model(u)[0].flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    assert bound <= gamma * (1 + 1e-6)
    assert float(ratios.max()) <= bound * (1 + 1e-5)


@pytest.mark.parametrize("param", ["l2n", "tv"])
def test_adversarial_search_never_exceeds_the_certified_bound(param):
    model = make(param, gamma=2.0, mix_logit=2.0)  # mixing near 1: the blocks' bounds matter
    report = audit(model)
    assert 0 < report["empirical_gain"] <= report["certified_gain"] * (1 + 1e-5)
    assert report["certified_gain"] <= 2.0 * (1 + 1e-6)
    # a longer search from other starting points finds no more than the bound either
    longer = empirical_gain(model, length=16, restarts=2, steps=40, seed=1)
    assert longer <= report["certified_gain"] * (1 + 1e-5)


def test_uncertified_feedforwards_report_an_infinite_bound():
    assert float(make(ff="GLU").certified_gain_bound()) == math.inf
    assert float(make(ff="MLP").certified_gain_bound()) == math.inf
    assert math.isfinite(float(make(ff="TLIP").certified_gain_bound()))


def test_task_adapter_meets_the_model_contract():
    tokens = TaskSpec(name="words", input_kind="tokens", output_kind="token_class", d_output=5, vocab_size=7)
    model = TaskDeepSSM(tokens, d_model=8, d_state=4, n_layers=1, param="l2n", gamma=1.0)
    assert model(torch.randint(0, 7, (3, 9))).shape == (3, 9, 5)
    assert float(model.certified_gain_bound()) <= 1.0 + 1e-6
    series = TaskSpec(name="sys", input_kind="continuous", output_kind="sequence_regression", d_output=2, d_input=3)
    model = TaskDeepSSM(series, d_model=8, d_state=4, n_layers=1, param="tv")
    u, lengths = torch.randn(2, 6, 3), torch.tensor([6, 3])
    pooled = model(u, lengths=lengths)
    assert pooled.shape == (2, 2)
    torch.testing.assert_close(pooled[1], model(u[1:, :3])[0])  # padding never reaches the pooled output
    with pytest.raises(ValueError, match="param 'tv' has no mode 'conv'; choose one of scan, loop, chunked"):
        TaskDeepSSM(series, d_model=8, d_state=4, n_layers=1, param="tv", mode="conv")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"param": "s4"}, "unknown param 's4'; choose one of lru, l2n, tv, l2ru"),
        ({"ff": "LGU"}, "unknown ff 'LGU'; choose one of LGLU, LMLP, TLIP, Linear, GLU, MLP"),
        ({"gamma": 0.0}, "gamma must be a positive finite number, got 0.0"),
        ({"gamma": -1.0}, "gamma must be a positive finite number"),
        ({"gamma": 1.0, "ff": "GLU"}, "gamma=1.0 needs a certified ff, but ff 'GLU'.*LGLU, LMLP, TLIP, Linear"),
        ({"gamma": 1.0, "ff": "MLP"}, "gamma=1.0 needs a certified ff, but ff 'MLP'"),
        ({"param": "l2n", "d_state": 5}, "d_state must be even"),
        ({"n_layers": 0}, "n_layers must be a positive integer"),
    ],
)
def test_bad_settings_are_rejected(options, message):
    settings = {**SIZES, "param": "l2n", "ff": "LGLU", "gamma": None, **options}
    with pytest.raises(ValueError, match=message):
        DeepSSM(**settings)


def test_bad_calls_are_rejected():
    model = make("l2n")
    u = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"d_input=3\); got shape \(2, 5, 4\) \(last dim 4\)"):
        model(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="d_input=3"):
        model(torch.randn(5, 3))
    with pytest.raises(ValueError, match="state must be a list of 2 tensors, one per block; got a list of 1"):
        model(u, state=[None])
    with pytest.raises(ValueError, match="state must be a list of 2 tensors, one per block; got Tensor"):
        model(u, state=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"L2N initial state must be \(B, N\) = \(2, 3\), got \(2, 4\)"):
        model(u, state=[torch.zeros(2, 4, dtype=torch.complex64), None])
    with pytest.raises(ValueError, match="L2N has no mode 'fast'"):
        model(u, mode="fast")
    with pytest.raises(ValueError, match="TV has no mode 'conv'; choose one of scan, loop, chunked"):
        make("tv")(u, mode="conv")


@pytest.mark.parametrize("model", ["l2n", "tv", "lru"])
def test_training_run_records_certified_and_empirical_gain(train, model):
    summary = train(f"model={model}", "trainer.max_steps=8", "scale.eval_every=4")
    assert summary["status"] == "completed"
    assert 0 < summary["empirical_gain"] <= summary["certified_gain"]


def _saved_bytes(model: DeepSSM, u: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of model(u)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(u)
    return sum(storages.values())


@pytest.mark.parametrize("gamma", [None, 1.5])
def test_checkpointing_changes_memory_not_results(gamma):
    u = torch.randn(4, 64, 3, requires_grad=True)
    results, saved = {}, {}
    for checkpoint in (False, True):
        model = make("tv", gamma=gamma, checkpoint=checkpoint, d_model=16, d_state=16)
        y, states = model(u)
        gradients = torch.autograd.grad(y.square().sum() + states[-1].square().sum(), [u, *model.parameters()])
        results[checkpoint], saved[checkpoint] = (y, *gradients), _saved_bytes(model, u)
    for got, expected in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert saved[True] < saved[False] / 3  # the blocks' activations are recomputed, not kept


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("param", ["lru", "l2n", "tv", "l2ru"])
def test_residual_stream_stays_float32_under_autocast(param, device):
    """Under bf16 autocast the cores' products run in bf16; the skip x + alpha Core(x) must still be
    added in float32 (not folded into a bf16 product), so every block hands on a float32 stream; the
    whole network trains (finite outputs and gradients)."""
    model = make(param).to(device)
    u = torch.randn(2, 9, 3, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        x = model.encoder(u).float()
        for block in model.blocks:
            x, _, _ = block(x, None, "scan", None)
            assert x.dtype == torch.float32
        y, _ = model(u)
    gradients = torch.autograd.grad(y.float().square().sum(), list(model.parameters()), allow_unused=True)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in gradients if g is not None)


@pytest.mark.gpu
@pytest.mark.parametrize("param", ["lru", "l2n", "tv", "l2ru"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_cuda_network_matches_the_cpu_loop_reference(param, checkpoint):
    """The whole network on CUDA (scan: the Triton recurrence) against the CPU loop: outputs,
    final states, every gradient and the certified bound."""
    gamma = None if param == "lru" else 1.5
    model = make(param, ff="LGLU" if gamma else "GLU", gamma=gamma, checkpoint=checkpoint, d_model=16, d_state=16)
    u = torch.randn(3, 200, 3)
    reference = {}
    y, states = model(u, mode="loop")
    reference["y"], reference["states"] = y, states
    reference["grads"] = torch.autograd.grad(y.square().sum(), list(model.parameters()))
    cuda_model = model.cuda()
    y, states = cuda_model(u.cuda(), mode="scan")
    grads = torch.autograd.grad(y.square().sum(), list(cuda_model.parameters()))
    torch.testing.assert_close(y.cpu(), reference["y"], atol=1e-4, rtol=1e-4)
    for got, want in zip(states, reference["states"], strict=True):
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, reference["grads"], strict=True):
        torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-3)
    if gamma is not None:
        assert cuda_model.certified_gain_bound().item() <= gamma * (1 + 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("param", ["lru", "l2n", "tv"])
@pytest.mark.parametrize("gamma", [None, 1.5])
def test_cuda_training_step_never_waits_for_the_gpu(param, gamma):
    """No host synchronisation in the network's forward and backward: a sync makes the host wait for the GPU's
    queue, so the launch time of the rest of the step is no longer hidden behind the GPU's work. There were two:
    a constant copied to the device in the LRU readout, and the backward of ``prod`` over the certified bounds,
    which looks for zeros on the host. l2ru is left out: its system's Cholesky factors and solves check their
    matrices on the host, an error worth the wait."""
    model = make(param, ff="LGLU" if gamma else "GLU", gamma=gamma, d_model=16, d_state=16).cuda()
    u = torch.randn(3, 50, 3, device="cuda", requires_grad=True)
    torch.autograd.grad(model(u)[0].square().sum(), [u, *model.parameters()])  # first-call setup (caches, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, _ = model(u)
        torch.autograd.grad(y.square().sum(), [u, *model.parameters()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
