"""Benchmark records: appended (never overwritten) and stamped with what ran them."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from ssm_lab.bench.recording import _git_commit, append_records, results_path


def test_records_are_appended_with_device_versions_and_the_commit(tmp_path):
    path = tmp_path / "results" / "bench.jsonl"
    append_records([{"name": "first"}], path)
    append_records([{"name": "second"}, {"name": "third"}], path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["name"] for row in rows] == ["first", "second", "third"]
    assert all(row["torch"] == torch.__version__ and row["time"] for row in rows)
    if not torch.cuda.is_available():
        assert all(row["device"] == "cpu" and row["threads"] == torch.get_num_threads() and row["cpu"] for row in rows)
        assert results_path(tmp_path).name.endswith("-cpu.jsonl")


def test_the_commit_says_dirty_when_the_tree_differs_from_it(tmp_path, monkeypatch):
    run = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    try:
        run("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    (tmp_path / "file.txt").write_text("one\n")
    run("add", "file.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    monkeypatch.chdir(tmp_path)
    clean = _git_commit()
    assert re.fullmatch(r"[0-9a-f]{7,}", clean)
    results = tmp_path / "benchmarks" / "results" / "run.jsonl"  # what the benchmarks append to does not count
    results.parent.mkdir(parents=True)
    results.write_text("{}\n")
    run("add", str(results))
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results")
    clean = _git_commit()
    results.write_text("{}\n{}\n")
    (tmp_path / "untracked.py").write_text("")
    assert _git_commit() == clean
    (tmp_path / "file.txt").write_text("two\n")
    assert _git_commit() == f"{clean}-dirty"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ssm_lab.bench.streaming", "--repeats", "0"], "argument --repeats: must be a positive integer, got '0'"),
        (["ssm_lab.bench.cores", "--batch", "0"], "argument --batch: must be a positive integer, got '0'"),
        (["ssm_lab.bench.deep_ssm_cpu", "--modes", "Scan"], "argument --modes: invalid choice: 'Scan'"),
        (["ssm_lab.bench.overhead", "--steps", "10", "--warmup", "10"], "--warmup must be in 0..steps - 1 = 9"),
        (
            ["ssm_lab.bench.overhead", "--out", "unused.jsonl", "data=silverbox"],
            "the bare loop computes the per-token cross-entropy of a word problem; data=silverbox is step_regression",
        ),
    ],
)
def test_benchmark_options_are_checked_before_anything_runs(arguments, message, tmp_path):
    """A typo or a zero used to run nothing and exit 0, or fail deep inside (an FFT error for --batch 0)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", *arguments], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
    assert not list(tmp_path.rglob("*.jsonl"))  # no record written
