"""Hydra callbacks that guard sweeps: a multirun that launches no job is an error, not a silent 0; a SLURM sweep
where no cluster answers fails at once, in one line."""

from __future__ import annotations

import shutil
import subprocess
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


class RequireSlurmCluster(Callback):
    """Before a multirun on hydra/launcher=submitit_slurm (configs/hydra/launcher_checks/submitit_slurm.yaml): fail,
    saying what to do, where SLURM's commands are missing or no cluster answers them (no slurm.conf found, the
    controller down), instead of submitit's traceback at the first submission."""

    #: The most seconds ``sinfo`` may take to answer (it retries an unreachable controller for about 10 s).
    TIMEOUT_S = 120

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hint = (
            "launch from a machine of the cluster (SLURM_CONF names its slurm.conf where it is not found), or sweep "
            "here with hydra/launcher=submitit_local or hydra/launcher=joblib"
        )
        if missing := [command for command in ("sbatch", "srun", "sinfo") if shutil.which(command) is None]:
            raise SystemExit(
                f"error: hydra/launcher=submitit_slurm needs SLURM's {', '.join(missing)}, not on PATH here; {hint}"
            )
        try:
            answer = subprocess.run(
                ["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=self.TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"error: hydra/launcher=submitit_slurm: the SLURM cluster did not answer sinfo in {self.TIMEOUT_S} s; "
                f"{hint}"
            ) from None
        if answer.returncode != 0:
            why = (answer.stderr.strip().splitlines() or [f"exit status {answer.returncode}"])[-1]
            raise SystemExit(f"error: hydra/launcher=submitit_slurm: no SLURM cluster answers here ({why}); {hint}")
