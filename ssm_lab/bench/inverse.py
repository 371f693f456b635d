"""Batched small inverses on the GPU: ``ssm_lab.ops.inverse.batched_inverse`` (the Triton Gauss-Jordan kernel)
against torch.linalg.inv and the batched solve with N + 1 right-hand sides that IDS4's maps used before, forward
only and forward + backward, fp32, with each one's error against the float64 inverse. The matrices are I - S as in
IDS4's bilinear maps (S of 2-norm ~1). Run on a GPU machine:

    python -m ssm_lab.bench.inverse [--count 32768] [--sizes 16,32,64] [--out benchmarks/results/<date>-<gpu>.jsonl]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ssm_lab.bench.recording import append_records, median_ms, results_path
from ssm_lab.ops.inverse import batched_inverse, kernel_applies


def _with_backward(inverse: Callable[[Tensor], Tensor], K: Tensor, weights: Tensor) -> Callable[[], None]:
    leaf = K.clone().requires_grad_(True)
    return lambda: torch.autograd.grad((inverse(leaf) * weights).sum(), leaf)


def measure(count: int, n: int) -> list[dict]:
    """One record per method at ``count`` matrices of size ``n``."""
    generator = torch.Generator().manual_seed(n)
    S = 0.5 / n**0.5 * torch.randn(count, n, n, generator=generator, dtype=torch.float64)
    K64 = torch.eye(n, dtype=torch.float64) - S
    reference = torch.linalg.inv(K64).cuda()
    K, weights = K64.float().cuda(), torch.randn(count, n, n, device="cuda")
    eye = torch.eye(n, device="cuda")
    weights_and_column = torch.cat([weights, torch.zeros_like(weights[..., :1])], -1)  # the u column: no weight
    methods = {
        "batched_inverse": batched_inverse,
        "torch.linalg.inv": torch.linalg.inv,
        # what IDS4's maps took before: one solve for (I - S)^{-1} [I + S | u]; here [I | u], to compare K^{-1}
        "solve, N + 1 right-hand sides": lambda K: torch.linalg.solve(K, torch.cat([eye.expand_as(K), K[..., :1]], -1)),
    }
    base = {"benchmark": "batched_inverse", "count": count, "n": n, "dtype": "float32", "kernel": kernel_applies(K)}
    records = []
    for name, inverse in methods.items():
        with torch.no_grad():
            error = ((inverse(K)[..., :n].double() - reference).norm() / reference.norm()).item()
            forward = median_ms(lambda: inverse(K))  # noqa: B023 (called before the loop moves on)
        both = median_ms(_with_backward(inverse, K, weights_and_column if name.startswith("solve") else weights))
        records.append({**base, "name": name, "forward_ms": forward, "fwd_bwd_ms": both, "error": error})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=32768, help="matrices per call (B L of IDS4 at B=32, L=1024)")
    parser.add_argument("--sizes", default="16,32,64", help="comma list of N")
    parser.add_argument("--out", type=Path, default=None, help="jsonl to append to (default: benchmarks/results/)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ssm_lab.bench.inverse needs a CUDA GPU")
    out = args.out or results_path()
    for n in (int(size) for size in args.sizes.split(",")):
        records = measure(args.count, n)
        append_records(records, out)
        for record in records:
            times = f"fwd {record['forward_ms']:7.2f} ms  fwd+bwd {record['fwd_bwd_ms']:7.2f} ms"
            print(f"N={n:<4} {record['name']:<30} {times}  error {record['error']:.1e}")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
