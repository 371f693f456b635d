"""Benchmark 2 of issue 9: one DeepSSM layer, fp32, forward + backward, against a matmul-only layer.

B = 32, D = N = 256, L in {1024, 4096}; cores lru, l2n, tv (``ssm_lab.models.deep_ssm.DeepSSM`` with
n_layers=1, its default static layer, mode "scan": the Triton kernel on CUDA). The yardstick is a
layer that only multiplies matrices (Linear D -> 2D, GLU, Linear D -> D); the peer is neural-ssm
0.44's one-layer DeepSSM with the same sizes and param, where it imports. Each row also gives the GPU
busy time (``gpu_busy_ms``: the wall time when the host keeps the GPU fed; above it, launch overhead) and
the GPU time spent in matrix multiplications (``gemm_ms``): a layer whose GEMMs alone take k times the
matmul-only layer cannot run faster than k times it. ``graphed_ms`` replays the forward + backward from a CUDA
graph, as a training step captured with CUDA graphs would run: no host launch time (it needs a step without
host synchronisation). The ratios divide each by the matmul-only wall time.
Run on a GPU machine:

    python -m ssm_lab.bench.layer [--lengths 1024 4096] [--out benchmarks/results/<date>-<gpu>.jsonl]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ssm_lab.bench.recording import append_records, graphed_median_ms, median_ms, peak_gib, results_path
from ssm_lab.models.deep_ssm import DeepSSM

BATCH, WIDTH = 32, 256
PARAMS = ("lru", "l2n", "tv")


def matmul_only_layer(width: int) -> nn.Module:
    """Linear D -> 2D, GLU, Linear D -> D: what a layer costs when it only multiplies matrices."""
    return nn.Sequential(nn.Linear(width, 2 * width), nn.GLU(dim=-1), nn.Linear(width, width))


def _output(result: object) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def _neural_ssm_layer(param: str) -> nn.Module:
    from neural_ssm.ssm.layers import DeepSSM as NeuralSSMDeepSSM

    return NeuralSSMDeepSSM(WIDTH, WIDTH, d_model=WIDTH, d_state=WIDTH, n_layers=1, param=param)


def kernel_ms(fn, iterations: int = 5) -> tuple[float, float]:
    """(GPU busy time, time in matrix-multiply kernels) per call of fn, from the torch profiler. Busy time
    is what the call costs when the host keeps the GPU fed (wall time above it is launch overhead); the
    GEMMs (cuBLAS/CUTLASS names contain "gemm", the split-K reductions belong to them) are the part of a
    layer no scan can remove."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            fn()
        torch.cuda.synchronize()
    kernels = [event for event in prof.key_averages() if event.device_type == DeviceType.CUDA]
    busy_us = sum(event.self_device_time_total for event in kernels)
    gemm_us = sum(
        event.self_device_time_total
        for event in kernels
        if any(key in event.key.lower() for key in ("gemm", "splitkreduce"))
    )
    return busy_us / iterations / 1000, gemm_us / iterations / 1000


def _time(model: nn.Module, call, u: torch.Tensor) -> dict[str, float]:
    """Median ms, peak GiB, GPU busy ms and GEMM ms of one forward + backward."""
    grad = torch.randn_like(_output(call(model, u)))
    parameters = [p for p in model.parameters() if p.requires_grad]

    def fwd_bwd():
        return torch.autograd.grad(_output(call(model, u)), [u, *parameters], grad, allow_unused=True)

    busy, gemm = kernel_ms(fwd_bwd)
    timing = {"ms": median_ms(fwd_bwd), "peak_gib": peak_gib(fwd_bwd), "gpu_busy_ms": busy, "gemm_ms": gemm}
    try:
        timing["graphed_ms"] = graphed_median_ms(fwd_bwd)
    except Exception as error:  # a layer that syncs with the host cannot be captured: say so
        timing["graphed_error"] = f"{type(error).__name__}: {error}"[:300]
    return timing


def _ratios(timing: dict[str, float], matmul: dict[str, float]) -> dict[str, float]:
    """Wall time, GPU busy time and GEMM time, each over the matmul-only layer's wall time; the graphed time over
    the faster of the matmul-only layer's eager and graphed times (a slow graphed yardstick never flatters it)."""
    ratios = {
        "ratio_to_matmul": timing["ms"] / matmul["ms"],
        "busy_ratio": timing["gpu_busy_ms"] / matmul["ms"],
        "gemm_ratio": timing["gemm_ms"] / matmul["ms"],
    }
    if "graphed_ms" in timing:
        ratios["graphed_ratio"] = timing["graphed_ms"] / min(matmul["ms"], matmul.get("graphed_ms", matmul["ms"]))
    return ratios


def run(lengths: list[int], out: Path) -> list[dict]:
    records = []
    for length in lengths:
        torch.manual_seed(0)
        u = torch.randn(BATCH, length, WIDTH, device="cuda", requires_grad=True)
        base = {"benchmark": "layer", "batch": BATCH, "width": WIDTH, "length": length, "dtype": "float32"}
        matmul = _time(matmul_only_layer(WIDTH).cuda(), lambda m, x: m(x), u)
        records.append({**base, "name": "matmul-only layer", **matmul, **_ratios(matmul, matmul)})
        for param in PARAMS:
            candidates = {f"ssm_lab DeepSSM {param}": lambda param=param: DeepSSM(
                WIDTH, WIDTH, d_model=WIDTH, d_state=WIDTH, n_layers=1, param=param)}  # fmt: skip
            candidates[f"neural-ssm 0.44 DeepSSM {param}"] = lambda param=param: _neural_ssm_layer(param)
            for name, build in candidates.items():
                try:
                    model = build().cuda()
                    timing = _time(model, lambda m, x: m(x, mode="scan"), u)
                except Exception as error:  # a peer that fails to import, build or run is reported, not fatal
                    records.append({**base, "name": name, "error": f"{type(error).__name__}: {error}"[:300]})
                    continue
                finally:
                    torch.cuda.empty_cache()
                records.append({**base, "name": name, **timing, **_ratios(timing, matmul)})
    append_records(records, out)
    return records


def print_table(records: list[dict]) -> None:
    print(f"{'L':>6} {'name':<34} {'ms':>9} {'x matmul':>9} {'peak GiB':>9} {'busy x':>7} {'GEMM x':>7} {'graph x':>7}")
    for record in records:
        if "error" in record:
            print(f"{record['length']:>6} {record['name']:<34} unavailable: {record['error'][:80]}")
        else:
            print(f"{record['length']:>6} {record['name']:<34} {record['ms']:>9.3f} {record['ratio_to_matmul']:>9.2f} "
                  f"{record['peak_gib']:>9.2f} {record['busy_ratio']:>7.2f} {record['gemm_ratio']:>7.2f} "
                  f"{record.get('graphed_ratio', float('nan')):>7.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--out", type=Path, default=None, help="jsonl to append to (default: benchmarks/results/)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ssm_lab.bench.layer needs a CUDA GPU")
    out = args.out or results_path()
    print_table(run(args.lengths, out))
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
