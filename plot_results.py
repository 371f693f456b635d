"""Learning curves of the runs a filter selects: python plot_results.py --filter choices.model=lru."""

import argparse
from pathlib import Path

from ssm_lab.plotting import learning_curves, save_figure, select_runs
from ssm_lab.results import gather


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", default="results", help="where the run records are (default: results)")
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs with this config/summary value, read as YAML: model.d_state=32 matches 32.0, "
        "model.checkpoint=false matches False (repeatable)",
    )
    parser.add_argument("--metric", default="loss", help="metric to draw (loss, accuracy, rmse, ...)")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument(
        "--label", default="run_id", help="run column naming each line, in its order (numbers by value): e.g. seed"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="figure path; .png and .pdf are appended (default: <results-dir>/figures/curves_<split>_<metric>)",
    )
    args = parser.parse_args(argv)

    runs = gather(args.results_dir)
    if runs.empty:
        raise SystemExit(f"no runs in {args.results_dir}")
    try:  # a bad filter key, label column or metric: the message names the available ones
        runs = select_runs(runs, args.filter)
        if runs.empty:
            raise SystemExit(f"no runs in {args.results_dir} match {args.filter or 'any filter'}")
        figure = learning_curves(runs, gather(args.results_dir, metrics=True), args.metric, args.split, args.label)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    output = (
        Path(args.output) if args.output else Path(args.results_dir) / "figures" / f"curves_{args.split}_{args.metric}"
    )
    for path in save_figure(figure, output):
        print(path)


if __name__ == "__main__":
    main()
