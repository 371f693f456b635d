"""Sweeps through hydra/launcher=submitit_slurm on the real single-node cluster of scripts/slurm/
(start it with scripts/slurm/start.sh; .ci/run does). A job preempted with USR2 is requeued by
submitit, its run is recorded interrupted by SIGUSR2 and resumes to the metrics of an uninterrupted
one; a failed job is reported with its log and the others still record; a bad partition or a cluster
that is down fail clearly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ssm_lab.results import read_metrics, read_summary, run_dir
from ssm_lab.train import run_lock

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_BASE = Path(os.environ.get("SSM_LAB_SLURM_DIR", "/tmp/ssm_lab-slurm"))
WAIT_S = 420
# Jobs stay at >= 3 minutes: submitit asks for USR2 two minutes before the limit.
LAUNCHER = ("hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1")


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment that reaches the cluster; skips the module, saying why, when there is none."""
    conf = os.environ.get("SLURM_CONF") or str(SLURM_BASE / "etc" / "slurm.conf")
    start_hint = "start the single-node cluster with scripts/slurm/start.sh"
    if shutil.which("sbatch") is None:
        pytest.skip(f"no SLURM client (sbatch) on PATH; {start_hint}")
    if not Path(conf).exists():
        pytest.skip(f"no SLURM config at {conf}; {start_hint}")
    env = {**os.environ, "SLURM_CONF": conf, "CI": "1", "PYTHONUNBUFFERED": "1"}
    sinfo = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True, timeout=60)
    states = set(sinfo.stdout.split())
    if sinfo.returncode != 0 or not states <= {"idle", "mix", "alloc"} or not states:
        answer = f"{sinfo.stdout.strip()} {sinfo.stderr.strip()}".strip()
        pytest.skip(f"SLURM cluster of {conf} is not ready (sinfo: {answer!r}); {start_hint}")
    return env


def sweep_command(results_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "run_experiment.py", "-m", "scale=smoke", "logger=none", *LAUNCHER,
        f"hydra.launcher.submitit_folder={results_dir / 'submitit' / '%j'}",
        f"results_dir={results_dir}", f"data_dir={results_dir.parent / 'data'}", *overrides,
    ]  # fmt: skip


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.1)
    return value


def summaries(results_dir: Path) -> dict[int, dict]:
    """The run records of a sweep, by seed."""
    return {
        summary["seed"]: summary
        for path in (results_dir / "runs" / "default").glob("*")
        if (summary := read_summary(path)) is not None
    }


def test_sweep_on_slurm_survives_preemption_and_records_every_run(slurm_env, make_config, train, tmp_path):
    overrides = ("trainer.max_steps=100",)  # five epochs of 20 steps: room to preempt after the first
    results = tmp_path / "slurm"
    sweep = subprocess.Popen(
        sweep_command(results, "seed=0,1", *overrides), cwd=REPO, env=slurm_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        first_task = wait_until(lambda: next((results / "submitit").glob("*_0"), None), "array task 0 to start")
        checkpoint = wait_until(
            lambda: next((results / "runs" / "default").glob("*-s0-*/checkpoints/last.ckpt"), None),
            "the seed-0 run's first checkpoint",
        )
        # What SLURM sends before a time limit (submitit asks for --signal=USR2@...): submitit
        # requeues the job and the run stops; its second start resumes from the checkpoint.
        subprocess.run(["scancel", "--signal=USR2", first_task.name], env=slurm_env, check=True, timeout=60)
        output = sweep.communicate(timeout=WAIT_S)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output

    records = summaries(results)
    assert sorted(records) == [0, 1]
    assert all(summary["status"] == "completed" for summary in records.values()), records
    preempted, path = records[0], checkpoint.parent.parent
    assert preempted["resumed_from_step"] in (20, 40, 60, 80), preempted  # it did stop before the end
    sacct = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--duplicates", "--format=JobID,State", f"--jobs={first_task.name}"],
        env=slurm_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "REQUEUED" in sacct.stdout, sacct.stdout
    log = next(first_task.glob("*_0_log.out")).read_text()  # both starts of the job write to it
    assert re.search(r"^\[ssm_lab\] reason: SIGUSR2 at step \d+$", log, re.MULTILINE), log[-3000:]  # not SystemExit

    reference = train("seed=0", *overrides)  # the same run, uninterrupted, in this process
    assert read_metrics(path) == read_metrics(run_dir(make_config("seed=0", *overrides)))
    assert preempted["final"] == reference["final"]


def test_a_ddp_relaunch_of_a_run_in_progress_elsewhere_skips_on_every_task(slurm_env, make_config, tmp_path):
    """trainer=ddp on SLURM: srun starts one task per process, each running the run from the start. While another
    process trains the run (holding its lock), both tasks skip it and the job ends at once; rank 1 used to wait in
    DDP's rendezvous for a rank 0 that had skipped, for the process group's 30-minute timeout."""
    results, ddp = tmp_path / "slurm", ("trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")
    path = run_dir(make_config(*ddp, f"results_dir={results}"))
    with run_lock(path) as locked:  # the other process, training the run
        assert locked
        sweep = subprocess.Popen(
            sweep_command(results, *ddp), cwd=REPO, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            output = sweep.communicate(timeout=120)[0]
        finally:
            sweep.kill()
            jobs = [folder.name for folder in (results / "submitit").glob("[0-9]*")]
            subprocess.run(["scancel", *jobs], env=slurm_env, timeout=60, check=False)  # a hung job, if any
    assert sweep.returncode == 0, output
    for task in (0, 1):
        log = next((results / "submitit").glob(f"*/*_{task}_log.out")).read_text()
        assert f"[ssm_lab] run is in progress in another process, skipped: {path}" in log, log[-3000:]
    assert sorted(p.name for p in path.iterdir()) == [".lock"]  # nothing recorded, nothing left behind


def test_failed_job_is_reported_with_its_log_and_the_others_still_record(slurm_env, tmp_path):
    results = tmp_path / "slurm"
    done = subprocess.run(
        sweep_command(results, "trainer.max_steps=0,40"), cwd=REPO, env=slurm_env, capture_output=True, text=True,
        timeout=WAIT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "trainer.max_steps must be a positive integer, got 0" in output
    failed_log = next((results / "submitit").glob("*_0/*_0_0_log.err"))
    assert f"job log: {failed_log}" in output  # where to look, named in the error
    # Hydra stops at the failed job; the other job of the array runs on and writes its record.
    record = wait_until(lambda: summaries(results).get(0, {}).get("status") == "completed", "the seed-0 record")
    assert record


def test_unknown_partition_fails_at_submission_naming_it(slurm_env, tmp_path):
    done = subprocess.run(
        sweep_command(tmp_path / "slurm", "hydra.launcher.partition=no_such_partition", "seed=0"), cwd=REPO,
        env=slurm_env, capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    assert done.returncode != 0
    assert "invalid partition specified: no_such_partition" in done.stdout + done.stderr


def test_cluster_that_is_down_fails_before_submission_in_one_line(slurm_env, tmp_path):
    conf = Path(slurm_env["SLURM_CONF"]).read_text()
    down = tmp_path / "slurm.conf"  # the same cluster, its controller looked for on a port nobody serves
    lines = ["SlurmctldPort=1" if line.startswith("SlurmctldPort=") else line for line in conf.splitlines()]
    down.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        sweep_command(tmp_path / "slurm", "seed=0"), cwd=REPO, env={**slurm_env, "SLURM_CONF": str(down)},
        capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "error: hydra/launcher=submitit_slurm: no SLURM cluster answers here (" in output
    assert "Unable to contact slurm controller" in output
    assert "Traceback" not in output, output  # one line, before anything is submitted
