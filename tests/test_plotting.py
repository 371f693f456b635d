"""plot_results.py draws learning curves of the selected runs into PNG and PDF files."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import plot_results
from ssm_lab.plotting import label_order, learning_curves, select_runs
from ssm_lab.results import CONFIG, gather, write_metrics, write_summary

ROOT = Path(__file__).resolve().parents[1]


def test_plot_results_draws_selected_runs(train, tmp_path):
    train()
    train("seed=1")
    results = tmp_path / "results"
    output = tmp_path / "curves"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "plot_results.py"),
            "--results-dir",
            str(results),
            "--filter",
            "seed=1",
            "--metric",
            "accuracy",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert output.with_suffix(".png").stat().st_size > 1000
    assert output.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert str(output.with_suffix(".png")) in done.stdout


def test_plot_results_says_when_nothing_matches(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "plot_results.py"), "--results-dir", str(tmp_path), "--filter", "seed=7"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "no runs" in done.stderr


def test_select_runs_rejects_unknown_keys_and_bad_filters(train, tmp_path):
    train()
    runs = gather(tmp_path / "results")
    assert len(select_runs(runs, ["seed=0"])) == 1 and select_runs(runs, ["seed=5"]).empty
    with pytest.raises(ValueError, match="unknown filter key 'modle'"):
        select_runs(runs, ["modle=lru"])
    with pytest.raises(ValueError, match="must look like key=value"):
        select_runs(runs, ["lru"])


def test_learning_curves_keep_many_lines_apart_and_name_the_non_finite_ones():
    """14 runs: every line a distinct (colour, style) pair past the 10-colour cycle; a run whose values are all
    NaN keeps a legend entry that says so, a run with one finite value does not."""
    names = [f"model{i}" for i in range(14)]
    runs = pd.DataFrame({"run_dir": names, "choices.model": names})
    rows = [(name, step, 1.0 / (i + step)) for i, name in enumerate(names) for step in (10, 20)]
    curves = pd.DataFrame(rows, columns=["run_dir", "step", "value"]).assign(split="val", metric="loss")
    curves.loc[curves["run_dir"] == "model3", "value"] = float("nan")
    curves.loc[(curves["run_dir"] == "model4") & (curves["step"] == 20), "value"] = float("inf")
    figure = learning_curves(runs, curves, "loss", label="choices.model")
    lines = figure.axes[0].get_lines()
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 14
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[3] == "model3 (not finite)" and labels[4] == "model4" and labels[13] == "model13"


def test_select_runs_compares_numbers_and_booleans_as_yaml_reads_them():
    """A float column (some runs lack the key) matches an integer filter, a YAML boolean (``false``) matches
    False, ``null`` matches the runs without the key, and strings still match as strings."""
    runs = pd.DataFrame(
        {
            "run_dir": ["a", "b", "c", "d"],
            "model.d_state": [32.0, np.nan, 64.0, 32.0],
            "model.checkpoint": [False, True, np.nan, False],  # object: booleans and a missing value
            "model.bidirectional": [True, False, False, True],  # bool dtype
            "scale.lr": [1e-3, 3e-3, 1e-3, 1e-3],
            "seed": [0, 1, 2, 3],
            "choices.model": ["lru", "s4", "lru", "tv"],
        }
    )

    def selected(*filters: str) -> list[str]:
        return list(select_runs(runs, filters)["run_dir"])

    assert selected("model.d_state=32") == selected("model.d_state=32.0") == ["a", "d"]
    assert selected("model.d_state=null") == ["b"]
    assert selected("model.checkpoint=false") == selected("model.checkpoint=False") == ["a", "d"]
    assert selected("model.bidirectional=true") == ["a", "d"]
    assert selected("model.checkpoint=0") == []  # a boolean is no number
    assert selected("scale.lr=1e-3") == selected("scale.lr=0.001") == ["a", "c", "d"]
    assert selected("seed=1.0") == ["b"]
    assert selected("choices.model=lru", "model.d_state=64") == ["c"]
    assert selected("choices.model=false") == []


def record_runs(results: Path, metrics: tuple[str, ...] = ("loss", "accuracy")) -> None:
    """Two run records as gather reads them (config, summary, learning curves), without training."""
    for index, model in enumerate(("lru", "s4")):
        path = results / "runs" / "test" / f"run{index}"
        path.mkdir(parents=True)
        (path / CONFIG).write_text(f"seed: {index}\nchoices:\n  model: {model}\n")
        write_summary(path, {"status": "completed", "run_id": f"run{index}"})
        write_metrics(path, [{"step": s, "split": "val", "metric": m, "value": 1 / s} for m in metrics for s in (1, 2)])


def test_plot_results_keeps_a_dotted_output_name_whole(tmp_path, capsys):
    record_runs(tmp_path / "results")
    output = tmp_path / "curves_lr1.0e-3"
    plot_results.main(["--results-dir", str(tmp_path / "results"), "--output", str(output), "--label", "seed"])
    written = [tmp_path / "curves_lr1.0e-3.png", tmp_path / "curves_lr1.0e-3.pdf"]
    assert capsys.readouterr().out.split() == [str(path) for path in written]
    assert written[0].stat().st_size > 1000 and written[1].read_bytes().startswith(b"%PDF")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["curves_lr1.0e-3.pdf", "curves_lr1.0e-3.png", "results"]
    plot_results.main(["--results-dir", str(tmp_path / "results"), "--output", str(tmp_path / "named.png")])
    assert capsys.readouterr().out.split() == [str(tmp_path / "named.png"), str(tmp_path / "named.pdf")]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--metric", "accurcy"],
            "no val metric 'accurcy' in the selected runs; available val metrics: accuracy, loss",
        ),
        (["--split", "test"], "no test metric 'loss' in the selected runs; available test metrics: none"),
        (["--label", "choices.modle"], "unknown label column 'choices.modle'; did you mean choices.model?"),
    ],
)
def test_plot_results_refuses_a_metric_or_label_no_run_has(tmp_path, option, message):
    """--metric accurcy drew an empty figure and --label choices.modle labelled the lines with their run_dir."""
    record_runs(tmp_path / "results")
    output = tmp_path / "curves"
    with pytest.raises(SystemExit, match=re.escape(message)):
        plot_results.main(["--results-dir", str(tmp_path / "results"), "--output", str(output), *option])
    assert list(tmp_path.iterdir()) == [tmp_path / "results"]  # nothing drawn


def test_curves_are_ordered_by_their_labels_numbers_as_numbers(tmp_path):
    """--label seed listed the seeds 1, 10, 2 (run folders in text order); numbers are sorted as numbers,
    digit runs inside text too (run ids), and runs without the label come last."""
    results = tmp_path / "results"
    for seed in (1, 10, 2, 0):
        path = results / "runs" / "test" / f"lru-s{seed}-abc"
        path.mkdir(parents=True)
        (path / CONFIG).write_text(f"seed: {seed}\nchoices:\n  model: lru\n")
        write_summary(path, {"status": "completed", "run_id": f"lru-s{seed}-abc"})
        write_metrics(path, [{"step": s, "split": "val", "metric": "loss", "value": 1 / s} for s in (1, 2)])
    runs, curves = gather(results), gather(results, metrics=True)
    assert list(runs["seed"]) == [0, 1, 10, 2]  # the order gather reads them in

    def legend(runs: pd.DataFrame, label: str) -> list[str]:
        figure = learning_curves(runs, curves, "loss", label=label)
        return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]

    assert legend(runs, "seed") == ["0", "1", "2", "10"]
    assert legend(runs, "run_id") == ["lru-s0-abc", "lru-s1-abc", "lru-s2-abc", "lru-s10-abc"]
    some_without = runs.assign(seed=[np.nan, 1.0, 10.0, 2.0])  # a key some runs lack: a float column with NaN
    assert legend(some_without, "seed") == ["1.0", "2.0", "10.0", "nan"]
    mixed = runs.assign(seed=["b", "10", "a", "9"])
    assert legend(mixed, "seed") == ["9", "10", "a", "b"]
    labels = [True, 3, "x2", "x10", None, 1e-3, "2.5"]
    assert sorted(labels, key=label_order) == [1e-3, "2.5", 3, True, "x2", "x10", None]
