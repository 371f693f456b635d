"""Hydra callbacks that guard sweeps: a multirun that launches no job is an error, not a silent 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class RequireJobs(Callback):
    """After a multirun, fail unless the sweep folder holds at least one job folder (0/, 1/, ...).

    Counting folders rather than ``on_job_start`` calls works for every launcher: joblib and
    submitit run jobs in other processes, but all of them create their job folder in the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(p.is_dir() and p.name.isdigit() for p in sweep_dir.iterdir()):
            overrides = " ".join(config.hydra.overrides.task) or "(none)"
            # SystemExit, because Hydra turns any Exception raised by a callback into a warning
            raise SystemExit(f"error: the sweep launched zero runs (overrides: {overrides}); check the swept values")
