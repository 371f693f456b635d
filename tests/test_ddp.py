"""trainer=ddp on CPU: two gloo processes, each loading half of every global batch, reach the
metrics of one process (together the same batches, gradients averaged); only rank 0 records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssm_lab.results import read_metrics, read_summary, run_dir

REPO = Path(__file__).resolve().parents[1]


def test_two_process_gloo_ddp_matches_one_process(make_config, train, tmp_path):
    single = train()
    assert single["status"] == "completed"
    results = tmp_path / "ddp"
    ddp_overrides = ("trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", f"results_dir={results}")
    done = subprocess.run(
        [sys.executable, "run_experiment.py", "scale=smoke", "logger=none", f"data_dir={tmp_path / 'data'}",
         *ddp_overrides],
        cwd=REPO, env={**os.environ, "CI": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output

    path = run_dir(make_config(*ddp_overrides))
    assert output.count("[ssm_lab] completed: ") == 1  # rank 1 trained but did not record
    ddp = read_summary(path)
    assert ddp["status"] == "completed"
    assert (ddp["steps"], ddp["parameters"]) == (single["steps"], single["parameters"])
    assert (single["processes"], single["batch_size_per_process"]) == (1, 32)
    assert (ddp["processes"], ddp["batch_size_per_process"]) == (2, 16)  # each loads half of every batch

    single_curve, ddp_curve = curve(run_dir(make_config())), curve(path)
    assert ddp_curve.keys() == single_curve.keys()
    for key, value in single_curve.items():
        assert ddp_curve[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def curve(path: Path) -> dict[tuple[int, str, str], float]:
    """Every recorded metric but train/loss, which is rank 0's mean over its half of each batch;
    the others cover whole batches or splits (torchmetrics sums its states over the ranks)."""
    return {
        (row["step"], row["split"], row["metric"]): row["value"]
        for row in read_metrics(path)
        if (row["split"], row["metric"]) != ("train", "loss")
    }
