"""Drawing from gathered run tables: learning curves of selected runs, saved as PNG and PDF."""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections.abc import Iterable
from numbers import Number, Real
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402


def select_runs(runs: pd.DataFrame, filters: Iterable[str]) -> pd.DataFrame:
    """Rows matching every ``key=value`` filter. The value is read as YAML, as Hydra reads an override:
    numbers match numerically (``model.d_state=32`` matches 32.0), booleans booleanly (``false`` and
    ``False``), ``null`` matches missing values; a cell also matches when its text is the value's
    (``choices.model=lru``)."""
    for item in filters:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"filter {item!r} must look like key=value, e.g. choices.model=lru")
        check_column(runs, key, "filter key")
        runs = runs[matching(runs[key], text)]
    return runs


def matching(column: pd.Series, text: str) -> pd.Series:
    """Whether each cell of ``column`` is the filter value ``text`` (see select_runs)."""
    value = filter_value(text)
    return column.map(lambda cell: same_value(cell, value) or str(cell) == text).astype(bool)


def check_column(runs: pd.DataFrame, key: str, what: str) -> None:
    """Raise naming ``key``, the columns it may have meant and the first run columns when it is not one."""
    if key not in runs.columns:
        close = difflib.get_close_matches(key, [str(column) for column in runs.columns], n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown {what} {key!r}; {hint}run columns include {', '.join(sorted(runs.columns)[:20])}, ..."
        )


def filter_value(text: str) -> object:
    """``text`` as YAML reads it, with ``1e-3`` a number as in Hydra (YAML 1.1 wants ``1.0e-3``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def same_value(cell: object, value: object) -> bool:
    """Typed equality: booleans only with booleans, numbers across int and float, None with a missing cell."""
    if value is None:
        return cell is None or (isinstance(cell, float) and math.isnan(cell))
    if isinstance(cell, bool | np.bool_) or isinstance(value, bool):
        return isinstance(cell, bool | np.bool_) and isinstance(value, bool) and bool(cell) == value
    return isinstance(cell, Number) and isinstance(value, Number) and cell == value


def save_figure(figure: plt.Figure, path: Path) -> list[Path]:
    """Write ``path`` + .png and + .pdf (appended: ``curves_lr1.0e-3`` keeps its whole name; a path given with
    .png or .pdf loses that suffix first, so ``curves.png`` gives curves.png and curves.pdf); returns both paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".png", ".pdf"):
        path = path.with_suffix("")
    written = []
    for suffix in (".png", ".pdf"):
        target = path.with_name(path.name + suffix)
        figure.savefig(target, bbox_inches="tight", dpi=150)
        written.append(target)
    plt.close(figure)
    return written


def label_order(value: object) -> tuple:
    """Sort key of a legend label: numbers (and text that reads as one: ``"1e-3"``) by value, then text, its
    digit runs compared as numbers (``lru-s2`` before ``lru-s10``), then missing values; never text order
    for numbers (1, 10, 2)."""
    if value is None:
        return (2,)
    number: float | None = None
    if isinstance(value, Real) and not isinstance(value, bool | np.bool_):
        number = float(value)
    else:
        with contextlib.suppress(ValueError):
            number = float(str(value))
    if number is not None:
        return (2,) if math.isnan(number) else (0, number)
    parts = re.split(r"([0-9]+)", str(value))  # text, digits, text, ...: equal positions hold equal types
    return (1, tuple(int(part) if index % 2 else part for index, part in enumerate(parts)))


#: Line styles taken in turn once the colour cycle's 10 colours are used up: (colour, style) pairs stay distinct
#: for 40 lines.
LINE_STYLES = ("-", "--", ":", "-.")


def learning_curves(
    runs: pd.DataFrame, curves: pd.DataFrame, metric: str, split: str = "val", label: str = "run_id"
) -> plt.Figure:
    """One line per run of ``split/metric`` against training step, in the order of their labels (label_order).
    ``runs``: gather(...); ``curves``: gather(..., metrics=True); ``label``: a run column naming each line. A run
    whose values are all NaN or infinite has no line to draw: its legend entry says "(not finite)". The legend
    sits beside the axes.
    Raises ValueError naming the available ones when ``label`` is no run column or no run has ``split/metric``."""
    check_column(runs, label, "label column")
    recorded = curves[(curves["split"] == split) & curves["run_dir"].isin(set(runs["run_dir"]))]
    if metric not in set(recorded["metric"]):
        available = ", ".join(sorted(set(recorded["metric"]))) or "none"
        raise ValueError(f"no {split} metric {metric!r} in the selected runs; available {split} metrics: {available}")
    figure, axis = plt.subplots(figsize=(6, 4))
    selected = recorded[recorded["metric"] == metric]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    order = sorted(range(len(runs)), key=lambda row: label_order(runs[label].iloc[row]))
    for _, run in runs.iloc[order].iterrows():
        points = selected[selected["run_dir"] == run["run_dir"]].sort_values("step")
        if points.empty:
            continue
        name = str(run[label])
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
