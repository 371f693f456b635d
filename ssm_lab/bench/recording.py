"""What the benchmarks share: the jsonl record of results (CPU and GPU), median GPU timings, the memory-copy floor."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path("benchmarks/results")


def _on_gpu(gpu: bool | None) -> bool:
    """Whether results are GPU results: as given, else whenever CUDA is available."""
    return torch.cuda.is_available() if gpu is None else gpu


def device_slug(gpu: bool | None = None) -> str:
    """'h100' for 'NVIDIA H100 80GB HBM3': the GPU's model, lower case, for the results file name; 'cpu'
    for CPU results (``gpu=False``, or no CUDA)."""
    if not _on_gpu(gpu):
        return "cpu"
    name = torch.cuda.get_device_name()
    match = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", name.replace("NVIDIA", ""))
    return (match.group(1) if match else re.sub(r"\W+", "-", name)).lower()


def results_path(directory: Path = RESULTS_DIR, gpu: bool | None = None) -> Path:
    """benchmarks/results/<UTC date>-<gpu or cpu>.jsonl"""
    return directory / f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}-{device_slug(gpu)}.jsonl"


def _git_commit() -> str:
    """The checked-out commit, "-dirty" when a tracked file differs from it (a copy of a tree whose .git is older
    than its files says so instead of naming a commit that did not run). The results under ``RESULTS_DIR`` do not
    count: the benchmarks append to them, so a run's second record would otherwise call the first one's tree dirty."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--abbrev=7"], capture_output=True, text=True)
        changes = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS_DIR}"]
        changed = subprocess.run(changes, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
    name = commit.stdout.strip()
    return f"{name}-dirty" if name and changed else name


def append_records(records: list[dict], path: Path, gpu: bool | None = None) -> None:
    """Append one json line per record, each stamped with device, versions, commit and time: the GPU's
    name and Triton's version for GPU results (``gpu``, default: CUDA is available), else "cpu", the
    processor and the thread count."""
    stamp = {"torch": torch.__version__, "commit": _git_commit()}
    if _on_gpu(gpu):
        import triton

        stamp.update(device=torch.cuda.get_device_name(), triton=triton.__version__)
    else:
        stamp.update(device="cpu", cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    stamp["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps({**record, **stamp}) + "\n")


def median_ms(fn: Callable[[], object], warmup_ms: float = 25, repeat_ms: float = 200) -> float:
    """Median time of fn() in ms, with CUDA events (triton.testing.do_bench, which also flushes the L2)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=repeat_ms, return_mode="median"))


def graphed_median_ms(fn: Callable[[], object], repeat_ms: float = 200) -> float:
    """Median time of fn() in ms replayed from a CUDA graph (triton.testing.do_bench_cudagraph): the GPU's
    own time, without the host's Python, autograd and launch overhead that ``median_ms`` includes (which
    depends on the host CPU as much as on the GPU). fn must be capturable (no host synchronisation)."""
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, rep=repeat_ms, return_mode="median"))


def copy_ms(n_bytes: int, graphed: bool = False) -> float:
    """Time to copy a buffer of n_bytes on the GPU: it moves 2 * n_bytes (one read, one write)."""
    source = torch.randn(n_bytes // 4, device="cuda")
    target = torch.empty_like(source)
    return (graphed_median_ms if graphed else median_ms)(lambda: target.copy_(source))


def peak_gib(fn: Callable[[], object]) -> float:
    """Peak GPU memory allocated while fn() runs, in GiB, above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**30


def positive_int(text: str) -> int:
    """An argparse ``type`` for sizes and counts: a positive integer, else a usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
