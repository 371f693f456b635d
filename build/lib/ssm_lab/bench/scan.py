"""Benchmark 1 of issue 9: the diagonal scan primitive, fp32, forward + backward, against the memory floor.

B = 32 sequences of 256 complex channels (time-varying a_t), L in {1024, 4096, 16384}. The floor is
the time to move the 8 tensor-volumes a fwd+bwd must move (forward: read a, b, write h; backward:
read a, h, dh, write da, db), measured as 4 copies of one volume on this GPU. Side by side, where
they import: accelerated-scan 0.3.1 (``accelerated_scan.complex.scan``, layout (B, N, L)),
fla-core 0.6.0 ``chunk_hgrn`` (real, 512 channels: the same bytes), neural-ssm 0.44's associative
scan (``neural_ssm.utils.scan.diag_affine_scan``, time first). Each peer's output is checked against
ours before it is timed. Each is timed twice: as called (``ms``: CUDA events around eager calls, so
the host's Python, autograd and launch time count where the GPU waits for them; at L = 1024 that is most
of the floor on a slow host) and replayed from a CUDA graph (``graphed_ms``: the GPU's own time, as in a
training step captured with CUDA graphs; ``graphed_ratio_to_floor`` divides it by the faster of the two
copy timings, eager or graphed, so that a slow graphed copy never flatters the ratio).
A second table times Mamba's selective scan (B=8, D=1536, N=16, L=2048, fp32,
fwd+bwd): the Triton kernel against the chunked pure-torch path, with peak memory. Run on a GPU machine:

    python -m ssm_lab.bench.scan [--lengths 1024 4096 16384] [--out benchmarks/results/<date>-<gpu>.jsonl]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from ssm_lab.bench.recording import append_records, copy_ms, graphed_median_ms, median_ms, peak_gib, results_path
from ssm_lab.ops.scan import linear_recurrence

BATCH, CHANNELS = 32, 256
FWD_BWD_VOLUMES = 8


def _decays(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.polar(0.9 + 0.099 * torch.rand(shape, device="cuda"), torch.rand(shape, device="cuda"))


def _fwd_bwd(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], grad: torch.Tensor) -> Callable:
    return lambda: torch.autograd.grad(forward(), inputs, grad)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm()).item()


def _ssm_lab(a: torch.Tensor, b: torch.Tensor, mode: str) -> tuple[Callable, torch.Tensor]:
    a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    h = linear_recurrence(a, b, mode=mode)
    return _fwd_bwd(lambda: linear_recurrence(a, b, mode=mode), [a, b], torch.randn_like(h)), h.detach()


def _accelerated_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[Callable, torch.Tensor]:
    from accelerated_scan.complex import scan

    # its layout is (B, N, L), time contiguous
    a_t, b_t = (x.transpose(1, 2).contiguous().requires_grad_(True) for x in (a, b))
    h = scan(a_t, b_t)
    return _fwd_bwd(lambda: scan(a_t, b_t), [a_t, b_t], torch.randn_like(h)), h.detach().transpose(1, 2)


def _neural_ssm(a: torch.Tensor, b: torch.Tensor) -> tuple[Callable, torch.Tensor]:
    from neural_ssm.utils.scan import diag_affine_scan

    a_t, b_t = (x.transpose(0, 1).contiguous().requires_grad_(True) for x in (a, b))  # (L, B, N)
    h = diag_affine_scan(a_t, b_t)
    return _fwd_bwd(lambda: diag_affine_scan(a_t, b_t), [a_t, b_t], torch.randn_like(h)), h.detach().transpose(0, 1)


def _fla_chunk_hgrn(length: int) -> tuple[Callable, torch.Tensor, torch.Tensor]:
    """chunk_hgrn(x, g) runs h_t = exp(g_t) h_{t-1} + x_t on real (B, L, 2N) inputs; checked against ours."""
    from fla.ops.hgrn import chunk_hgrn

    x = torch.randn(BATCH, length, 2 * CHANNELS, device="cuda", requires_grad=True)
    g = torch.log(0.9 + 0.099 * torch.rand(BATCH, length, 2 * CHANNELS, device="cuda")).requires_grad_(True)
    h, _ = chunk_hgrn(x, g)
    reference = linear_recurrence(g.detach().exp(), x.detach())
    return _fwd_bwd(lambda: chunk_hgrn(x, g)[0], [x, g], torch.randn_like(h)), h.detach(), reference


def _peers(a: torch.Tensor, b: torch.Tensor, reference: torch.Tensor) -> dict[str, tuple[Callable, float] | str]:
    """name -> (fwd+bwd callable, relative error vs ssm_lab) or the reason it could not run."""
    peers: dict[str, tuple[Callable, float] | str] = {}
    builders = {
        "accelerated-scan 0.3.1": lambda: _accelerated_scan(a, b),
        "neural-ssm 0.44 diag_affine_scan": lambda: _neural_ssm(a, b),
    }
    for name, build in builders.items():
        try:
            run, h = build()
            peers[name] = (run, _relative_error(h, reference))
        except Exception as error:  # a peer that fails to import or run is reported, not fatal
            peers[name] = f"{type(error).__name__}: {error}"[:300]
    try:
        run, h, fla_reference = _fla_chunk_hgrn(a.shape[1])
        peers["fla-core 0.6.0 chunk_hgrn (real, 512 ch)"] = (run, _relative_error(h, fla_reference))
    except Exception as error:
        peers["fla-core 0.6.0 chunk_hgrn (real, 512 ch)"] = f"{type(error).__name__}: {error}"[:300]
    return peers


def run(lengths: list[int], out: Path, with_torch_scan: bool = True) -> list[dict]:
    records = []
    for length in lengths:
        torch.manual_seed(0)
        a = _decays((BATCH, length, CHANNELS))
        b = torch.randn(BATCH, length, CHANNELS, dtype=torch.complex64, device="cuda")
        volume = b.numel() * b.element_size()
        floor = FWD_BWD_VOLUMES / 2 * copy_ms(volume)
        graphed_floor = FWD_BWD_VOLUMES / 2 * copy_ms(volume, graphed=True)
        base = {"benchmark": "scan", "batch": BATCH, "channels": CHANNELS, "length": length, "dtype": "complex64"}
        records.append({
            **base, "name": "memory floor (8 volumes)", "ms": floor, "ratio_to_floor": 1.0,
            "graphed_ms": graphed_floor, "graphed_ratio_to_floor": 1.0,
        })  # fmt: skip

        kernel_run, reference = _ssm_lab(a, b, "scan")
        candidates: dict[str, tuple[Callable, float] | str] = {"ssm_lab triton (time-varying)": (kernel_run, 0.0)}
        lti_run, _ = _ssm_lab(a[0, 0], b, "scan")
        candidates["ssm_lab triton (LTI a: (N,), floor 5 volumes)"] = (lti_run, 0.0)
        if with_torch_scan:
            torch_run, torch_h = _ssm_lab(a, b, "torch_scan")
            candidates["ssm_lab torch_scan"] = (torch_run, _relative_error(torch_h, reference))
        candidates.update(_peers(a, b, reference))
        for name, candidate in candidates.items():
            if isinstance(candidate, str):
                records.append({**base, "name": name, "error": candidate})
                continue
            fn, error = candidate
            ms = median_ms(fn)
            record = {**base, "name": name, "ms": ms, "ratio_to_floor": ms / floor, "peak_gib": peak_gib(fn),
                      "relative_error_vs_ssm_lab": error}  # fmt: skip
            try:
                record["graphed_ms"] = graphed_median_ms(fn)
                record["graphed_ratio_to_floor"] = record["graphed_ms"] / min(floor, graphed_floor)
            except Exception as capture_error:  # a peer that syncs with the host cannot be captured: say so
                record["graphed_error"] = f"{type(capture_error).__name__}: {capture_error}"[:300]
            records.append(record)
            del fn
        del a, b, reference, candidates
        torch.cuda.empty_cache()
    append_records(records, out)
    return records


def run_selective(out: Path, batch: int = 8, length: int = 2048, channels: int = 1536, state_size: int = 16) -> list:
    """Selective scan, fwd+bwd: ssm_lab's Triton kernel vs the chunked torch path (the kernel is checked first)."""
    from ssm_lab.ops.selective_scan import selective_scan as selective_scan_torch
    from ssm_lab.ops.triton.selective_scan import selective_scan as selective_scan_triton

    torch.manual_seed(0)
    u = torch.randn(batch, length, channels, device="cuda")
    delta = torch.exp(torch.empty(batch, length, channels, device="cuda").uniform_(-6.9, -2.3))
    A = -torch.arange(1, state_size + 1, device="cuda", dtype=torch.float32).repeat(channels, 1)
    B, C = torch.randn(2, batch, length, state_size, device="cuda")
    D = torch.randn(channels, device="cuda")
    leaves = [x.clone().requires_grad_(True) for x in (u, delta, A, B, C, D)]
    grad_y = torch.randn_like(u)
    base = {"benchmark": "selective_scan", "batch": batch, "length": length, "channels": channels,
            "state_size": state_size, "dtype": "float32"}  # fmt: skip
    reference = selective_scan_torch(*leaves)[0].detach()
    records = []
    for name, scan in (("ssm_lab triton", selective_scan_triton), ("ssm_lab torch (chunked)", selective_scan_torch)):
        fn = _fwd_bwd(lambda scan=scan: scan(*leaves)[0], leaves, grad_y)
        error = _relative_error(scan(*leaves)[0].detach(), reference)
        ms = median_ms(fn)
        records.append({**base, "name": name, "ms": ms, "peak_gib": peak_gib(fn), "relative_error_vs_torch": error})
    append_records(records, out)
    return records


def print_table(records: list[dict]) -> None:
    nan = float("nan")
    columns = ("ms", "x floor", "graphed", "x floor", "peak GiB", "rel err")
    print(f"{'L':>6} {'name':<48} " + " ".join(f"{column:>9}" for column in columns))
    for record in records:
        if "error" in record:
            print(f"{record['length']:>6} {record['name']:<48} unavailable: {record['error'][:70]}")
            continue
        print(
            f"{record['length']:>6} {record['name']:<48} {record['ms']:>9.3f} {record['ratio_to_floor']:>9.2f} "
            f"{record.get('graphed_ms', nan):>9.3f} {record.get('graphed_ratio_to_floor', nan):>9.2f} "
            f"{record.get('peak_gib', 0.0):>9.2f} {record.get('relative_error_vs_ssm_lab', 0.0):>9.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--out", type=Path, default=None, help="jsonl to append to (default: benchmarks/results/)")
    parser.add_argument("--no-torch-scan", action="store_true", help="skip the slow pure-torch scan")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ssm_lab.bench.scan needs a CUDA GPU")
    out = args.out or results_path()
    print_table(run(args.lengths, out, with_torch_scan=not args.no_torch_scan))
    for record in run_selective(out):
        print(f"selective scan {record['name']:<28} {record['ms']:9.3f} ms {record['peak_gib']:7.2f} GiB "
              f"rel err {record['relative_error_vs_torch']:.1e}")  # fmt: skip
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
