"""trainer=ddp on CPU: two gloo processes, each loading half of every global batch, reach the
metrics of one process (together the same batches, gradients averaged); only rank 0 records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ssm_lab.results import read_metrics, read_summary, run_dir
from ssm_lab.train import run_lock

REPO = Path(__file__).resolve().parents[1]
DDP = ("trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")


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


def test_a_ddp_relaunch_of_a_run_trained_elsewhere_skips_on_every_rank(make_config, tmp_path):
    """torchrun starts both ranks, each running the run from the start, as srun does on SLURM. While another
    process trains the run (holding its lock), rank 0 skips it, and rank 1 skips with it instead of waiting in
    DDP's rendezvous for a rank 0 that never comes (for the process group's 30-minute timeout)."""
    overrides = (*DDP, f"results_dir={tmp_path / 'ddp'}")
    path = run_dir(make_config(*overrides))
    with run_lock(path) as locked:  # the other process, training the run
        assert locked
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "run_experiment.py",
            "scale=smoke", "logger=none", f"data_dir={tmp_path / 'data'}", *overrides,
        ]  # fmt: skip
        returncode, output = run_process_group(command, timeout_s=60)
    assert returncode == 0, output
    assert output.count(f"[ssm_lab] run is in progress in another process, skipped: {path}") == 2, output
    assert sorted(p.name for p in path.iterdir()) == [".lock"]  # nothing recorded, nothing left behind


def run_process_group(command: list[str], timeout_s: float) -> tuple[int, str]:
    """Runs ``command`` (a launcher and its workers) in a process group of its own; past ``timeout_s`` the whole
    group is killed and the test fails, instead of hanging, with what it printed."""
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output = process.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        pytest.fail(f"still running after {timeout_s:.0f} s, killed:\n{output[-3000:]}")
    return process.returncode, output


def test_submitit_local_runs_a_ddp_run_as_one_task_per_process(make_config, tmp_path):
    """hydra/launcher=submitit_local tries a sweep here as it will run on SLURM: one task per DDP process
    (tasks_per_node follows trainer.devices). Lightning used to start rank 1 itself by re-running the command line,
    submitit's, which failed, killing rank 0 and leaving its record "running"."""
    results = tmp_path / "local"
    overrides = (*DDP, f"results_dir={results}")
    command = [
        sys.executable, "run_experiment.py", "-m", "scale=smoke", "logger=none", "hydra/launcher=submitit_local",
        f"hydra.launcher.submitit_folder={results / 'submitit' / '%j'}", f"data_dir={tmp_path / 'data'}", *overrides,
    ]  # fmt: skip
    returncode, output = run_process_group(command, timeout_s=120)
    assert returncode == 0, output
    summary = read_summary(run_dir(make_config(*overrides)))
    assert summary["status"] == "completed"
    assert (summary["processes"], summary["batch_size_per_process"]) == (2, 16)
    (rank_1_log,) = (results / "submitit").glob("*/*_1_log.err")  # the job's second task
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in rank_1_log.read_text()


@pytest.mark.parametrize(
    ("launcher", "error"),
    [
        (
            ("hydra/launcher=joblib",),
            "trainer.devices=2 runs 2 DDP processes, which Lightning starts by re-running the command line, and that "
            "of a hydra/launcher=joblib worker is joblib's: launch DDP runs with hydra/launcher=submitit_local or "
            "submitit_slurm",
        ),
        (
            ("hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=1"),
            "trainer.devices=2 runs 2 DDP processes, one per task of a hydra/launcher=submitit_local job, and this job "
            "has 1: set hydra.launcher.tasks_per_node=2",
        ),
    ],
)
def test_a_ddp_run_its_launcher_cannot_start_is_refused_before_anything_is_recorded(launcher, error, tmp_path):
    results = tmp_path / "results"
    command = [
        sys.executable, "run_experiment.py", "-m", "scale=smoke", "logger=none", *launcher, *DDP,
        f"hydra.sweep.dir={tmp_path / 'sweep'}", f"results_dir={results}", f"data_dir={tmp_path / 'data'}",
    ]  # fmt: skip
    returncode, output = run_process_group(command, timeout_s=120)
    assert returncode != 0
    assert error in output, output[-3000:]
    assert not any((results / "runs").glob("*/*")), "a run folder was left"
