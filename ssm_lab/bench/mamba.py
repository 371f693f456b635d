"""The Mamba core (``ssm_lab.cores.mamba``), fp32, forward + backward: time and peak memory per scan path.

B = 32, d_model = 256, d_state = 16, expand 2 (E = 512 channels), L in {1024, 4096}. Rows: mode "scan"
(the Triton kernel where it applies), mode "torch_scan" (the pure-PyTorch blocked scan), and, where
``mamba_ssm`` imports, mamba-ssm's own Mamba block (its CUDA selective-scan kernel) with our weights
copied in, its output checked against ours; where it does not import, the reason is recorded instead.
Every row's output is compared with mode "scan" (relative error). One JSON line per row, appended to
benchmarks/results/<date>-<gpu>.jsonl:

    python -m ssm_lab.bench.mamba [--lengths 1024 4096] [--out benchmarks/results/<date>-<gpu>.jsonl]
    python -m ssm_lab.bench.mamba --device cpu --batch 2 --d-model 16 --lengths 64   # smoke check, prints only

On CPU there is no peak-memory figure; times are the median of --repeats wall-clock runs, and rows are
written only where --out is given.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ssm_lab.bench.recording import append_records, results_path
from ssm_lab.cores.mamba import Mamba
from ssm_lab.ops.selective_scan import cpu_kernel_applies, kernel_applies

# our parameter names -> mamba-ssm's (mamba_ssm.modules.mamba_simple.Mamba): the same block, renamed conv
_MAMBA_SSM_NAMES = {"conv.weight": "conv1d.weight", "conv.bias": "conv1d.bias"}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def _fwd_bwd(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor], grad: torch.Tensor) -> Callable:
    return lambda: torch.autograd.grad(forward(), leaves, grad)


def _mamba_ssm_block(core: Mamba) -> nn.Module:
    """mamba-ssm's Mamba block of the same sizes holding ``core``'s weights (raises where it does not import)."""
    from mamba_ssm.modules.mamba_simple import Mamba as MambaSSM

    block = MambaSSM(
        d_model=core.d_model, d_state=core.d_state, d_conv=core.d_conv, expand=core.d_inner // core.d_model,
        dt_rank=core.dt_rank,
    ).to(core.D.device)  # fmt: skip
    weights = {_MAMBA_SSM_NAMES.get(name, name): value for name, value in core.state_dict().items()}
    block.load_state_dict(weights)
    return block


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    if device.type == "cuda":
        from ssm_lab.bench.recording import median_ms

        return median_ms(fn)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _peak_gib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    from ssm_lab.bench.recording import peak_gib

    return peak_gib(fn)


def _candidates(core: Mamba, x: torch.Tensor) -> dict[str, tuple[Callable[[], torch.Tensor], list] | str]:
    """name -> (forward returning y, the leaves its backward reaches), or why it could not be built."""
    leaves = [x, *core.parameters()]
    scan_path = "triton" if kernel_applies(x) else ("C" if cpu_kernel_applies(x) else "torch")
    candidates: dict[str, tuple[Callable[[], torch.Tensor], list] | str] = {
        f"ssm_lab Mamba scan ({scan_path})": (lambda: core(x, mode="scan")[0], leaves),
        "ssm_lab Mamba torch_scan (torch)": (lambda: core(x, mode="torch_scan")[0], leaves),
    }
    name = "mamba-ssm Mamba block (CUDA kernel)"
    try:
        block = _mamba_ssm_block(core)
        candidates[name] = (lambda: block(x), [x, *block.parameters()])
    except Exception as error:  # not installed, or no CUDA build: recorded, not fatal
        candidates[name] = f"{type(error).__name__}: {error}"[:300]
    return candidates


def _measure(core: Mamba, x: torch.Tensor, base: dict, repeats: int) -> list[dict]:
    """One record per candidate at one length; every output is checked against mode "scan" first."""
    grad_y = torch.randn_like(x)
    with torch.no_grad():
        reference = core(x, mode="scan")[0]
    records = []
    for name, candidate in _candidates(core, x).items():
        if isinstance(candidate, str):
            records.append({**base, "name": name, "error": candidate})
            continue
        forward, leaves = candidate
        with torch.no_grad():
            error = _relative_error(forward(), reference)
        fn = _fwd_bwd(forward, leaves, grad_y)
        records.append({
            **base, "name": name, "ms": _median_ms(fn, x.device, repeats), "peak_gib": _peak_gib(fn, x.device),
            "relative_error_vs_scan": error,
        })  # fmt: skip
    return records


def run(
    lengths: list[int],
    device: torch.device,
    batch: int = 32,
    d_model: int = 256,
    d_state: int = 16,
    expand: int = 2,
    repeats: int = 3,
) -> list[dict]:
    """One record per (length, path): ms and peak GiB of forward + backward, relative error vs mode "scan"."""
    records = []
    for length in lengths:
        torch.manual_seed(0)
        core = Mamba(d_model, d_state=d_state, expand=expand).to(device)
        x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
        base = {
            "benchmark": "mamba_core", "batch": batch, "length": length, "d_model": d_model, "d_state": d_state,
            "expand": expand, "dtype": "float32",
        }  # fmt: skip
        records += _measure(core, x, base, repeats)
        del core, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def print_table(records: list[dict]) -> None:
    print(f"{'L':>6} {'name':<44} {'ms':>9} {'peak GiB':>9} {'rel err':>9}")
    for record in records:
        if "error" in record:
            print(f"{record['length']:>6} {record['name']:<44} unavailable: {record['error'][:80]}")
            continue
        peak = "-" if record["peak_gib"] is None else f"{record['peak_gib']:.2f}"
        print(
            f"{record['length']:>6} {record['name']:<44} {record['ms']:>9.2f} {peak:>9} "
            f"{record['relative_error_vs_scan']:>9.1e}"
        )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke check)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs on CPU (CUDA uses triton's do_bench)")
    parser.add_argument(
        "--out", type=Path, default=None, help="jsonl to append to (default on CUDA: benchmarks/results/)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"unknown device {args.device!r}; choose one of cuda, cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ssm_lab.bench.mamba --device cuda needs a CUDA GPU; use --device cpu for a smoke check")
    records = run(args.lengths, device, args.batch, args.d_model, args.d_state, args.expand, args.repeats)
    print_table(records)
    out = args.out or (results_path() if device.type == "cuda" else None)  # CPU rows are a smoke check
    if out is not None:
        append_records(records, out, gpu=device.type == "cuda")
        print(f"appended to {out}")
    return records


if __name__ == "__main__":
    main()
