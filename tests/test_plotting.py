"""plot_results.py draws learning curves of the selected runs into PNG and PDF files."""

import subprocess
import sys
from pathlib import Path

import pytest

from ssm_lab.plotting import select_runs
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
