"""Training steps from CUDA graphs (``trainer.cuda_graphs=true``) against eager ones: the wall time of one
Lightning training step (batch, forward, loss, backward, clipping, AdamW, the loss read back), per model, on A5.

Two sizes: the layer benchmark's (one layer, D = N = 256, B = 32, L = 1024) and the overhead benchmark's small
run (two layers of 128, L = 64), where the host's launch time is most of the step.

    python -m ssm_lab.bench.cuda_graphs [--models lru l2n tv] [--steps 60] [--out FILE]

Appends one JSON line per model and size to benchmarks/results/<date>-<gpu>.jsonl (or --out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ssm_lab.bench.overhead import lightning_step_time
from ssm_lab.bench.recording import append_records, positive_int, results_path
from ssm_lab.config import compose_config

SIZES = {
    "layer": ["scale.d_model=256", "scale.d_state=256", "scale.n_layers=1", "scale.seq_len=1024"],
    "small": ["scale.d_model=128", "scale.n_layers=2", "scale.seq_len=64"],
}
COMMON = ["scale=smoke", "scale.batch_size=32", "logger=none", "trainer=gpu"]


def measure(model: str, size: str, steps: int, warmup: int, rounds: int) -> dict:
    """Eager and graphed step times (each the best of ``rounds`` alternated rounds) and their ratio."""
    overrides = [*COMMON, *SIZES[size], f"model={model}"]
    cfg = compose_config(overrides)
    eager, graphed = [], []
    for _ in range(rounds):  # alternated, so a busy moment of the machine penalises neither
        eager.append(lightning_step_time(cfg, steps, warmup))
        graphed.append(lightning_step_time(cfg, steps, warmup, cuda_graphs=True))
    return {
        "benchmark": "cuda_graphs",
        "model": model,
        "size": size,
        "overrides": overrides,
        "eager_step_ms": 1e3 * min(eager),
        "graphed_step_ms": 1e3 * min(graphed),
        "speedup": min(eager) / min(graphed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lru", "l2n", "tv"])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=sorted(SIZES))
    parser.add_argument("--steps", type=positive_int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="jsonl to append to (default: benchmarks/results/)")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in 0..steps - 1 = {args.steps - 1}, got {args.warmup}")
    if not torch.cuda.is_available():
        raise SystemExit("ssm_lab.bench.cuda_graphs needs a CUDA GPU")
    records = []
    for size in args.sizes:
        for model in args.models:
            record = measure(model, size, args.steps, args.warmup, args.rounds)
            records.append(record)
            print(f"{size:>6} {model:<12} eager {record['eager_step_ms']:8.2f} ms  graphed "
                  f"{record['graphed_step_ms']:8.2f} ms  x{record['speedup']:.2f}", flush=True)  # fmt: skip
    append_records(records, args.out or results_path())


if __name__ == "__main__":
    main()
