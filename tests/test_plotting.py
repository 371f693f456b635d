"""plot_results.py draws learning curves of the selected runs into PNG and PDF files."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ssm_lab.plotting import learning_curves, select_runs
from ssm_lab.results import gather

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
