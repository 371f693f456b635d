"""Benchmark 3 of issue 9: peak GPU memory (and step time) of a 4-layer tv DeepSSM, fp32, forward + backward.

B = 32, D = N = 256, L = 16384 (goal: at most 17 GiB), ours as is and with ``checkpoint=True``
(activations recomputed in the backward pass); neural-ssm 0.44's DeepSSM of the same sizes
beside them where it imports (it may run out of memory: that is reported). Run on a GPU machine:

    python -m ssm_lab.bench.memory [--length 16384] [--out benchmarks/results/<date>-<gpu>.jsonl]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ssm_lab.bench.recording import append_records, median_ms, results_path
from ssm_lab.models.deep_ssm import DeepSSM

BATCH, WIDTH, LAYERS = 32, 256, 4


def _neural_ssm_model() -> nn.Module:
    from neural_ssm.ssm.layers import DeepSSM as NeuralSSMDeepSSM

    return NeuralSSMDeepSSM(WIDTH, WIDTH, d_model=WIDTH, d_state=WIDTH, n_layers=LAYERS, param="tv")


def _peak_and_time_of_fwd_bwd(model: nn.Module, length: int) -> dict[str, float]:
    """Peak GiB allocated on the GPU during one training step's forward and backward, all counted
    (parameters, input, activations, gradients), and the step's median wall time (what the memory costs or
    saves in time: ``checkpoint=True`` recomputes the activations)."""
    u = torch.randn(BATCH, length, WIDTH, device="cuda")

    def step() -> None:
        result = model(u, mode="scan")
        y = result[0] if isinstance(result, tuple) else result
        y.square().mean().backward()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"peak_gib": peak, "ms": median_ms(step, repeat_ms=2000)}


def run(length: int, out: Path, peers: bool = True) -> list[dict]:
    base = {"benchmark": "memory", "batch": BATCH, "width": WIDTH, "layers": LAYERS, "length": length, "param": "tv"}
    sizes = {"d_model": WIDTH, "d_state": WIDTH, "n_layers": LAYERS, "param": "tv"}
    builders = {
        "ssm_lab DeepSSM tv": lambda: DeepSSM(WIDTH, WIDTH, **sizes),
        "ssm_lab DeepSSM tv checkpoint": lambda: DeepSSM(WIDTH, WIDTH, **sizes, checkpoint=True),
        "neural-ssm 0.44 DeepSSM tv": _neural_ssm_model,
    }
    if not peers:
        builders = {name: build for name, build in builders.items() if name.startswith("ssm_lab")}
    records = []
    for name, build in builders.items():
        torch.manual_seed(0)
        try:
            records.append({**base, "name": name, **_peak_and_time_of_fwd_bwd(build().cuda(), length)})
        except Exception as error:  # out of memory or a peer that does not import: reported, not fatal
            records.append({**base, "name": name, "error": f"{type(error).__name__}: {error}"[:300]})
        torch.cuda.empty_cache()
    append_records(records, out)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=None, help="jsonl to append to (default: benchmarks/results/)")
    parser.add_argument("--no-peers", action="store_true", help="ours only (neural-ssm needs ~68 GiB and minutes)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ssm_lab.bench.memory needs a CUDA GPU")
    out = args.out or results_path()
    for record in run(args.length, out, peers=not args.no_peers):
        measured = f"{record['peak_gib']:.2f} GiB, {record['ms']:.0f} ms" if "peak_gib" in record else record["error"]
        print(f"{record['name']:<30} {measured}")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
