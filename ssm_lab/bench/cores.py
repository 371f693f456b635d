"""Forward + backward time and peak memory of every core at one size, one core per subprocess
(so each peak is its own), appended as JSON lines to benchmarks/results/<date>-<device>.jsonl.

    python -m ssm_lab.bench.cores                                  # CPU, 2 threads, B=16 L=1024 H=64 N=64
    python -m ssm_lab.bench.cores --device cuda --batch 32 --length 4096 --d-model 256
    python -m ssm_lab.bench.cores --cores s4d:scan,lcde:loop       # name[:mode]

Mamba runs at N=16, expand 2 whatever --d-state says (the issue's protocol). Timings on a shared
machine are noisy: the median of --repeats runs after one warm-up is recorded, with the minimum
and, on CPU, the process CPU time per thread (close to the idle-machine wall time when other
processes compete for the cores). On CPU each core runs with the allocator setting of a training run
(``ssm_lab.cpu_memory.keep_freed_memory``, which ``run_experiment.py`` applies: IDS4's per-window maps
and factors are not page-faulted in again every step; 270 ms against 270-350 ms without it), recorded
as ``keeps_freed_memory``; ``--default-allocator`` leaves glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ssm_lab.bench.recording import append_records, positive_int, results_path
from ssm_lab.cores.ids4 import IDS4
from ssm_lab.cores.lcde import LinearCDE
from ssm_lab.cores.mamba import Mamba
from ssm_lab.cores.rglru import RGLRU
from ssm_lab.cores.rnn import TorchRecurrentCore
from ssm_lab.cores.s4 import S4
from ssm_lab.cores.s4d import S4D
from ssm_lab.cores.s5 import S5
from ssm_lab.cores.transformer import CausalSelfAttention
from ssm_lab.cpu_memory import keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]

# name -> (builder(d_model, d_state), default fast mode)
CORES: dict[str, tuple[Callable[[int, int], nn.Module], str]] = {
    "rnn": (lambda h, n: TorchRecurrentCore(h, cell="rnn"), "scan"),
    "lstm": (lambda h, n: TorchRecurrentCore(h, cell="lstm"), "scan"),
    "gru": (lambda h, n: TorchRecurrentCore(h, cell="gru"), "scan"),
    "transformer": (lambda h, n: CausalSelfAttention(h, n_heads=4), "scan"),
    "s4": (lambda h, n: S4(h, d_state=n), "conv"),
    "s4d": (lambda h, n: S4D(h, d_state=n), "conv"),
    "s5": (lambda h, n: S5(h, d_state=n), "scan"),
    "mamba": (lambda h, n: Mamba(h, d_state=16, expand=2), "scan"),
    "rglru": (lambda h, n: RGLRU(h), "scan"),
    "ids4": (lambda h, n: IDS4(h, d_state=n), "scan"),
    # init_std 0.25: with unit-variance increments log|h| grows ~init_std^2 / 2 per step (ssm_lab.cores.lcde), and
    # at the class default 1.0 (the config's 0.5) the states overflow float32 after ~200 (~660) of the L = 1024 steps:
    # a timing of infinities. 0.25 keeps them finite (|y| <= ~1e20), as a model trained at this length must.
    "lcde": (lambda h, n: LinearCDE(h, d_state=n, init_std=0.25), "scan"),
}


def measure(name: str, mode: str, args: argparse.Namespace) -> dict:
    """Time fwd+bwd of one core in this process; peak memory from CUDA stats or the RSS high-water mark."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    core = CORES[name][0](args.d_model, args.d_state).to(device)
    x = torch.randn(args.batch, args.length, args.d_model, device=device, requires_grad=True)

    def run_once() -> tuple[float, float]:
        """(wall seconds, process CPU seconds)."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        y, _ = core(x, mode=mode)
        y.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - start_cpu

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_once()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = zip(*(run_once() for _ in range(args.repeats)), strict=True)
    with torch.no_grad():  # a timing of overflowed (inf / NaN) outputs says nothing: the row says whether it was one
        finite = bool(torch.isfinite(core(x, mode=mode)[0]).all())
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux; the warm-up already reached the steady-state peak
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss) / 1024
    return {
        "benchmark": "core_forward_backward",
        "core": name,
        "mode": mode,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "length": args.length,
        "d_model": args.d_model,
        "d_state": 16 if name == "mamba" else args.d_state,
        "ms_median": 1000 * statistics.median(times),
        "ms_min": 1000 * min(times),
        # CPU seconds / threads: what the wall time would be on an idle machine (contention-robust)
        "cpu_ms_per_thread_median": 1000 * statistics.median(cpu_times) / torch.get_num_threads(),
        "repeats": args.repeats,
        "finite_output": finite,
        "peak_memory_mb": peak_mb,
        "parameters": sum(p.numel() for p in core.parameters()),
    }


def parse_cores(text: str) -> list[tuple[str, str]]:
    chosen = []
    for item in text.split(",") if text != "all" else list(CORES):
        name, _, mode = item.partition(":")
        if name not in CORES:
            raise ValueError(f"unknown core {name!r}; choose one of {', '.join(CORES)}")
        chosen.append((name, mode or CORES[name][1]))
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="all", help="all, or a comma list of name[:mode]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--length", type=positive_int, default=1024)
    parser.add_argument("--d-model", type=positive_int, default=64)
    parser.add_argument("--d-state", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument(
        "--default-allocator", action="store_true", help="CPU: glibc's defaults, not a training run's setting"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds per core before it is recorded as timed out"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="jsonl file (default benchmarks/results/<date>-<device>.jsonl)"
    )
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)  # the child process: one name:mode
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.single:
        name, mode = parse_cores(args.single)[0]
        kept = args.device == "cpu" and not args.default_allocator and keep_freed_memory()
        print(json.dumps({**measure(name, mode, args), "keeps_freed_memory": kept}))
        return
    on_gpu = args.device != "cpu"
    out = args.out or results_path(gpu=on_gpu)
    passed = [
        a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--cores") and a != args.cores
    ]
    for name, mode in parse_cores(args.cores):
        command = [sys.executable, "-m", "ssm_lab.bench.cores", *passed, "--single", f"{name}:{mode}"]
        try:
            finished = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            lines = finished.stdout.strip().splitlines()
            record = json.loads(lines[-1]) if finished.returncode == 0 and lines else None
            if record is None:
                record = {"core": name, "mode": mode, "error": finished.stderr.strip().splitlines()[-1:]}
        except subprocess.TimeoutExpired:
            record = {"core": name, "mode": mode, "error": f"timed out after {args.timeout} s"}
        record.update(batch=args.batch, length=args.length, d_model=args.d_model, device_requested=args.device)
        append_records([record], out, gpu=on_gpu)  # stamped with the commit, versions and time
        if "ms_median" in record:
            shown = f"{record['ms_median']:9.1f} ms  cpu/thread {record['cpu_ms_per_thread_median']:9.1f} ms"
            shown += f"  {record['peak_memory_mb']:8.0f} MB"
        else:
            shown = record["error"]
        print(f"{name:12s} {mode:8s} {shown}", flush=True)


if __name__ == "__main__":
    main()
