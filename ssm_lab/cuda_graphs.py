"""Training with CUDA graphs: the network's forward and backward replayed from graphs captured once per batch shape.

On a GPU a small network's training step is bound by the host: Python launches each of a few hundred kernels
(~270 in a one-layer 256-wide l2n DeepSSM, most of them the certified parametrisation's), and at L = 1024 the
H100 machine spent 7-15 ms of host time on work that keeps the GPU busy for 3-4 ms (``python -m
ssm_lab.bench.layer``). A CUDA graph records those launches once and replays them with one.
``torch.cuda.make_graphed_callables`` captures a module's forward and its backward as two graphs behind an
autograd Function; the parameters are the graphs' inputs, so the optimiser (eager) updates them in place between
replays and every replay sees the new values. Loss, metrics and the optimiser step stay eager.

``GraphedTraining`` keeps one captured pair per input signature (names, shapes, dtypes of the batch tensors and
the autocast setting), so a smaller last batch gets its own graph, up to ``max_graphs``; past that it raises
rather than capturing without end (per-batch padded lengths give a new shape nearly every batch). Each pair keeps
its own memory for the activations its backward reads (a pool of its own, held between steps). Evaluation
(``eval()`` or autograd off) runs the network eagerly. A graph cannot read values back to the host, so the
cores skip their host-side checks of ``lengths`` and ``integration_timesteps`` while a graph is captured
(``ssm_lab.cores.base.host_checks_deferred``) and this runner makes the same checks on every batch before its
replay. A network that synchronises with the host for another reason cannot be captured: the Linear CDE's exact
exponential (its number of squarings is read off the data), L2RU (its Cholesky factors check their matrices),
cuDNN's RNN, LSTM and GRU on padded batches (packed sequences take their lengths on the host).
An eager forward + backward under ``torch.cuda.set_sync_debug_mode("error")``, after one that may set things up
(a cuDNN recurrence's first call copies to the device), finds them before any capture, and the error names the
network and the way back (``trainer.cuda_graphs=false``).

Not supported (refused by ``ssm_lab.train``): CPU runs, more than one process (DDP), and gradient accumulation
(``make_graphed_callables`` hands its static gradient buffers to autograd, which may keep one as ``.grad`` and
then add the next replay's gradient, written into that same buffer, to itself).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor, nn

from ssm_lab.cores.base import check_lengths, host_checks_deferred
from ssm_lab.cores.stepping import check_timesteps

__all__ = ["GraphCaptureError", "GraphedTraining"]


class GraphCaptureError(RuntimeError):
    """The network's training step cannot be replayed from a CUDA graph, or needs more graphs than allowed."""


class _Call(nn.Module):
    """The network called with its keyword tensors given positionally (a graph's inputs are a flat tuple)."""

    def __init__(self, network: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.network, self.names = network, names

    def forward(self, inputs: Tensor, *options: Tensor) -> Tensor:
        return self.network(inputs, **dict(zip(self.names, options, strict=True)))


def _signature(tensors: tuple[Tensor, ...], names: tuple[str, ...]) -> tuple:
    autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    return names, autocast, tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in tensors)


class GraphedTraining:
    """Calls ``network(inputs, **options)``; in training mode with autograd on, from CUDA graphs (module docstring).

    network: the model, on a CUDA device; options: tensors or None (None options are left out of the call).
    """

    def __init__(self, network: nn.Module, max_graphs: int = 8) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.network, self.max_graphs = network, max_graphs
        self._graphed: dict[tuple, nn.Module] = {}

    @property
    def graph_count(self) -> int:
        """How many input signatures have been captured."""
        return len(self._graphed)

    def __call__(self, inputs: Tensor, **options: Tensor | None) -> Tensor:
        given = {name: value for name, value in options.items() if value is not None}
        if not (self.network.training and torch.is_grad_enabled()):
            return self.network(inputs, **given)
        self._check(inputs, given)
        names, tensors = tuple(given), (inputs, *given.values())
        signature = _signature(tensors, names)
        graphed = self._graphed.get(signature)
        if graphed is None:
            graphed = self._graphed[signature] = self._capture(names, tensors)
        return graphed(*tensors)

    @staticmethod
    def _check(inputs: Tensor, options: dict[str, Tensor]) -> None:
        """The checks the cores skip while captured, made on this batch (a replay would not make them)."""
        if "lengths" in options:
            check_lengths(options["lengths"], inputs.shape[0], inputs.shape[1])
        if "integration_timesteps" in options:
            check_timesteps(options["integration_timesteps"], inputs)

    def _capture(self, names: tuple[str, ...], tensors: tuple[Tensor, ...]) -> nn.Module:
        if len(self._graphed) >= self.max_graphs:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise GraphCaptureError(
                f"trainer.cuda_graphs: a new batch shape ({shapes}) would be graph {len(self._graphed) + 1}, past "
                f"max_graphs={self.max_graphs}; batches whose shapes keep changing (lengths padded per batch) "
                "cannot use CUDA graphs: run with trainer.cuda_graphs=false"
            )
        if any(not t.is_cuda for t in tensors):
            raise GraphCaptureError(
                f"trainer.cuda_graphs needs CUDA tensors, got devices {[str(t.device) for t in tensors]}"
            )
        # the static inputs are the graphs' own copies: the batch's tensors belong to the data loader
        sample = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in tensors)
        call = _Call(self.network, names)
        autocast = (
            torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
            if torch.is_autocast_enabled("cuda")
            else contextlib.nullcontext()
        )  # make_graphed_callables refuses autocast's weight cache: the cached casts would live outside the graph
        # The captured outputs keep the autograd nodes that accumulate into the parameters, made on the capture's
        # side stream, so every replayed backward (on the training stream) makes torch warn that the streams differ.
        # The cost is a GPU-side stream wait; nothing to act on.
        warnings.filterwarnings(
            "ignore", message="The AccumulateGrad node's stream does not match", category=UserWarning
        )
        with autocast, host_checks_deferred():
            self._check_no_host_reads(call, sample)
            try:
                return torch.cuda.make_graphed_callables(call, sample, allow_unused_input=True)
            except Exception as error:
                raise self._capture_error(error) from error

    def _check_no_host_reads(self, call: nn.Module, sample: tuple[Tensor, ...]) -> None:
        """Two eager forward + backward passes, the second with any host synchronisation an error (the first may
        wait: its one-time set-up, caches and compiled kernels, is not part of a step). A capture that fails
        part-way leaves torch's CUDA random generator in its capturing state (every later random draw of the
        process fails: a sweep's next runs too), so what would fail the capture must be found before it."""
        parameters = [p for p in call.parameters() if p.requires_grad]
        previous = torch.cuda.get_sync_debug_mode()
        try:
            for mode in (previous, "error"):
                torch.cuda.set_sync_debug_mode(mode)
                outputs = call(*sample)
                torch.autograd.grad(outputs, parameters, torch.ones_like(outputs), allow_unused=True)
        except RuntimeError as error:
            raise self._capture_error(error) from error
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    def _capture_error(self, error: Exception) -> GraphCaptureError:
        return GraphCaptureError(
            f"{type(self.network).__name__} cannot be trained from CUDA graphs ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:300]}); run with trainer.cuda_graphs=false"
        )
