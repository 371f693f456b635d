"""System identification on the nonlinear benchmarks (Wiener-Hammerstein, Silverbox, cascaded
tanks, EMPS, Bouc-Wen): test RMSE in each benchmark's units per model, beside each certified
model's L2-gain bound, and the test record simulated by the best model of each benchmark.

Claim tested (Massai et al. 2025, "Free Parametrization of L2-bounded State Space Models", the
system-identification experiments): certified DeepSSMs (l2n, tv, l2ru, lru) fit these systems as
well as unconstrained sequence models while carrying a finite gain certificate. Without the
official files in data_dir/sysid/ the data are simulated (smoke always simulates), so the RMSEs
are then not the benchmarks' published numbers.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.harness import Drawing, Run, run
from ssm_lab.data.sysid.benchmarks import BENCHMARKS
from ssm_lab.results import CONFIG

EXPERIMENT = "sysid"
METRIC = "final.test/rmse"
SWEEPS = {
    "smoke": {"benchmarks": ("silverbox", "wiener_hammerstein"), "models": ("l2n", "tv", "lstm", "s5")},
    "small": {"benchmarks": tuple(BENCHMARKS), "models": ("lru", "l2n", "tv", "l2ru", "lstm", "s5", "mamba")},
    "paper": {"benchmarks": tuple(BENCHMARKS), "models": ("lru", "l2n", "tv", "l2ru", "lstm", "gru", "s5", "mamba")},
}


def needed_runs(scale: str, done: pd.DataFrame) -> list[Run]:
    sweep = SWEEPS[scale]
    return [run(data=benchmark, model=model) for benchmark in sweep["benchmarks"] for model in sweep["models"]]


def best_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed run with the lowest test RMSE of each benchmark."""
    completed = runs[(runs["status"] == "completed") & runs[METRIC].notna()]
    return completed.loc[completed.groupby("choices.data")[METRIC].idxmin()]


def rmse_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model: test RMSE per benchmark (its units in the column name) and the certified
    gain bound per benchmark where the model has one."""
    gains = runs["certified_gain"] if "certified_gain" in runs else pd.Series(np.nan, index=runs.index)
    runs = runs.assign(certified_gain=gains)
    columns = {}
    for benchmark in sorted(runs["choices.data"].unique()):
        rows = runs[runs["choices.data"] == benchmark].groupby("choices.model")
        columns[f"{benchmark} RMSE ({BENCHMARKS[benchmark].units})"] = rows[METRIC].mean()
        columns[f"{benchmark} gain bound"] = rows["certified_gain"].mean()
    table = pd.DataFrame(columns)
    table.index.name = "model"
    return table.dropna(axis=1, how="all").reset_index()


def plot(runs: pd.DataFrame, traces: dict[str, tuple[str, np.ndarray, np.ndarray]]) -> Drawing:
    """Bars of test RMSE per benchmark (one subplot each: units differ), certified models marked with
    their gain bound; ``traces[benchmark] = (model, measured (T,), predicted (T,))`` of the best model."""
    benchmarks = sorted(runs["choices.data"].unique())
    figure, axes = plt.subplots(
        1, len(benchmarks), figsize=(3.2 * len(benchmarks), 3.6), squeeze=False, layout="constrained"
    )
    for axis, benchmark in zip(axes[0], benchmarks, strict=True):
        rows = runs[runs["choices.data"] == benchmark].sort_values("choices.model")
        bars = axis.bar(rows["choices.model"], rows[METRIC], color="tab:blue")
        for bar, gain in zip(bars, rows.get("certified_gain", pd.Series(np.nan, index=rows.index)), strict=True):
            if isinstance(gain, float) and math.isfinite(gain):
                axis.annotate(f"γ≤{gain:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                              va="bottom", fontsize=6)  # fmt: skip
        axis.set_title(benchmark, fontsize=9)
        axis.set_ylabel(f"test RMSE ({BENCHMARKS[benchmark].units})")
        axis.tick_params(axis="x", rotation=45, labelsize=7)
    drawing = Drawing(figures={"rmse": figure}, tables={"table": rmse_table(runs)})
    if traces:
        drawing.figures["predictions"] = prediction_figure(traces)
    return drawing


def prediction_figure(traces: dict[str, tuple[str, np.ndarray, np.ndarray]]) -> plt.Figure:
    figure, axes = plt.subplots(len(traces), 1, figsize=(8, 2.4 * len(traces)), squeeze=False, layout="constrained")
    for axis, (benchmark, (model, measured, predicted)) in zip(axes[:, 0], sorted(traces.items()), strict=True):
        axis.plot(measured, color="black", linewidth=0.8, label="measured")
        axis.plot(predicted, color="tab:orange", linewidth=0.8, alpha=0.8, label=f"{model} (simulated)")
        axis.plot(measured - predicted, color="tab:red", linewidth=0.5, alpha=0.6, label="error")
        warmup = BENCHMARKS[benchmark].warmup
        axis.axvspan(0, warmup, color="grey", alpha=0.2, label=f"warm-up ({warmup} samples, not scored)")
        axis.set_title(f"{benchmark}: test record", fontsize=9)
        axis.set_ylabel(BENCHMARKS[benchmark].units)
        axis.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("sample")
    return figure


def simulate_test_record(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(measured, predicted): the first output of the test record and the run's final model's
    simulation of it, both in the benchmark's units (the model is rebuilt from its last checkpoint)."""
    cfg = OmegaConf.load(f"{run_dir}/{CONFIG}")
    datamodule = instantiate(cfg.data)
    spec = datamodule.spec
    model = instantiate(cfg.model)(spec=spec)
    state = torch.load(f"{run_dir}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(
        {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    )
    model.eval()
    record = datamodule.build_split("test").tensors
    with torch.no_grad():
        predicted = model(record["inputs"])[0]
    scale, offset = torch.tensor(spec.target_scale or (1.0,)), torch.tensor(spec.target_offset or (0.0,))
    return (record["targets"][0] * scale + offset)[:, 0].numpy(), (predicted * scale + offset)[:, 0].numpy()


def draw(runs: pd.DataFrame, curves: pd.DataFrame, scale: str) -> Drawing:
    traces = {}
    for _, best in best_runs(runs).iterrows():
        measured, predicted = simulate_test_record(best["run_dir"])
        traces[best["choices.data"]] = (best["choices.model"], measured, predicted)
    return plot(runs, traces)
