"""Preemption: a run stopped by a real SIGTERM in the middle of an epoch is recorded as
interrupted, exits non-zero, and its relaunch resumes from the last epoch-end checkpoint and ends
with exactly the metrics of an uninterrupted run (CPU, bitwise)."""

from __future__ import annotations

import os
import shutil
import signal

import lightning as L
import pytest
import torch

from ssm_lab.results import read_metrics, read_summary, run_dir
from ssm_lab.train import run


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

