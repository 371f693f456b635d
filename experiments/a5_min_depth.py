"""Figure 2 of Cirone et al. 2024, "Theoretical Foundations of Deep Selective State-Space Models":
the fewest blocks that reach 90% validation accuracy on the A5 word problem, against sequence length.

Claim tested: models with a diagonal or LTI recurrence (S4, Mamba and our lru/l2n/tv) need more
blocks as sequences grow (a fixed depth cannot track a non-solvable group's state at every length),
while a dense input-dependent Linear CDE and a nonlinear RNN need one block at every length.

The sweep grows with the results: depth d + 1 of a (model, length) pair runs only when depth d
finished below 90%, up to the scale's max depth ("> max depth" when none reaches it).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.harness import Drawing, Run, run

EXPERIMENT = "a5_min_depth"
MODELS = ("rnn", "lcde", "s4", "mamba", "transformer", "lru", "l2n", "tv")
THRESHOLD = 0.9
ACCURACY = "best.val/accuracy"
#: Sequence lengths, the deepest model tried and overrides of the scale's budget, per scale (paper:
#: lengths 3-20 as in the paper, with the paper scale's budget). Smoke stops at depth 1 to stay within
#: minutes on 2 CPU cores (the growing sweep is unit-tested). Small keeps two depths (at most 48 runs)
#: and short lengths with 3000 steps at lr 3e-3: with the small scale's 1000 steps at 1e-3 no model
#: learnt anything past the first token even at length 4, while at 3e-3 an LSTM reaches 93% at
#: length 4 in 2000 steps (the paper trains for ~100x longer, so its lengths up to 20 are out of reach).
SWEEPS = {
    "smoke": {"lengths": (3, 5), "max_depth": 1, "budget": {}},
    "small": {"lengths": (3, 5, 8), "max_depth": 2, "budget": {"scale.max_steps": 3000, "scale.lr": 3e-3}},
    "paper": {"lengths": tuple(range(3, 21)), "max_depth": 4, "budget": {}},
}


def needed_runs(scale: str, done: pd.DataFrame) -> list[Run]:
    """Depth 1 of every (model, length); depth d + 1 where depth d finished below the threshold."""
    sweep = SWEEPS[scale]
    runs = []
    for model in MODELS:
        for length in sweep["lengths"]:
            for depth in range(1, sweep["max_depth"] + 1):
                runs.append(run(model=model, **{"model.n_layers": depth, "data.seq_len": length}, **sweep["budget"]))
                accuracy = _accuracy(done, model, length, depth)
                if accuracy is None or accuracy >= THRESHOLD:
                    break  # not run yet, or the minimum depth is found
    return runs


def _accuracy(done: pd.DataFrame, model: str, length: int, depth: int) -> float | None:
    if done.empty:
        return None
    rows = done[(done["choices.model"] == model) & (done["data.seq_len"] == length) & (done["model.n_layers"] == depth)]
    return None if rows.empty else float(rows[ACCURACY].fillna(0.0).max())


def minimum_depths(runs: pd.DataFrame, max_depth: int) -> pd.DataFrame:
    """One row per (model, length): ``min_depth``, the first depth whose best validation accuracy is
    >= 90% (NaN when none is), and ``reached``: "yes", "> max depth" when every depth up to
    ``max_depth`` finished below it, or "unknown" when some depth below it has no run."""
    rows = []
    for (model, length), group in runs.groupby(["choices.model", "data.seq_len"]):
        accuracy = group.groupby("model.n_layers")[ACCURACY].max().fillna(0.0)  # a diverged run learnt nothing
        crossing = accuracy[accuracy >= THRESHOLD]
        if not crossing.empty:
            depth = int(crossing.index.min())
            ran_below = set(range(1, depth)) <= set(accuracy.index)
            rows.append((model, int(length), depth, "yes" if ran_below else "unknown"))
        elif set(range(1, max_depth + 1)) <= set(accuracy.index):
            rows.append((model, int(length), np.nan, f"> {max_depth}"))
        else:
            rows.append((model, int(length), np.nan, "unknown"))
    return pd.DataFrame(rows, columns=["model", "seq_len", "min_depth", "reached"])


def plot(runs: pd.DataFrame, max_depth: int) -> Drawing:
    """Step lines of the minimum depth against length, shaded below each line (the depths that do not
    suffice); pairs that never reach 90% are drawn at max_depth + 1, in the hatched "> max" band."""
    depths = minimum_depths(runs, max_depth)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    above = max_depth + 1
    models = list(dict.fromkeys(depths["model"]))
    for index, model in enumerate(models):
        group = depths[depths["model"] == model].sort_values("seq_len")
        known = group[group["reached"] != "unknown"]
        if known.empty:
            continue  # stays in the table as "?"
        shown = known["min_depth"].fillna(above)
        offset = (index - (len(models) - 1) / 2) * 0.04  # keeps equal lines apart
        line = axis.step(known["seq_len"], shown + offset, where="mid", marker="o", markersize=4, label=model)
        axis.fill_between(known["seq_len"], 0, shown + offset, step="mid", alpha=0.08, color=line[0].get_color())
    axis.axhspan(above - 0.5, above + 0.5, facecolor="none", edgecolor="grey", hatch="//", linewidth=0)
    axis.set_yticks(range(1, above + 1), [*map(str, range(1, above)), f"> {max_depth}"])
    axis.set_ylim(0.5, above + 0.5)
    axis.set_xticks(sorted(depths["seq_len"].unique()))
    axis.set_xlabel("sequence length")
    axis.set_ylabel(f"blocks to reach {THRESHOLD:.0%} val accuracy")
    axis.set_title("A5 word problem: minimum depth vs length")
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(fontsize=7, ncol=2)
    return Drawing(figures={"figure": figure}, tables={"table": depth_table(depths, max_depth)})


def depth_table(depths: pd.DataFrame, max_depth: int) -> pd.DataFrame:
    """One row per model, one column per length: the minimum depth, "> max" or "?" (unknown)."""

    def cell(row: pd.Series) -> str:
        if row["reached"] == "yes":
            return str(int(row["min_depth"]))
        return f"> {max_depth}" if row["reached"] != "unknown" else "?"

    cells = depths.assign(cell=depths.apply(cell, axis=1) if not depths.empty else [])
    table = cells.pivot(index="model", columns="seq_len", values="cell").fillna("?")
    table.columns = [f"L={length}" for length in table.columns]
    return table.reset_index()


def draw(runs: pd.DataFrame, curves: pd.DataFrame, scale: str) -> Drawing:
    return plot(runs, SWEEPS[scale]["max_depth"])
