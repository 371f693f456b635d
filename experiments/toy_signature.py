"""Figure 1 of Cirone et al. 2024, "Theoretical Foundations of Deep Selective State-Space Models":
validation RMSE against training steps when regressing a signature term (S^{12} of 2D paths,
S^{123} of 3D ones), with lines for predicting zero and for a random Linear CDE with a
least-squares readout.

Claim tested: an input-dependent (selective) recurrence such as the Linear CDE or Mamba learns
the term, the third order S^{123} needing depth or a nonlinearity, while LTI models (S4, S5) stay
near the predict-zero line; ssm_lab's DeepSSM cores (lru, l2n, tv) are put beside them.

Every model but the LCDE runs with and without the nonlinearity: the backbone models (S4, S5,
Mamba) with GLU mixing, or a plain Linear and no LayerNorm (model.nonlinear=false, model.norm=none: no
nonlinearity between the cores), the DeepSSM cores with their certified
LGLU or the certified linear static layer (model.ff=Linear, ||W||_2 bounded, no nonlinearity). The
LCDE has no mixing, as in the paper. Smoke runs the DeepSSM core with LGLU only.

As in the paper, the Linear CDEs (trained and random) are driven by the path: they read its
increments (data.inputs=increments), the other models its values.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.harness import Drawing, Run, run
from ssm_lab.results import CONFIG

EXPERIMENT = "toy_signature"
RANDOM_FEATURES = "lcde_random_ols"  # a horizontal line: nothing to learn over steps
LCDE = "lcde"  # no mixing layer, as in the paper: one variant per depth
METRIC = "rmse"
CONTROL = {"data.inputs": "increments"}  # what the Linear CDEs read: dX, the control they integrate
DEEP_SSM_FF = ("LGLU", "Linear")  # with and without the nonlinearity, both certified
#: backbone: models swept over model.nonlinear; deep_ssm: DeepSSM cores swept over deep_ssm_ff
#: (model.ff). Smoke keeps one model of each kind, the DeepSSM core with LGLU only, to stay within
#: minutes on 2 CPU cores.
SWEEPS = {
    "smoke": {"dims": (2, 3), "depths": (1,), "backbone": ("mamba",), "deep_ssm": ("l2n",), "deep_ssm_ff": ("LGLU",)},
    "small": {"dims": (2, 3), "depths": (1, 2), "backbone": ("s4", "s5", "mamba"), "deep_ssm": ("lru", "l2n", "tv"),
              "deep_ssm_ff": DEEP_SSM_FF},
    "paper": {"dims": (2, 3), "depths": (1, 2), "backbone": ("s4", "s5", "mamba"), "deep_ssm": ("lru", "l2n", "tv"),
              "deep_ssm_ff": DEEP_SSM_FF},
}  # fmt: skip


def needed_runs(scale: str, done: pd.DataFrame) -> list[Run]:
    sweep = SWEEPS[scale]
    runs = []
    for dim in sweep["dims"]:
        data = {"data.dim": dim}
        for depth in sweep["depths"]:
            for model in sweep["backbone"]:
                linear = {"model.nonlinear": False, "model.norm": "none"}  # a LayerNorm is a nonlinearity too
                runs += [
                    run(model=model, **data, **{"model.n_layers": depth, "model.nonlinear": True}),
                    run(model=model, **data, **{"model.n_layers": depth, **linear}),
                ]
            runs.append(run(model=LCDE, **data, **CONTROL, **{"model.n_layers": depth}))
            runs += [
                run(model=model, **data, **{"model.n_layers": depth, "model.ff": ff})
                for model in sweep["deep_ssm"]
                for ff in sweep["deep_ssm_ff"]
            ]
        runs.append(run(model=RANDOM_FEATURES, **data, **CONTROL))
    return runs


def variant(row: pd.Series) -> str:
    """ "mamba x2 (glu)", "l2n x2 (LGLU)": model, depth and the layer after each core (its static
    layer; "linear" when there is no nonlinearity: model.nonlinear=false or a DeepSSM's ff=Linear;
    "no mixing" for the LCDE)."""
    nonlinear = row.get("model.nonlinear")  # NaN for a DeepSSM, which has no such key
    if isinstance(row.get("model.ff"), str):  # a DeepSSM
        kind = "linear" if row["model.ff"] == "Linear" else row["model.ff"]
    elif row.get("model.mixing") == "none":
        kind = "no mixing"
    elif pd.notna(nonlinear) and not bool(nonlinear):
        kind = "linear"
    else:
        kind = str(row.get("model.mixing"))
    return f"{row['choices.model']} x{int(row['model.n_layers'])} ({kind})"


def plot(runs: pd.DataFrame, curves: pd.DataFrame, zero_rmse: dict[int, float]) -> Drawing:
    """One subplot per path dimension: val RMSE vs step per variant; dashed: predict zero
    (``zero_rmse[dim]``), dotted: the random Linear CDE + least squares (its final val RMSE)."""
    runs = runs.assign(variant=runs.apply(variant, axis=1))
    dims = sorted(int(d) for d in runs["data.dim"].unique())
    figure, axes = plt.subplots(
        1, len(dims), figsize=(6 * len(dims), 4.5), squeeze=False, sharey=True, layout="constrained"
    )
    selected = curves[(curves["split"] == "val") & (curves["metric"] == METRIC)]
    trained = runs[runs["choices.model"] != RANDOM_FEATURES]
    for axis, dim in zip(axes[0], dims, strict=True):
        for _, row in trained[trained["data.dim"] == dim].sort_values("variant").iterrows():
            points = selected[selected["run_dir"] == row["run_dir"]].sort_values("step")
            dashed = row["variant"].endswith(("(linear)", "(no mixing)"))
            axis.plot(points["step"], points["value"], linestyle="--" if dashed else "-", label=row["variant"])
        if dim in zero_rmse:
            axis.axhline(zero_rmse[dim], color="black", linestyle="--", linewidth=1, label="predict zero")
        for value in runs[(runs["choices.model"] == RANDOM_FEATURES) & (runs["data.dim"] == dim)][
            f"final.val/{METRIC}"
        ]:
            axis.axhline(value, color="grey", linestyle=":", linewidth=1.5, label="random LCDE + least squares")
        axis.set_title(f"{dim}D paths: S^{{{''.join(str(i + 1) for i in range(dim))}}}")
        axis.set_xlabel("training step")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation RMSE")
    if axes[0][-1].lines:
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    return Drawing(figures={"figure": figure}, tables={"table": rmse_table(runs, zero_rmse)})


def rmse_table(runs: pd.DataFrame, zero_rmse: dict[int, float]) -> pd.DataFrame:
    """One row per variant (and the predict-zero baseline), one final val RMSE column per dimension."""
    table = runs.pivot_table(index="variant", columns="data.dim", values=f"final.val/{METRIC}", aggfunc="mean")
    if zero_rmse:
        table.loc["predict zero"] = pd.Series(zero_rmse)
    table.columns = [f"val RMSE {int(dim)}D" for dim in table.columns]
    return table.reset_index()


def predict_zero_rmse(run_dir: str) -> float:
    """RMSE of always predicting 0 on the run's validation set, in the targets' units."""
    cfg = OmegaConf.load(f"{run_dir}/{CONFIG}")
    datamodule = instantiate(cfg.data)
    targets = datamodule.build_split("val").tensors["targets"]
    spec = datamodule.spec
    if spec.target_scale:
        targets = targets * torch.tensor(spec.target_scale) + torch.tensor(spec.target_offset)
    return math.sqrt(float(targets.double().pow(2).mean()))


def draw(runs: pd.DataFrame, curves: pd.DataFrame, scale: str) -> Drawing:
    zero_rmse = {int(dim): predict_zero_rmse(group["run_dir"].iloc[0]) for dim, group in runs.groupby("data.dim")}
    return plot(runs, curves, zero_rmse)
