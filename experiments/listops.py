"""ListOps of the Long Range Arena (Tay et al. 2021, Table 1): test accuracy per model.

Claim tested: SSMs (S4, S5, Mamba and ssm_lab's DeepSSM cores) beat a Transformer and an LSTM on
long nested expressions (LRA reports ~36-37% for Transformers, ~59-62% for S4/S5 at length 2k);
chance is 10%. Without the LRA files in data_dir/listops the expressions are generated (smoke
always generates, with short lengths), so only the paper scale with the LRA data is comparable.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from experiments.harness import Drawing, Run, run

EXPERIMENT = "listops"
CHANCE = 0.1
SWEEPS = {
    "smoke": {"models": ("lru", "l2n", "s4", "transformer"), "seeds": (0,)},
    "small": {"models": ("lru", "l2n", "tv", "s4", "s5", "mamba", "transformer", "lstm"), "seeds": (0,)},
    "paper": {"models": ("lru", "l2n", "tv", "s4", "s5", "mamba", "transformer", "lstm"), "seeds": (0, 1, 2)},
}


def needed_runs(scale: str, done: pd.DataFrame) -> list[Run]:
    sweep = SWEEPS[scale]
    return [run(model=model, seed=seed) for model in sweep["models"] for seed in sweep["seeds"]]


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model: mean and std over seeds of the test accuracy, seeds and parameters."""
    by_model = runs.groupby("choices.model")
    table = pd.DataFrame(
        {
            "test accuracy": by_model["final.test/accuracy"].mean(),
            "std": by_model["final.test/accuracy"].std(),
            "seeds": by_model["seed"].nunique(),
            "parameters": by_model["parameters"].first(),
        }
    )
    table.index.name = "model"
    return table.sort_values("test accuracy", ascending=False).reset_index()


def plot(runs: pd.DataFrame) -> Drawing:
    table = accuracy_table(runs)
    figure, axis = plt.subplots(figsize=(6, 0.4 * len(table) + 1.5))
    axis.barh(table["model"], table["test accuracy"], xerr=table["std"].fillna(0.0), color="tab:blue")
    axis.axvline(CHANCE, color="black", linestyle="--", linewidth=1, label="chance")
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("test accuracy")
    axis.set_title("ListOps")
    axis.legend(fontsize=7)
    return Drawing(figures={"figure": figure}, tables={"table": table})


def draw(runs: pd.DataFrame, curves: pd.DataFrame, scale: str) -> Drawing:
    return plot(runs)
