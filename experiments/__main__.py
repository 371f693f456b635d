"""make figures: python -m experiments --scale smoke|small|paper [--figure NAME ...] [--launcher slurm] [--set K=V].

Launches only the runs each figure still needs (Hydra multirun through run_experiment.py), gathers
every run and draws into <results_dir>/figures/<scale>/. Exits 1 when runs are still missing afterwards."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments import a5_min_depth, listops, robustness, sysid, toy_signature
from experiments.harness import SCALES, Session, launchers, make_figure

FIGURES = {
    module.__name__.rsplit(".", 1)[-1]: module for module in (toy_signature, a5_min_depth, sysid, listops, robustness)
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument("--figure", action="append", choices=sorted(FIGURES), help="only this figure (repeatable)")
    parser.add_argument("--results-dir", default="results", type=Path)
    parser.add_argument("--data-dir", default="data_dir", type=Path)
    parser.add_argument(
        "--launcher", default="basic", help=f"Hydra launcher: basic, slurm, local or one of {', '.join(launchers())}"
    )
    parser.add_argument("--models", help="comma-separated: only these models (a variant: files of its own)")
    parser.add_argument("--no-launch", action="store_true", help="draw from the recorded runs only")
    parser.add_argument(
        "--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
        help="Hydra override added to every run, e.g. trainer=gpu (part of the runs' identity); hydra.* ones, "
        "e.g. hydra.launcher.n_jobs=12, only set how the runs are launched",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        session = Session(
            scale=args.scale, results_dir=args.results_dir.resolve(), data_dir=args.data_dir.resolve(),
            launcher=args.launcher, extra=tuple(args.extra), launch=not args.no_launch,
            models=tuple(args.models.split(",")) if args.models else None,
        )  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    still_missing = {}
    for name in args.figure or FIGURES:
        _, missing = make_figure(FIGURES[name], session)
        if missing:
            still_missing[name] = len(missing)
    if still_missing:
        summary = ", ".join(f"{name}: {count}" for name, count in still_missing.items())
        print(f"[figures] runs still missing ({summary}); what could be drawn is marked INCOMPLETE")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
