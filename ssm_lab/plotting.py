"""Drawing from gathered run tables: learning curves of selected runs, saved as PNG and PDF."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def select_runs(runs: pd.DataFrame, filters: Iterable[str]) -> pd.DataFrame:
    """Rows matching every ``key=value`` filter (values compared as strings, e.g. ``choices.model=lru``)."""
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"filter {item!r} must look like key=value, e.g. choices.model=lru")
        if key not in runs.columns:
            raise ValueError(
                f"unknown filter key {key!r}; run columns include {', '.join(sorted(runs.columns)[:20])}, ..."
            )
        runs = runs[runs[key].astype(str) == value]
    return runs


def save_figure(figure: plt.Figure, path: Path) -> list[Path]:
    """Write ``path`` with .png and .pdf suffixes; returns both paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        target = path.with_suffix(suffix)
        figure.savefig(target, bbox_inches="tight", dpi=150)
        written.append(target)
    plt.close(figure)
    return written


#: Line styles taken in turn once the colour cycle's 10 colours are used up: (colour, style) pairs stay distinct
#: for 40 lines.
LINE_STYLES = ("-", "--", ":", "-.")


def learning_curves(
    runs: pd.DataFrame, curves: pd.DataFrame, metric: str, split: str = "val", label: str = "run_id"
) -> plt.Figure:
    """One line per run of ``split/metric`` against training step. ``runs``: gather(...);
    ``curves``: gather(..., metrics=True); ``label``: a run column naming each line. A run whose values are all
    NaN or infinite has no line to draw: its legend entry says "(not finite)". The legend sits beside the axes."""
    figure, axis = plt.subplots(figsize=(6, 4))
    selected = curves[(curves["split"] == split) & (curves["metric"] == metric)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for _, run in runs.iterrows():
        points = selected[selected["run_dir"] == run["run_dir"]].sort_values("step")
        if points.empty:
            continue
        name = str(run.get(label, run["run_dir"]))
        if not np.isfinite(points["value"].to_numpy(dtype=float)).any():
            name += " (not finite)"
        style = LINE_STYLES[drawn // len(colours) % len(LINE_STYLES)]
        axis.plot(
            points["step"], points["value"], marker="o", markersize=3, label=name,
            color=colours[drawn % len(colours)], linestyle=style,
        )  # fmt: skip
        drawn += 1
    axis.set_xlabel("training step")
    axis.set_ylabel(f"{split} {metric}")
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, handlelength=3)
    return figure
