"""Training from CUDA graphs (``ssm_lab.cuda_graphs``, ``trainer.cuda_graphs=true``): replayed training steps equal
eager ones in losses, gradients and parameters, batches are checked as the cores would check them, a network that
cannot be captured says so, and runs that cannot use graphs are refused before anything is recorded (the
configuration errors are in tests/test_configs.py)."""

from __future__ import annotations

import copy
import math
import re

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ssm_lab.cores.base import check_lengths, host_checks_deferred
from ssm_lab.cores.stepping import check_timesteps
from ssm_lab.cuda_graphs import GraphCaptureError, GraphedTraining
from ssm_lab.data.spec import TaskSpec
from ssm_lab.results import run_dir

SPEC = TaskSpec(name="graphs", input_kind="tokens", output_kind="token_class", d_output=5, vocab_size=7)
# every model whose training step never waits for the GPU once set up (the first call of a cuDNN recurrence
# copies to the device); l2ru and the Linear CDE's exact solver read values back at every call, and cuDNN's
# recurrences do with padded batches
CAPTURABLE = ["lru", "l2n", "tv", "rnn", "lstm", "gru", "transformer", "s4", "s4d", "s5", "mamba", "rglru", "ids4"]
CUDNN = ("rnn", "lstm", "gru")  # padded batches: cuDNN reads the lengths on the host (packed sequences)
READS_BACK = [("l2ru", False), ("lcde", False), *((name, True) for name in CUDNN)]


def _network(make_config, name: str, device: str, *overrides: str) -> nn.Module:
    torch.manual_seed(0)
    network = instantiate(make_config(f"model={name}", *overrides).model)(spec=SPEC).to(device)
    for module in network.modules():  # the two runs below draw different dropout masks
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return network


def _batch(batch: int, length: int, device: str, padded: bool) -> dict[str, torch.Tensor]:
    inputs = torch.randint(0, SPEC.vocab_size, (batch, length), device=device)
    targets = torch.randint(0, SPEC.d_output, (batch, length), device=device)
    lengths = torch.randint(1, length + 1, (batch,), device=device) if padded else None
    return {"inputs": inputs, "targets": targets, "lengths": lengths}


def _step(call, parameters: list[nn.Parameter], optimizer, batch: dict) -> tuple[float, list[torch.Tensor]]:
    optimizer.zero_grad(set_to_none=True)
    logits = call(batch["inputs"], lengths=batch["lengths"])
    real = torch.ones_like(batch["targets"], dtype=torch.bool)
    if batch["lengths"] is not None:
        real = torch.arange(real.shape[1], device=real.device) < batch["lengths"].unsqueeze(1)
    loss = nn.functional.cross_entropy(logits[real], batch["targets"][real])
    loss.backward()
    gradients = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in parameters]
    optimizer.step()
    return loss.item(), gradients


@pytest.mark.gpu
@pytest.mark.parametrize("case", [*CAPTURABLE, "tv model.checkpoint=true"])  # recomputed in the replayed backward
def test_replayed_training_steps_equal_eager_ones(make_config, case):
    """Each step: new inputs and lengths copied into the graph, the parameters an optimiser step changed in place,
    a smaller batch captured as a second graph; losses, every gradient and the parameters after the steps equal
    the eager run's."""
    name, *overrides = case.split()
    eager = _network(make_config, name, "cuda", *overrides)
    graphed = copy.deepcopy(eager)
    runner = GraphedTraining(graphed)
    eager_parameters, graphed_parameters = list(eager.parameters()), list(graphed.parameters())
    eager_optimizer = torch.optim.AdamW(eager_parameters, lr=1e-2)
    graphed_optimizer = torch.optim.AdamW(graphed_parameters, lr=1e-2)
    torch.manual_seed(1)
    padded = name not in CUDNN
    shapes = [(4, 12, False), (4, 12, padded), (4, 12, padded), (3, 12, padded), (4, 12, padded)]
    for step, (batch_size, length, padded) in enumerate(shapes):
        batch = _batch(batch_size, length, "cuda", padded)
        eager_loss, eager_gradients = _step(eager, eager_parameters, eager_optimizer, batch)
        graphed_loss, graphed_gradients = _step(runner, graphed_parameters, graphed_optimizer, batch)
        assert math.isclose(graphed_loss, eager_loss, rel_tol=1e-4, abs_tol=1e-6), (step, graphed_loss, eager_loss)
        for (key, _), ours, theirs in zip(graphed.named_parameters(), graphed_gradients, eager_gradients, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    assert runner.graph_count == 2 + padded  # (4, 12) without lengths, (4, 12) with, (3, 12)
    for ours, theirs in zip(graphed_parameters, eager_parameters, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
def test_replayed_batches_are_checked_like_eager_ones(make_config):
    network = _network(make_config, "lru", "cuda")
    runner = GraphedTraining(network)
    batch = _batch(4, 12, "cuda", padded=True)
    runner(batch["inputs"], lengths=batch["lengths"]).sum().backward()  # captured: the cores skip their checks
    too_long = torch.full((4,), 13, device="cuda")
    with pytest.raises(ValueError, match=r"lengths must be \(B,\) = \(4,\) with values in 1..12"):
        runner(batch["inputs"], lengths=too_long)
    with pytest.raises(ValueError, match="integration_timesteps must be positive"):
        runner(batch["inputs"].float().unsqueeze(-1), integration_timesteps=-torch.ones(4, 12, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "padded"), READS_BACK)
def test_models_that_read_values_back_are_refused_with_the_way_back(make_config, name, padded):
    runner = GraphedTraining(_network(make_config, name, "cuda"))
    batch = _batch(4, 12, "cuda", padded)
    with pytest.raises(GraphCaptureError, match="cannot be trained from CUDA graphs.*cuda_graphs=false"):
        runner(batch["inputs"], lengths=batch["lengths"])
    assert runner.graph_count == 0
    torch.randn(3, device="cuda")  # the process's random generator still works (a failed capture breaks it)


class _ReadsBack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.sum().item() > 0:  # a host read: not allowed while a graph is captured
            return inputs * self.weight
        return inputs


@pytest.mark.gpu
def test_a_network_that_reads_values_back_cannot_be_captured_and_says_what_to_do():
    runner = GraphedTraining(_ReadsBack().cuda())
    with pytest.raises(
        GraphCaptureError,
        match=r"_ReadsBack cannot be trained from CUDA graphs \(\w+Error: [^\n]+\); "
        r"run with trainer.cuda_graphs=false$",
    ):
        runner(torch.ones(2, 3, device="cuda"))


@pytest.mark.gpu
def test_batch_shapes_past_max_graphs_are_an_error():
    runner = GraphedTraining(nn.Linear(3, 2).cuda(), max_graphs=2)
    for batch in (1, 2):
        runner(torch.randn(batch, 3, device="cuda")).sum().backward()
    with pytest.raises(GraphCaptureError, match=r"a new batch shape \(\(3, 3\)\) would be graph 3, past max_graphs=2"):
        runner(torch.randn(3, 3, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("data", "precision"),
    [("A5", "32-true"), ("A5", "bf16-mixed"), ("listops", "32-true")],  # listops: padded batches with lengths
)
def test_a_gpu_run_trains_from_cuda_graphs(train, data, precision):
    class GraphCount(L.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            self.count = pl_module.graphed.graph_count

    graphs = GraphCount()
    overrides = ("trainer=gpu", "trainer.cuda_graphs=true", f"trainer.precision={precision}", "model=lru")
    summary = train(*overrides, f"data={data}", callbacks=[graphs])
    assert summary["status"] == "completed", summary.get("reason")
    assert math.isfinite(summary["final"]["val/loss"])
    assert graphs.count >= 1  # the steps were replayed (a smaller last batch adds a graph)


def test_evaluation_runs_the_network_itself_and_training_needs_cuda_tensors(make_config):
    network = _network(make_config, "lru", "cpu")
    runner = GraphedTraining(network)
    batch = _batch(2, 5, "cpu", padded=True)
    network.eval()
    torch.testing.assert_close(
        runner(**{k: batch[k] for k in ("inputs", "lengths")}),
        network(batch["inputs"], lengths=batch["lengths"]),
        rtol=0,
        atol=0,
    )
    network.train()
    with torch.no_grad():
        runner(batch["inputs"], lengths=None)
    assert runner.graph_count == 0
    with pytest.raises(GraphCaptureError, match="needs CUDA tensors"):
        runner(batch["inputs"])
    with pytest.raises(ValueError, match="max_graphs must be >= 1, got 0"):
        GraphedTraining(network, max_graphs=0)


def test_deferred_host_checks_are_skipped_only_inside_their_context():
    too_long = torch.tensor([3, 9])
    with host_checks_deferred():
        assert check_lengths(too_long, 2, 5) is too_long
        check_timesteps(-torch.ones(2, 5), torch.zeros(2, 5, 1))
        with pytest.raises(ValueError, match=r"lengths must be \(B,\) = \(3,\)"):  # shapes are still checked
            check_lengths(too_long, 3, 5)
    with pytest.raises(ValueError, match=r"values in 1..5, got \[3, 9\]"):
        check_lengths(too_long, 2, 5)
    with pytest.raises(ValueError, match="integration_timesteps must be positive"):
        check_timesteps(-torch.ones(2, 5), torch.zeros(2, 5, 1))


@pytest.mark.gpu
def test_a_replayed_training_step_never_waits_for_the_gpu(train):
    """Between two steps' batches nothing reads back from the GPU (sync debug mode "error"), except on the steps
    whose loss the loggers write (every 10th) and at epoch ends (every 20th), where the run reads values. The
    non-finite loss check reads each loss only once its copy has landed (test_configs checks what it reports)."""

    class NoSyncs(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            step = trainer.global_step
            if step > 0 and (step + 1) % 10:  # step 0 captures the graphs (which may set things up)
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            torch.cuda.set_sync_debug_mode("default")

    try:
        summary = train("trainer=gpu", "trainer.cuda_graphs=true", "model=lru", callbacks=[NoSyncs()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert summary["status"] == "completed", summary.get("reason")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_a_non_finite_loss_on_the_gpu_fails_the_run_before_any_evaluation(make_config, train, cuda_graphs):
    overrides = ("optim.optimizer.lr=1e30", "optim.recurrence_lr=1e30", "trainer.gradient_clip_val=null")
    summary = train("trainer=gpu", f"trainer.cuda_graphs={str(cuda_graphs).lower()}", *overrides)
    assert summary["status"] == "failed"
    assert re.search(r"training loss is (nan|inf|-inf) at step \d+$", summary["reason"]), summary["reason"]
    step = int(summary["reason"].rsplit(" ", 1)[1])
    assert 0 < step < 20  # found within the first epoch (the first loss, before any step, is finite)
    metrics = run_dir(make_config("trainer=gpu", f"trainer.cuda_graphs={str(cuda_graphs).lower()}", *overrides))
    assert not (metrics / "metrics.csv").exists() or "val" not in (metrics / "metrics.csv").read_text()
