"""Preemption: a run stopped by a real SIGTERM in the middle of an epoch is recorded as
interrupted, exits non-zero, and its relaunch resumes from the last epoch-end checkpoint and ends
with exactly the metrics of an uninterrupted run (CPU, bitwise)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

import lightning as L
import pytest
import torch

from ssm_lab.results import read_metrics, read_summary, run_dir
from ssm_lab.train import run

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class SignalAtStep(L.Callback):
    """Sends this process ``signum`` once training has taken ``step`` optimizer steps."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigterm_mid_epoch_then_relaunch_matches_uninterrupted_run(make_config, tmp_path):
    cfg = make_config()  # smoke: two epochs of scale.eval_every=20 steps
    assert (cfg.trainer.max_steps, cfg.data.steps_per_epoch) == (40, 20)
    path = run_dir(cfg)
    reference = run(cfg)
    assert reference["status"] == "completed"
    reference_path = shutil.move(path, tmp_path / "reference")  # the same config trains again below

    with pytest.raises(SystemExit) as stopped:
        run(cfg, callbacks=[SignalAtStep(30, signal.SIGTERM)])
    assert stopped.value.code == 128 + signal.SIGTERM  # a launcher sees the run did not finish
    interrupted = read_summary(path)
    assert interrupted["status"] == "interrupted"
    assert interrupted["reason"] == "SIGTERM at step 30"
    checkpoint = torch.load(path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 20  # the epoch end before the signal, never mid-epoch

    resumed = run(cfg)
    assert resumed["status"] == "completed"
    assert resumed["resumed_from_step"] == 20
    assert resumed["steps"] == 40
    assert read_metrics(path) == read_metrics(reference_path)
    assert resumed["final"] == reference["final"]
    assert resumed["best"] == reference["best"]


def test_usr2_requeue_is_recorded_as_the_signal_and_the_requeued_job_resumes_exactly(make_config, train, tmp_path):
    """submitit's answer to USR2 (what SLURM sends before a time limit, and on preemption), here in a submitit_local
    job: it requeues the job and exits with SystemExit. The run is recorded interrupted by SIGUSR2 (not by
    "SystemExit: 144"), and the job's second start resumes it to the metrics of an uninterrupted run."""
    overrides = ("seed=0", "trainer.max_steps=100")  # five epochs of 20 steps: room to signal after the first
    results = tmp_path / "local"
    sweep = subprocess.Popen(
        [sys.executable, "run_experiment.py", "-m", "scale=smoke", "logger=none", "hydra/launcher=submitit_local",
         f"hydra.launcher.submitit_folder={results / 'submitit' / '%j'}", f"results_dir={results}",
         f"data_dir={tmp_path / 'data'}", *overrides],
        cwd=REPO, env={**os.environ, "CI": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: next((results / "runs").glob("*/*/checkpoints/last.ckpt"), None), "the first checkpoint")
        os.kill(wait_until(lambda: job_task(results), "the job's task"), signal.SIGUSR2)
        output = sweep.communicate(timeout=120)[0]
    finally:
        if sweep.poll() is None:  # what a failed wait left running
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 0, output

    (log,) = (results / "submitit").glob("*/*_0_log.out")  # both starts of the job write to it
    reasons = [line for line in log.read_text().splitlines() if line.startswith("[ssm_lab] reason: ")]
    assert len(reasons) == 1 and re.fullmatch(r"\[ssm_lab\] reason: SIGUSR2 at step \d+", reasons[0]), reasons
    path = run_dir(make_config(*overrides, f"results_dir={results}"))
    resumed = read_summary(path)
    assert resumed["status"] == "completed"
    assert resumed["resumed_from_step"] in (20, 40, 60, 80), resumed  # it did stop before the end
    reference = train(*overrides)  # the same run, uninterrupted, in this process
    assert read_metrics(path) == read_metrics(run_dir(make_config(*overrides)))
    assert resumed["final"] == reference["final"]


def job_task(results: Path) -> int | None:
    """The pid of the process running the submitit job whose files are under ``results``."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            if b"submitit.core._submit" in (argv := cmdline.read_bytes()) and str(results).encode() in argv:
                return int(cmdline.parent.name)
    return None


def wait_until(condition: Callable[[], T | None], what: str, timeout_s: float = 120) -> T:
    deadline = time.monotonic() + timeout_s
    while (value := condition()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.05)
    return value
