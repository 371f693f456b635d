"""experiments/: each figure's plot() on synthetic run tables, the min-depth logic, the growing
A5 sweep, the exact multirun cover of missing runs, missing runs named on the figure, and one
end-to-end `make figures SCALE=smoke` (a5_min_depth, shrunk) on a fresh results dir."""

from __future__ import annotations

import itertools
import math
import re
import shutil
from dataclasses import replace
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from omegaconf import OmegaConf

from experiments import a5_min_depth, listops, robustness, sysid, toy_signature
from experiments.__main__ import main
from experiments.harness import (
    Drawing,
    Run,
    Session,
    cartesian_blocks,
    make_figure,
    markdown_table,
    run,
    save_drawing,
    variant,
)
from ssm_lab.config import compose_config
from ssm_lab.data.sysid.benchmarks import BENCHMARKS
from ssm_lab.results import CONFIG, write_summary
from ssm_lab.results import run_dir as run_dir_of


def a5_runs(results: dict[tuple[str, int, int], float]) -> pd.DataFrame:
    """A gather-like table: best val accuracy per (model, length, depth)."""
    rows = [
        {"run_dir": f"r{i}", "choices.model": m, "data.seq_len": length, "model.n_layers": d, "best.val/accuracy": a}
        for i, ((m, length, d), a) in enumerate(results.items())
    ]
    return pd.DataFrame(rows)


def test_min_depth_is_the_first_depth_crossing_90_percent_or_beyond_max():
    runs = a5_runs(
        {
            ("lcde", 3, 1): 0.99,  # crosses at once
            ("mamba", 3, 1): 0.5, ("mamba", 3, 2): 0.91, ("mamba", 3, 3): 0.95,  # first crossing is 2
            ("s4", 3, 1): 0.3, ("s4", 3, 2): 0.899, ("s4", 3, 3): 0.89,  # never: "> 3"
            ("rnn", 3, 1): float("nan"), ("rnn", 3, 2): 0.9,  # a diverged run learnt nothing; 0.9 counts
            ("tv", 3, 2): 0.97,  # depth 1 never ran: the minimum is unknown
            ("lru", 3, 1): 0.2,  # stopped below max depth: unknown
        }
    )  # fmt: skip
    depths = a5_min_depth.minimum_depths(runs, max_depth=3).set_index("model")
    assert depths.loc["lcde", "min_depth"] == 1 and depths.loc["lcde", "reached"] == "yes"
    assert depths.loc["mamba", "min_depth"] == 2
    assert math.isnan(depths.loc["s4", "min_depth"]) and depths.loc["s4", "reached"] == "> 3"
    assert depths.loc["rnn", "min_depth"] == 2
    assert depths.loc["tv", "reached"] == "unknown" and depths.loc["lru", "reached"] == "unknown"

    drawing = a5_min_depth.plot(runs, max_depth=3)
    table = drawing.tables["table"].set_index("model")
    assert table["L=3"].to_dict() == {"lcde": "1", "mamba": "2", "s4": "> 3", "rnn": "2", "tv": "?", "lru": "?"}
    axis = drawing.figures["figure"].axes[0]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["1", "2", "3", "> 3"]
    assert len(axis.lines) == 4  # the two unknown pairs are not drawn as if known


def test_a5_sweep_goes_deeper_only_where_the_shallower_model_failed():
    sweep = a5_min_depth.SWEEPS["small"]
    first = a5_min_depth.needed_runs("small", pd.DataFrame(columns=["run_dir"]))
    assert len(first) == len(a5_min_depth.MODELS) * len(sweep["lengths"])
    assert {r.settings["model.n_layers"] for r in first} == {"1"}
    assert all(r.settings["scale.max_steps"] == "3000" and r.settings["scale.lr"] == "0.003" for r in first)

    failing = {(m, n, 1): 0.95 if m == "lcde" else 0.1 for m in a5_min_depth.MODELS for n in sweep["lengths"]}
    second = a5_min_depth.needed_runs("small", a5_runs(failing))
    deeper = [r for r in second if r.settings["model.n_layers"] == "2"]
    assert len(deeper) == (len(a5_min_depth.MODELS) - 1) * len(sweep["lengths"])
    assert all(r.model != "lcde" for r in deeper)

    everything_fails = {(m, n, d): 0.1 for m in a5_min_depth.MODELS for n in sweep["lengths"] for d in range(1, 10)}
    last = a5_min_depth.needed_runs("small", a5_runs(everything_fails))
    assert max(int(r.settings["model.n_layers"]) for r in last) == sweep["max_depth"]


def toy_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, curves = [], []
    variants = [("mamba", 1, "glu", True), ("mamba", 1, "glu", False), ("lcde", 1, "none", True)]
    for index, (dim, (model, depth, mixing, nonlinear)) in enumerate(itertools.product((2, 3), variants)):
        config = {"choices.model": model, "data.dim": dim, "model.n_layers": depth, "model.mixing": mixing}
        rows.append(
            {"run_dir": f"r{index}", **config, "model.nonlinear": nonlinear, "final.val/rmse": 0.1 * (index + 1)}
        )
        curves += [
            {"run_dir": f"r{index}", "step": s, "split": "val", "metric": "rmse", "value": 1.0 / s} for s in (20, 40)
        ]
    for dim, ff in itertools.product((2, 3), ("LGLU", "Linear")):
        rows.append({"run_dir": f"l2n{dim}{ff}", "choices.model": "l2n", "data.dim": dim, "model.n_layers": 2,
                     "model.ff": ff, "final.val/rmse": 0.05})  # fmt: skip
        curves += [{"run_dir": f"l2n{dim}{ff}", "step": s, "split": "val", "metric": "rmse", "value": 0.5 / s}
                   for s in (20, 40)]  # fmt: skip
        rows.append({"run_dir": f"rf{dim}", "choices.model": "lcde_random_ols", "data.dim": dim, "model.n_layers": 1,
                     "model.mixing": "none", "model.nonlinear": True, "final.val/rmse": 0.3})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(curves)


def test_toy_signature_plot_draws_curves_per_dimension_with_baselines():
    runs, curves = toy_tables()
    drawing = toy_signature.plot(runs, curves, zero_rmse={2: 0.4, 3: 0.2})
    axes = drawing.figures["figure"].axes
    assert len(axes) == 2
    labels = [line.get_label() for line in axes[0].lines]
    assert "mamba x1 (glu)" in labels and "mamba x1 (linear)" in labels and "lcde x1 (no mixing)" in labels
    assert "l2n x2 (LGLU)" in labels and "l2n x2 (linear)" in labels
    styles = {line.get_label(): line.get_linestyle() for line in axes[0].lines}
    assert styles["l2n x2 (linear)"] == styles["mamba x1 (linear)"] == "--" and styles["l2n x2 (LGLU)"] == "-"
    assert "predict zero" in labels and "random LCDE + least squares" in labels
    zero = next(line for line in axes[1].lines if line.get_label() == "predict zero")
    assert zero.get_ydata()[0] == 0.2
    table = drawing.tables["table"].set_index("variant")
    assert table.loc["predict zero", "val RMSE 2D"] == 0.4
    assert table.loc["lcde_random_ols x1 (no mixing)", "val RMSE 3D"] == pytest.approx(0.3)
    assert len(table) == 7  # 3 variants, l2n with and without the nonlinearity, the random features, predict zero
    assert table.loc["l2n x2 (linear)", "val RMSE 3D"] == pytest.approx(0.05)


def test_toy_signature_sweeps_deep_ssm_cores_with_and_without_the_nonlinearity():
    empty = pd.DataFrame(columns=["run_dir"])
    for scale in ("small", "paper"):
        sweep = toy_signature.SWEEPS[scale]
        deep = [r for r in toy_signature.needed_runs(scale, empty) if "model.ff" in r.settings]
        assert {(r.model, r.settings["model.ff"]) for r in deep} == {
            (model, ff) for model in sweep["deep_ssm"] for ff in ("LGLU", "Linear")
        }
        grid = {(r.model, r.settings["model.ff"], r.settings["data.dim"], r.settings["model.n_layers"]) for r in deep}
        assert len(grid) == len(deep) == len(sweep["deep_ssm"]) * 2 * len(sweep["dims"]) * len(sweep["depths"])
        assert {r.settings["model.n_layers"] for r in deep} == {"1", "2"}
    smoke = [r for r in toy_signature.needed_runs("smoke", empty) if "model.ff" in r.settings]
    assert {(r.model, r.settings["model.ff"]) for r in smoke} == {("l2n", "LGLU")}  # one model of each kind


def test_toy_signature_drives_only_the_linear_cdes_by_increments():
    runs = toy_signature.needed_runs("small", pd.DataFrame(columns=["run_dir"]))
    by_increments = {r.model for r in runs if r.settings.get("data.inputs") == "increments"}
    assert by_increments == {"lcde", "lcde_random_ols"}


def sysid_runs() -> pd.DataFrame:
    rows = []
    for i, (benchmark, model) in enumerate(itertools.product(("silverbox", "emps"), ("l2n", "lstm"))):
        rows.append({"run_dir": f"r{i}", "choices.data": benchmark, "choices.model": model, "status": "completed",
                     "final.test/rmse": 1.0 + i, "certified_gain": 3.0 if model == "l2n" else np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def test_sysid_table_has_a_row_per_model_with_units_and_gains():
    runs = sysid_runs()
    assert list(sysid.best_runs(runs)["choices.model"]) == ["l2n", "l2n"]
    traces = {"silverbox": ("l2n", np.sin(np.arange(50.0)), np.sin(np.arange(50.0)) + 0.1)}
    drawing = sysid.plot(runs, traces)
    table = drawing.tables["table"].set_index("model")
    assert list(table.index) == ["l2n", "lstm"]
    assert table.loc["lstm", "emps RMSE (mm)"] == 4.0 and table.loc["l2n", "silverbox RMSE (mV)"] == 1.0
    assert table.loc["l2n", "emps gain bound"] == 3.0 and math.isnan(table.loc["lstm", "emps gain bound"])
    assert set(drawing.figures) == {"rmse", "predictions"}
    assert len(drawing.figures["predictions"].axes[0].lines) == 3  # measured, simulated, error


def test_sysid_simulation_from_the_checkpoint_reproduces_the_recorded_test_rmse(train, make_config):
    overrides = ("experiment=sysid", "model=lstm")
    summary = train(*overrides)
    run_dir = run_dir_of(make_config(*overrides))
    measured, predicted = sysid.simulate_test_record(str(run_dir))
    warmup = BENCHMARKS["silverbox"].warmup
    rmse = float(np.sqrt(np.mean((measured[warmup:] - predicted[warmup:]) ** 2)))
    assert rmse == pytest.approx(summary["final"]["test/rmse"], rel=1e-4)


def test_listops_table_averages_seeds_per_model():
    table = listops.plot(listops_runs()).tables["table"]
    assert list(table["model"]) == ["s4", "transformer"]
    assert table["test accuracy"].tolist() == pytest.approx([0.6, 0.3])
    assert table["seeds"].tolist() == [2, 1]


def test_robustness_flags_whether_each_bound_held():
    drawing = robustness.plot(robustness_runs())
    table = drawing.tables["table"]
    assert table["bound holds"].tolist() == [True, True, False]
    assert len(drawing.figures["figure"].axes) == 2


def product(block: dict[str, list[str]]) -> set[tuple[tuple[str, str], ...]]:
    return {tuple(zip(block, values, strict=True)) for values in itertools.product(*block.values())}


def test_missing_runs_are_covered_exactly_by_multirun_blocks():
    grid = [run(model=m, **{"data.seq_len": n}) for m in ("lru", "rnn", "s4") for n in (3, 5)]
    assert cartesian_blocks(grid) == [{"model": ["lru", "rnn", "s4"], "data.seq_len": ["3", "5"]}]
    holes = [r for r in grid if str(r) != "model=s4 data.seq_len=5"] + [run(model="tv", **{"model.gamma": 1.0})]
    blocks = cartesian_blocks(holes)
    covered = [key for block in blocks for key in product(block)]
    assert len(covered) == len(set(covered)) == len(holes)  # every run launched once, nothing more
    assert set(covered) == {tuple(r.settings.items()) for r in holes}


def write_record(session: Session, experiment: str, needed: Run, summary: dict) -> None:
    """A finished run record as train.run writes it, without training (for the harness alone)."""
    path = session.run_path(experiment, needed)
    path.mkdir(parents=True)
    cfg = compose_config((*session.base_overrides(experiment), *needed.overrides))
    (path / CONFIG).write_text(OmegaConf.to_yaml(cfg))
    write_summary(path, {"status": "completed", "seed": 0, **summary})


def test_hydra_overrides_reach_the_multirun_but_not_the_run_identity(tmp_path):
    """`--set hydra.launcher.n_jobs=12` sizes the joblib pool; the runs it launches are the ones the
    harness looks for (same run_dir as without it), while `--set seed=1` makes other runs."""
    folders = {"results_dir": tmp_path / "results", "data_dir": tmp_path / "data"}
    plain = Session("small", **folders, launcher="joblib", extra=("seed=1",))
    sized = Session("small", **folders, launcher="joblib", extra=("seed=1", "hydra.launcher.n_jobs=12"))
    needed = run(model="lru", **{"model.n_layers": 2, "data.seq_len": 12})
    assert sized.base_overrides("a5_min_depth") == plain.base_overrides("a5_min_depth")
    assert sized.launch_overrides() == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=12"]
    expected = sized.run_path("a5_min_depth", needed)
    assert expected == plain.run_path("a5_min_depth", needed)
    # what a job of the multirun composes: the launch overrides included, the same run folder
    launched = compose_config((*sized.base_overrides("a5_min_depth"), *needed.overrides, *sized.launch_overrides()))
    assert run_dir_of(launched) == expected
    other_seed = Session("small", **folders, launcher="joblib", extra=("seed=2", "hydra.launcher.n_jobs=12"))
    assert other_seed.run_path("a5_min_depth", needed) != expected


def test_missing_runs_are_named_and_the_figure_marked_incomplete(tmp_path):
    lines: list[str] = []
    session = Session("smoke", tmp_path / "results", tmp_path / "data", models=("lru",), launch=False, log=lines.append)
    first = run(model="lru", **{"model.n_layers": 1, "data.seq_len": 3})
    write_record(session, "a5_min_depth", first, {"best": {"val/accuracy": 0.95}})

    written, missing = make_figure(a5_min_depth, session)

    assert [str(r) for r in missing] == ["model=lru model.n_layers=1 data.seq_len=5"]
    figures, name = tmp_path / "results" / "figures" / "smoke", "a5_min_depth--models-lru"  # a subset of the models
    assert (figures / f"{name}.missing.txt").read_text() == "missing: model=lru model.n_layers=1 data.seq_len=5\n"
    assert any("missing run: model=lru model.n_layers=1 data.seq_len=5" in line for line in lines)
    assert {p.name for p in written} >= {f"{name}_figure.png", f"{name}_figure.pdf", f"{name}_table.csv"}
    table = pd.read_csv(figures / f"{name}_table.csv", dtype=str).set_index("model")
    assert table.loc["lru", "L=3"] == "1"


def test_models_without_a_config_are_reported_not_dropped(tmp_path):
    lines: list[str] = []
    figure = SimpleNamespace(
        __name__="experiments.fake", EXPERIMENT="a5_min_depth", draw=None,
        needed_runs=lambda scale, done: [run(model="no_such_model")],
    )  # fmt: skip
    session = Session("smoke", tmp_path / "results", tmp_path / "data", launch=False, log=lines.append)
    written, missing = make_figure(figure, session)
    assert missing == []
    assert "skipped model 'no_such_model': no configs/model/no_such_model.yaml" in " ".join(lines)
    note = tmp_path / "results" / "figures" / "smoke" / "fake.missing.txt"
    assert written == [note] and "unavailable model (no config): model=no_such_model" in note.read_text()


def test_drawings_of_two_scales_never_replace_each_other_and_models_must_exist(tmp_path):
    record_listops(Session("smoke", tmp_path / "results", tmp_path / "data", launch=False, log=print))
    for scale in ("smoke", "paper"):
        make_figure(listops, Session(scale, tmp_path / "results", tmp_path / "data", launch=False))
    smoke, paper = (tmp_path / "results" / "figures" / scale for scale in ("smoke", "paper"))
    assert "listops_figure.png" in {p.name for p in smoke.iterdir()}  # complete at smoke
    assert {p.name for p in paper.iterdir()} == {"listops.missing.txt"}  # no paper run: nothing drawn over it
    with pytest.raises(ValueError, match="unknown model 'modle'; choose one of gru, ids4"):
        Session("smoke", tmp_path / "results", tmp_path / "data", models=("lru", "modle"))
    with pytest.raises(ValueError, match=r"--set hydra.launcher.n_jobs=2: the basic launcher .* has no options"):
        Session("smoke", tmp_path / "results", tmp_path / "data", extra=("hydra.launcher.n_jobs=2",))
    Session("smoke", tmp_path / "results", tmp_path / "data", launcher="joblib", extra=("hydra.launcher.n_jobs=2",))
    lines: list[str] = []  # a model of another figure: said, and a figure with none of them is not drawn
    for models, drawn in ((("lru", "tv"), ["listops--models-lru_figure.png"]), (("tv",), [])):
        folders = (tmp_path / "results", tmp_path / "data")
        session = Session("smoke", *folders, launch=False, models=models, log=lines.append)
        written, missing = make_figure(listops, session)
        assert "[figures] listops: has no model tv (its models: l2n, lru, s4, transformer)" in lines
        assert [path.name for path in written if path.suffix == ".png"] == drawn


def record_listops(session: Session) -> None:
    """A finished record of every run the smoke ListOps figure needs under ``session``."""
    for index, needed in enumerate(listops.needed_runs("smoke", pd.DataFrame(columns=["run_dir"]))):
        write_record(session, "listops", needed, {"final": {"test/accuracy": 0.2 + 0.1 * index}, "parameters": 100})


def test_a_redraw_without_finished_runs_leaves_no_earlier_figure_or_table(tmp_path):
    """A complete ListOps drawing, then its runs gone: the earlier figure and table must not stay on disk
    looking like the result of runs that are all missing."""
    lines: list[str] = []
    session = Session("smoke", tmp_path / "results", tmp_path / "data", launch=False, log=lines.append)
    record_listops(session)
    written, missing = make_figure(listops, session)
    figures = tmp_path / "results" / "figures" / "smoke"
    drawn = {"listops_figure.png", "listops_figure.pdf", "listops_table.csv", "listops_table.md", "listops.runs.txt"}
    assert missing == [] and {p.name for p in written} == {p.name for p in figures.iterdir()} == drawn
    runs = sorted(p.relative_to(tmp_path / "results") for p in (tmp_path / "results" / "runs" / "listops").iterdir())
    assert (figures / "listops.runs.txt").read_text().splitlines() == [f"../../{run}" for run in runs]

    shutil.rmtree(tmp_path / "results" / "runs")
    written, missing = make_figure(listops, session)
    assert len(missing) == 4 and [p.name for p in written] == ["listops.missing.txt"]
    assert {p.name for p in figures.iterdir()} == {"listops.missing.txt"}
    assert f"[figures] removed {figures / 'listops_figure.png'}: not part of this drawing" in lines


def test_a_drawing_removes_the_figures_drawings_whose_runs_are_gone_and_keeps_the_others(tmp_path):
    """lru's run deleted, the default drawing redrawn: the lru-only variant showed lru's accuracy from a run
    no longer recorded, unmarked. It goes; the s4-only variant, whose run is still recorded, stays as it was,
    as do a drawing of another scale and one with no record of its runs."""
    lines: list[str] = []
    session = Session("smoke", tmp_path / "results", tmp_path / "data", launch=False, log=lines.append)
    record_listops(session)
    for models in (None, ("lru",), ("s4",)):
        make_figure(listops, replace(session, models=models))
    figures = tmp_path / "results" / "figures" / "smoke"
    (figures / "listops--models-l2n_figure.png").write_text("drawn before drawings named their runs")
    paper = tmp_path / "results" / "figures" / "paper"
    paper.mkdir()
    for path in figures.glob("listops--models-lru*"):  # as if drawn at the paper scale
        shutil.copy(path, paper)
    s4_variant = {p.name: p.read_bytes() for p in figures.glob("listops--models-s4*")}
    lru_variant = list(figures.glob("listops--models-lru*"))
    assert {p.suffix for p in lru_variant} >= {".png", ".pdf", ".csv", ".md"} and len(s4_variant) == len(lru_variant)

    (lru_run,) = (tmp_path / "results" / "runs" / "listops").glob("lru-*")
    shutil.rmtree(lru_run)
    written, missing = make_figure(listops, session)

    assert [r.model for r in missing] == ["lru"] and (figures / "listops.missing.txt").exists()
    assert not list(figures.glob("listops--models-lru*"))
    assert {p.name: p.read_bytes() for p in figures.glob("listops--models-s4*")} == s4_variant
    assert (figures / "listops--models-l2n_figure.png").exists()
    assert {p.name for p in paper.iterdir()} == {p.name for p in lru_variant}
    why = f"drawn from ../../runs/listops/{lru_run.name}, no longer recorded"
    assert f"[figures] removed {figures / 'listops--models-lru_figure.png'}: {why}" in lines

    make_figure(listops, replace(session, models=("s4",)))  # a variant's drawing judges the default one too
    assert {p.name for p in figures.glob("listops*")} >= set(s4_variant) and (figures / "listops_table.csv").exists()
    shutil.rmtree(tmp_path / "results" / "runs")
    make_figure(listops, replace(session, models=("l2n",)))
    assert {p.name for p in figures.iterdir()} == {"listops--models-l2n.missing.txt"}


def test_save_drawing_removes_only_its_own_earlier_files(tmp_path):
    """A figure the drawing no longer has (sysid without its predictions) goes; other figures' and variants'
    files stay, a figure named listops_long included."""
    kept = ["listops--models-lru_figure.png", "listops--models-lru.runs.txt", "listops_long_figure.png",
            "listops_long_table.csv", "sysid_rmse.pdf"]  # fmt: skip
    for name in [*kept, "listops_predictions.png", "listops_predictions.pdf", "listops.runs.txt"]:
        (tmp_path / name).write_text("earlier")
    figure, _ = plt.subplots()
    written, removed = save_drawing(Drawing(figures={"figure": figure}), "listops", tmp_path)
    assert [p.name for p in removed] == ["listops.runs.txt", "listops_predictions.pdf", "listops_predictions.png"]
    assert {p.name for p in tmp_path.iterdir()} == {*kept, "listops_figure.png", "listops_figure.pdf"}
    with pytest.raises(ValueError, match="drawing key 'long_figure' must be one word of letters and digits"):
        save_drawing(Drawing(figures={"long_figure": figure}), "listops", tmp_path)


def test_variants_are_saved_beside_the_default_drawing_never_over_it(tmp_path):
    """--models lru,s4 rewrote listops_figure.png with 2 of 4 models, unmarked; --set overrides (here
    scale.lr=1e12, optim.optimizer.weight_decay=0.0) overwrote it too. Each variant has its own files, which
    say what it is; the default drawing stays as it was."""
    session = Session("smoke", tmp_path / "results", tmp_path / "data", launch=False, log=lambda line: None)
    record_listops(session)
    make_figure(listops, session)
    figures = tmp_path / "results" / "figures" / "smoke"
    default = {p.name: p.read_bytes() for p in figures.iterdir()}

    written, missing = make_figure(listops, replace(session, models=("lru", "s4")))
    name = "listops--models-lru-s4"
    files = {f"{name}_figure.png", f"{name}_figure.pdf", f"{name}_table.csv", f"{name}_table.md", f"{name}.runs.txt"}
    assert missing == [] and {p.name for p in written} == files
    markdown = (figures / f"{name}_table.md").read_text()
    assert markdown.startswith("models lru, s4 only (of l2n, lru, s4, transformer)\n\n| model |")

    weight_decay = replace(
        session, launcher="joblib", extra=("optim.optimizer.weight_decay=0.0", "hydra.launcher.n_jobs=2")
    )
    written, missing = make_figure(listops, weight_decay)
    assert len(missing) == 4 and len(written) == 1
    assert re.fullmatch(r"listops--set-weight_decay=0\.0-[0-9a-f]{6}\.missing\.txt", written[0].name)

    written, missing = make_figure(listops, replace(session, models=("lru",), extra=("scale.lr=1e12",)))
    assert re.fullmatch(r"listops--models-lru--set-lr=1e12-[0-9a-f]{6}\.missing\.txt", written[0].name)
    assert {name: (figures / name).read_bytes() for name in default} == default


def test_variant_names_ignore_launch_settings_and_override_order(tmp_path):
    def tag(*extra: str, models: tuple[str, ...] | None = None) -> str:
        return variant(listops, Session("smoke", tmp_path, tmp_path, "joblib", extra=extra, models=models))[0]

    every_model = ("lru", "l2n", "s4", "transformer", "rnn")  # rnn: not a model of this figure
    assert tag() == tag("hydra.launcher.n_jobs=12") == tag(models=every_model) == ""
    assert tag("seed=1", "trainer=gpu") == tag("trainer=gpu", "seed=1")
    assert re.fullmatch(r"--set-seed=1\+trainer=gpu-[0-9a-f]{6}", tag("seed=1", "trainer=gpu"))
    assert tag("model.dt_min=0.01") != tag("optim.dt_min=0.01")  # the same last key part: the hash tells them apart
    assert re.fullmatch(r"--set-lengths=_3_5_-[0-9a-f]{6}", tag("data.lengths=[3,5]"))
    assert len(tag(*(f"model.key{index}=value{index}" for index in range(10)))) == len("--set-") + 40 + 7
    assert variant(listops, Session("smoke", tmp_path, tmp_path, models=("tv",)))[1] == [
        "models none only (of l2n, lru, s4, transformer)"
    ]


def listops_runs() -> pd.DataFrame:
    return pd.DataFrame(
        {"choices.model": ["s4", "s4", "transformer"], "seed": [0, 1, 0], "parameters": [10, 10, 20],
         "final.test/accuracy": [0.5, 0.7, 0.3]}
    )  # fmt: skip


def robustness_runs() -> pd.DataFrame:
    return pd.DataFrame(
        {"choices.model": ["l2n", "l2n", "tv"], "model.gamma": [np.nan, 1.0, 1.0],
         "certified_gain": [5.0, 1.0, 1.0], "empirical_gain": [2.0, 0.5, 1.5], "final.test/rmse": [0.1, 0.3, 0.2]}
    )  # fmt: skip


@pytest.mark.parametrize("module", [listops, robustness])  # a figure without and one with a layout engine
def test_incomplete_and_variant_stamps_overlap_nothing_drawn(tmp_path, module):
    """The INCOMPLETE stamp sat at the figure's bottom-left corner, over the x-axis label under
    bbox_inches="tight"; the stamps now sit above everything drawn."""
    runs = {listops: listops_runs, robustness: robustness_runs}[module]()
    drawing = module.plot(runs)
    drawing.missing, drawing.notes = ["missing: model=lru seed=0"], ["--set seed=1"]
    figure = drawing.figures["figure"]
    save_drawing(drawing, module.EXPERIMENT, tmp_path)
    renderer = FigureCanvasAgg(figure).get_renderer()  # the saved figure is closed: a canvas to measure on
    figure.draw(renderer)
    stamps = [text.get_window_extent(renderer) for text in figure.texts]
    drawn = [axis.get_tightbbox(renderer) for axis in figure.axes]  # titles, tick labels, axis labels, legends
    assert stamps and not any(stamp.overlaps(box) for stamp in stamps for box in drawn)
    assert [text.get_text() for text in figure.texts] == [
        "--set seed=1",
        f"INCOMPLETE: 1 run missing, listed in {module.EXPERIMENT}.missing.txt",
    ]
    assert stamps[0].y0 >= max(box.y1 for box in drawn) and stamps[1].y0 >= stamps[0].y1


def test_tables_of_an_incomplete_drawing_say_so(tmp_path):
    """Only the figures were stamped: the CSV and Markdown tables of a drawing with missing runs looked complete."""
    drawing = listops.plot(listops_runs())
    drawing.missing = ["missing: model=lru seed=0", "missing: model=l2n seed=0"]
    save_drawing(drawing, "listops", tmp_path)
    stamp = "INCOMPLETE: 2 runs missing, listed in listops.missing.txt"
    table = pd.read_csv(tmp_path / "listops_table.csv")  # still one machine-readable table
    assert list(table.columns) == [*drawing.tables["table"].columns, "incomplete"]
    assert table["incomplete"].eq(stamp).all() and len(table) == 2
    assert (tmp_path / "listops_table.md").read_text().startswith(f"**{stamp}**\n\n| model |")

    save_drawing(listops.plot(listops_runs()), "listops", tmp_path)  # complete: no mark
    assert "incomplete" not in pd.read_csv(tmp_path / "listops_table.csv").columns
    assert (tmp_path / "listops_table.md").read_text().startswith("| model |")


@pytest.mark.parametrize(
    ("key", "value", "allowed"), [("scale", "huge", "smoke, small, paper"), ("launcher", "slurmm", "slurm")]
)
def test_bad_scale_or_launcher_names_the_allowed_ones(tmp_path, key, value, allowed):
    settings = {"scale": "smoke", "launcher": "basic", key: value}
    with pytest.raises(ValueError, match=f"unknown {key} '{value}'; choose one of .*{allowed}"):
        Session(settings["scale"], tmp_path, tmp_path, launcher=settings["launcher"])


@pytest.mark.parametrize(
    ("override", "option"), [("results_dir=/elsewhere", "--results-dir"), ("scale=paper", "--scale"),
                             ("+data_dir=x", "--data-dir"), ("experiment=sysid", "--figure")]
)  # fmt: skip
def test_overrides_the_session_sets_itself_point_to_its_options(tmp_path, override, option):
    """--set results_dir=... would record the runs where the figure never looks for them."""
    with pytest.raises(ValueError, match=f"--set {re.escape(override)}: .* set it with {option}"):
        Session("smoke", tmp_path, tmp_path, extra=(override,))


def test_markdown_table_escapes_and_formats():
    table = pd.DataFrame({"model": ["a|b"], "rmse": [0.123456], "gain": [np.nan]})
    assert markdown_table(table).splitlines() == ["| model | rmse | gain |", "|---|---|---|", "| a\\|b | 0.1235 |  |"]


def test_make_figures_smoke_end_to_end_then_redraws_without_training(tmp_path, monkeypatch, capfd):
    """`make figures SCALE=smoke FIG=a5_min_depth` on a fresh results dir, the sweep shrunk to
    one length and depth so that it trains two runs (about a minute on 2 CPU cores)."""
    monkeypatch.setenv("CI", "1")
    monkeypatch.setitem(a5_min_depth.SWEEPS, "smoke", {"lengths": (3,), "max_depth": 1, "budget": {}})
    results = tmp_path / "results"
    arguments = ["--scale", "smoke", "--figure", "a5_min_depth", "--models", "lru,rnn",
                 "--results-dir", str(results), "--data-dir", str(tmp_path / "data")]  # fmt: skip

    assert main(arguments) == 0
    output = capfd.readouterr().out
    assert output.count("[ssm_lab] completed:") == 2
    figures, name = results / "figures" / "smoke", "a5_min_depth--models-lru-rnn"
    assert {p.name for p in figures.iterdir()} == {f"{name}_figure.{s}" for s in ("png", "pdf")} | {
        f"{name}_table.{s}" for s in ("csv", "md")
    } | {f"{name}.runs.txt"}
    table = pd.read_csv(figures / f"{name}_table.csv", dtype=str)
    assert sorted(table["model"]) == ["lru", "rnn"]
    assert set(table["L=3"]) <= {"1", "> 1"}
    markdown = (figures / f"{name}_table.md").read_text()
    assert markdown.startswith("models lru, rnn only (of l2n, lcde, lru, mamba, rnn, s4, transformer, tv)\n\n")
    assert markdown.count("\n") == 6  # the note, a blank line, header, rule, two models

    assert main(arguments) == 0
    again = capfd.readouterr().out
    assert "launching" not in again and "[ssm_lab] completed:" not in again
    assert f"wrote {figures / f'{name}_figure.pdf'}" in again


def test_every_figure_has_a_preset_and_a_sweep_per_scale():
    from experiments.__main__ import FIGURES
    from ssm_lab.config import CONFIG_DIR

    for name, module in FIGURES.items():
        assert (CONFIG_DIR / "experiment" / f"{module.EXPERIMENT}.yaml").exists(), name
        assert module.__doc__ and "Claim tested" in module.__doc__, name
        for scale in ("smoke", "small", "paper"):
            needed = module.needed_runs(scale, pd.DataFrame(columns=["run_dir"]))
            assert needed and all(isinstance(r, Run) for r in needed), (name, scale)


@pytest.mark.parametrize(
    ("figure", "model"),
    [("toy_signature", "l2n"), ("sysid", "lstm"), ("listops", "s4"), ("robustness", "l2n")],
)
def test_every_other_figure_runs_end_to_end_at_smoke(figure, model, tmp_path, monkeypatch, capfd):
    """`make figures SCALE=smoke FIG=<figure>` on a fresh results dir with one model (the a5 figure has
    its own test above): it trains exactly that model's runs and writes every file of the figure,
    each figure as PDF + PNG and each table as CSV + Markdown, naming the model."""
    from experiments.__main__ import FIGURES

    monkeypatch.setenv("CI", "1")
    results = tmp_path / "results"
    expected = [r for r in FIGURES[figure].needed_runs("smoke", pd.DataFrame(columns=["run_dir"])) if r.model == model]
    arguments = ["--scale", "smoke", "--figure", figure, "--models", model,
                 "--results-dir", str(results), "--data-dir", str(tmp_path / "data")]  # fmt: skip

    assert main(arguments) == 0
    assert capfd.readouterr().out.count("[ssm_lab] completed:") == len(expected) > 0
    files = {p.name for p in (results / "figures" / "smoke").iterdir()} - {f"{figure}--models-{model}.runs.txt"}
    assert files and all(name.startswith(f"{figure}--models-{model}_") for name in files)
    stems = {name.rsplit(".", 1)[0] for name in files}
    pictures = {stem for stem in stems if f"{stem}.png" in files}
    tables = {stem for stem in stems if f"{stem}.csv" in files}
    assert pictures and all(f"{stem}.pdf" in files for stem in pictures)
    assert tables and all(f"{stem}.md" in files for stem in tables)
    for stem in tables:
        assert model in (results / "figures" / "smoke" / f"{stem}.csv").read_text(), stem
