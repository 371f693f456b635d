"""CPU benchmark of DeepSSM (issue 5): forward + backward of a 4-layer network, d_model = d_state = 64,
u: (16, 1024, 1), torch on 2 threads, every core in scan and loop mode, side by side with
neural-ssm 0.44 (``pip install neural-ssm==0.44.0 deel-torchlip --no-deps``) when it imports.

Two settings: uncertified (gamma=None, ff=GLU in both libraries) for lru, l2n, tv, and certified
(gamma=1, ours ff=LGLU, neural-ssm's default LGLU2) for l2n and tv (neural-ssm cannot certify lru).
Modes: scan and loop in both libraries; ours also conv (LTI cores) and chunked (the chunked scan of
ssm_lab.ops.selective_scan). Median of ``--repeat`` timed calls after one warm-up call (one timed
call for loop mode, which is slow), the two libraries timed in alternation, each with the median page
faults its calls took (``<library>_page_faults``: what moves a CPU time most from run to run here).
Results are appended to benchmarks/results/<UTC date>-cpu.jsonl. CPU timings are noisy when other
processes share the cores.

    python -m ssm_lab.bench.deep_ssm_cpu [--length 1024] [--repeat 3] [--modes scan loop conv chunked]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ssm_lab.bench.recording import append_records, positive_int, results_path
from ssm_lab.models import DeepSSM

SETTINGS = [  # (param, gamma, our ff, neural-ssm's ff)
    ("lru", None, "GLU", "GLU"),
    ("l2n", None, "GLU", "GLU"),
    ("tv", None, "GLU", "GLU"),
    ("l2n", 1.0, "LGLU", "LGLU2"),
    ("tv", 1.0, "LGLU", "LGLU2"),
]

NEURAL_SSM_MODES = ("scan", "loop")


def paired_median_ms(steps: dict[str, Callable[[], None]], repeat: int) -> dict[str, tuple[float, float]]:
    """(median ms, median page faults) of each step, timed in alternation (one call of each per round,
    after a warm-up round) so that both libraries see the same background load. The page faults (minor
    faults of this process during the call) say how much of a time is the kernel handing memory back
    that the allocator had returned: on this CPU a step's time moves with them by up to ~60%."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    faults: dict[str, list[int]] = {name: [] for name in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            step()
            times[name].append(1000 * (time.perf_counter() - start))
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    return {name: (statistics.median(times[name]), statistics.median(faults[name])) for name in steps}


def fwd_bwd(model: torch.nn.Module, u: torch.Tensor, mode: str) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        y, _ = model(u, mode=mode)
        y.square().mean().backward()

    return step


def build(library: str, param: str, gamma: float | None, ff: str, sizes: dict) -> torch.nn.Module:
    if library == "ssm_lab":
        return DeepSSM(1, 1, param=param, ff=ff, gamma=gamma, **sizes)
    from neural_ssm import DeepSSM as NeuralSSMDeepSSM

    return NeuralSSMDeepSSM(1, 1, param=param, ff=ff, gamma=gamma, **sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=positive_int, default=1024)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    modes = ["scan", "chunked", "conv", "loop"]
    parser.add_argument("--modes", nargs="+", default=modes, choices=modes, help="(conv: the LTI cores only)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        import neural_ssm  # noqa: F401

        libraries = ["ssm_lab", "neural_ssm"]
    except ImportError:
        libraries = ["ssm_lab"]
    sizes = {"d_model": 64, "d_state": 64, "n_layers": 4}
    u = torch.randn(args.batch, args.length, 1)
    records = []
    for param, gamma, ours_ff, theirs_ff in SETTINGS:
        for mode in args.modes:
            row = {
                "benchmark": "deep_ssm_cpu",
                "param": param,
                "gamma": gamma,
                "mode": mode,
                "length": args.length,
                "batch": args.batch,
                **sizes,
                "torch_threads": args.threads,
            }
            steps = {}
            for library in libraries:
                ff = ours_ff if library == "ssm_lab" else theirs_ff
                model = build(library, param, gamma, ff, sizes)
                if mode in (model.blocks[0].core.modes if library == "ssm_lab" else NEURAL_SSM_MODES):
                    row[f"{library}_ff"] = ff
                    steps[library] = fwd_bwd(model, u, mode)
            if "ssm_lab" not in steps:
                continue
            timings = paired_median_ms(steps, 1 if mode == "loop" else args.repeat)
            for library, (ms, faults) in timings.items():
                row.update({f"{library}_ms": ms, f"{library}_page_faults": faults})
            if "neural_ssm_ms" in row:
                row["speedup"] = row["neural_ssm_ms"] / row["ssm_lab_ms"]
            print(json.dumps(row), flush=True)
            records.append(row)
    path = args.out or results_path(gpu=False)
    append_records(records, path, gpu=False)
    print(f"appended {len(records)} records to {path}")


if __name__ == "__main__":
    main()
