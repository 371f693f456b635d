"""Streaming inference of the certified cores: the latency of one ``step()`` (batch 1, one token, autograd off)
and the time to rebuild the core's parametrisation (its Gram-iteration normalisation, or l2ru's bounded-real-lemma
system), which is what every token paid before ``ssm_lab.inference_cache`` kept it between steps.

    python -m ssm_lab.bench.streaming [--width 256] [--device cpu] [--out benchmarks/results/<date>-<device>.jsonl]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ssm_lab.bench.recording import append_records, positive_int, results_path
from ssm_lab.cores.l2n import L2N
from ssm_lab.cores.l2ru import L2RU
from ssm_lab.cores.lru import LRU
from ssm_lab.cores.tv import TV

# name -> (builder(width), the cached method that rebuilds the parametrisation a step uses)
CORES: dict[str, tuple[Callable[[int], nn.Module], str]] = {
    "lru": (lambda width: LRU(width, d_state=width), "system"),
    "l2n": (lambda width: L2N(width, d_state=width), "system_and_gain_bound"),
    "tv": (lambda width: TV(width, d_state=width), "_projections"),
    "l2ru": (lambda width: L2RU(width, d_state=width), "system"),
}


def _median_us(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times[1:])


def measure(name: str, width: int, device: torch.device, repeats: int) -> dict:
    build, cached = CORES[name]
    torch.manual_seed(0)
    core = build(width).to(device)
    x, state = torch.randn(1, width, device=device), core.default_state(1, device)
    with torch.no_grad():
        step_us = _median_us(lambda: core.step(x, state), device, repeats)
        rebuild_us = _median_us(lambda: getattr(type(core), cached).__wrapped__(core), device, repeats)
    return {
        "benchmark": "streaming_step",
        "core": name,
        "width": width,
        "threads": torch.get_num_threads(),
        "step_us_median": step_us,
        "parametrisation_rebuild_us_median": rebuild_us,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=positive_int, default=256, help="d_model = d_state")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads")
    parser.add_argument("--repeats", type=positive_int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="jsonl to append to (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    records = [measure(name, args.width, device, args.repeats) for name in CORES]
    for record in records:
        step, rebuild = record["step_us_median"], record["parametrisation_rebuild_us_median"]
        print(f"{record['core']:<6} step {step:8.0f} us   parametrisation (each step rebuilt it): {rebuild:8.0f} us")
    on_gpu = device.type == "cuda"
    append_records(records, args.out or results_path(gpu=on_gpu), gpu=on_gpu)


if __name__ == "__main__":
    main()
