"""run(cfg): one training run from a composed config to a completed run record.

Skips a completed run, resumes an unfinished one from its last checkpoint, and records a run
that stops on a non-finite training loss as failed, with the reason. A run whose validation or test metrics
are not finite (a model that trains on short windows may overflow on a full-length record) completes; its
summary lists them under ``non_finite`` and the run's report warns.

Sweeps and clusters: a per-run file lock lets concurrent sweeps share a results_dir (each run is
trained by one process, a completed one never again); under DDP only global rank 0 locks and
writes the record. A run stopped by SIGTERM (Ctrl-C, scancel, preemption) or by submitit's USR2
requeue is recorded as interrupted and exits non-zero; its next launch resumes from last.ckpt,
which is only written at epoch ends, so the resumed run replays the uninterrupted one exactly."""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ssm_lab.config import finalize
from ssm_lab.cpu_memory import keep_freed_memory
from ssm_lab.results import (
    CONFIG,
    MetricsRecorder,
    atomic_write,
    final_and_best,
    read_summary,
    run_dir,
    write_summary,
)
from ssm_lab.task import NonFiniteLossError, SequenceTask

# configs/hydra/launcher/*.yaml set the launcher plugins' values under the plugins' own names, on purpose; Hydra
# warns of that schema matching at every composition, in the launching process and in each joblib worker (which
# imports this module to run its job)
warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema", category=UserWarning)


def package_version() -> str:
    try:
        return version("ssm_lab")
    except PackageNotFoundError:
        return "unknown"


def git_commit() -> str | None:
    """HEAD of the checkout holding the package, with "-dirty" when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


@contextmanager
def run_lock(path: Path) -> Iterator[bool]:
    """An exclusive lock on the run folder; yields False when another process holds it."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _check_run_values(cfg: DictConfig) -> None:
    """The values the run folder's name and the training budget are made of, checked before the folder exists."""
    max_steps = cfg.trainer.get("max_steps")
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ValueError(f"trainer.max_steps must be a positive integer, got {max_steps!r}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    if cfg.trainer.get("max_time") is not None:
        raise ValueError(
            f"trainer.max_time={cfg.trainer.max_time!r} stops a run between two evaluations, where its checkpoint "
            "cannot resume it exactly; bound the time from outside (timeout, SLURM's time limit): a run stopped by "
            "SIGTERM is recorded 'interrupted' and the next launch resumes it to the metrics of an uninterrupted run"
        )


def _progress_bar(setting: bool | None) -> bool:
    """null in the config means: on at a terminal, off in CI or when output is redirected."""
    if setting is not None:
        return bool(setting)
    return sys.stderr.isatty() and not os.environ.get("CI")


def _device(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, as its launcher (Lightning's, srun, torchrun) says in
    the environment: known before the trainer exists, so the other ranks of a DDP run skip the lock."""
    return all(int(os.environ.get(key, "0")) == 0 for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _cluster_plugins() -> list[SLURMEnvironment]:
    """Under SLURM, Lightning's cluster environment without its auto-requeue: submitit requeues on
    USR2, and Lightning's handler would save a mid-epoch checkpoint that a resume cannot replay."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def _finished(path: Path) -> dict[str, Any] | None:
    """The run's summary when it has a result: completed, or failed (a loss that went non-finite: the same
    config and seed fail the same way again, so a relaunch does not train it from scratch to learn that)."""
    summary = read_summary(path)
    if not summary or summary.get("status") not in ("completed", "failed"):
        return None
    status = "complete" if summary["status"] == "completed" else f"failed ({summary.get('reason')}; remove it to retry)"
    print(f"[ssm_lab] run already {status}, skipped: {path}")
    return summary


def _job_log() -> str | None:
    """The stderr log of the submitit job (a sweep on SLURM or submitit_local) running this process."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return None
    import submitit  # only submitit's jobs have one

    return str(submitit.JobEnvironment().paths.stderr)


def run(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train, test and record one run; returns its summary. ``callbacks`` are added to the trainer's.

    In a submitit job an error names the job's log: Hydra shows it where the sweep was launched."""
    try:
        with _without_lightning_hints():
            return _run(cfg, callbacks)
    except Exception as error:
        if (log := _job_log()) and hasattr(error, "add_note"):  # add_note: Python >= 3.11
            error.add_note(f"[ssm_lab] job log: {log}")
        raise


@contextmanager
def _without_lightning_hints() -> Iterator[None]:
    """Two Lightning warnings that do not apply to a run of ssm_lab:
    - outside any SLURM job (a login node, CI), finding ``srun`` on the PATH, it warns at every run that srun was
      not used; ssm_lab reaches SLURM through submitit, which runs each job under srun itself. Inside a job
      (SLURM_JOB_ID set) the warning stays: there a missing srun can hang a multi-process run;
    - "`training_step` returned `None`": ``SequenceTask`` returns None only for a least-squares readout (e.g.
      ``model=lcde_random_ols``), which is solved, not stepped."""
    with warnings.catch_warnings():
        if "SLURM_JOB_ID" not in os.environ:
            warnings.filterwarnings("ignore", message="The `srun` command is available", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message="`training_step` returned `None`")
        yield


def _run(cfg: DictConfig, callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    auto_source = OmegaConf.select(cfg, "data.source") == "auto"
    cfg = finalize(cfg)
    if auto_source:  # the run records the source that auto picked (ssm_lab.config.resolve_data_source)
        print(
            f"[ssm_lab] data.source=auto: {cfg.data.source}, from what is in {cfg.data.data_dir} "
            "(data_dir/README.md says which benchmark files go where)"
        )
    _check_run_values(cfg)
    path = run_dir(cfg)
    if summary := _finished(path):
        return summary
    if not is_rank_zero():
        return _train(cfg, path, read_summary(path) or {}, callbacks)
    created = not path.exists()
    with run_lock(path) as locked:
        if not locked:
            print(f"[ssm_lab] run is in progress in another process, skipped: {path}")
            return read_summary(path) or {"status": "running", "run_dir": str(path)}
        if summary := _finished(path):  # finished by another sweep between our first look and the lock
            return summary
        return _train(cfg, path, read_summary(path) or {}, callbacks, created)


def _remove_unused_run_folder(path: Path) -> None:
    """Remove the run folder this call created, its lock and nothing else: a folder something else wrote into
    stays."""
    (path / ".lock").unlink(missing_ok=True)
    with suppress(OSError):
        path.rmdir()


def _build(
    cfg: DictConfig, path: Path, resume_step: int, callbacks: Sequence[L.Callback]
) -> tuple[L.LightningDataModule, SequenceTask, Any, MetricsRecorder, L.Trainer]:
    """The run's data module, task (with its model), logger, metrics recorder and trainer, from the seed on."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    spec = datamodule.spec
    model = instantiate(cfg.model)(spec=spec)
    task = SequenceTask(
        model,
        spec,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        recurrence_lr=cfg.optim.get("recurrence_lr"),
    )
    logger = instantiate(cfg.logger, save_dir=str(path)) if cfg.get("logger") else False
    recorder = MetricsRecorder(path, resume_step)
    checkpointing = ModelCheckpoint(
        dirpath=path / "checkpoints", filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    trainer_cfg = OmegaConf.to_container(cfg.trainer)
    trainer_cfg["enable_progress_bar"] = _progress_bar(trainer_cfg.get("enable_progress_bar"))
    if plugins := _cluster_plugins():
        trainer_cfg["plugins"] = plugins
    trainer: L.Trainer = instantiate(
        trainer_cfg, default_root_dir=str(path), logger=logger, callbacks=[checkpointing, recorder, *callbacks]
    )
    task.configure_optimizers()  # built again by fit; a bad optimizer or scheduler value fails here, before any record
    return datamodule, task, logger, recorder, trainer


def _train(
    cfg: DictConfig, path: Path, previous: dict[str, Any], callbacks: Sequence[L.Callback], created: bool = False
) -> dict[str, Any]:
    """Build the run's parts, then write its config and train. A config that cannot be built (a bad value, an
    unknown mode) raises before anything is recorded; the run folder, if this launch ``created`` it, is removed."""
    writes_record = is_rank_zero()
    checkpoint = path / "checkpoints" / "last.ckpt"
    resume_from = checkpoint if checkpoint.exists() else None
    resume_step = torch.load(resume_from, map_location="cpu", weights_only=False)["global_step"] if resume_from else 0

    try:
        datamodule, task, logger, recorder, trainer = _build(cfg, path, resume_step, callbacks)
    except Exception:
        if writes_record and created:
            _remove_unused_run_folder(path)
        raise
    if writes_record and not (path / CONFIG).exists():
        atomic_write(path / CONFIG, OmegaConf.to_yaml(cfg))
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg))
    if trainer.strategy.root_device.type == "cpu":
        keep_freed_memory()  # no page faults re-reading each step's activations (ssm_lab.cpu_memory)

    n_params = sum(p.numel() for p in task.model.parameters())
    summary: dict[str, Any] = {
        "run_id": path.name,
        "experiment": str(cfg.name),
        "status": "running",
        "seed": cfg.seed,
        "parameters": n_params,
        "device": _device(trainer),
        "processes": trainer.world_size,
        "package_version": package_version(),
        "git_commit": git_commit(),
        "resumed_from_step": resume_step,
        "wall_time_s": previous.get("wall_time_s", 0.0) if resume_from else 0.0,
    }
    if writes_record:
        write_summary(path, summary)
    start = time.perf_counter()

    def record(status: str, **fields: Any) -> dict[str, Any]:
        summary.update(status=status, **fields)
        summary["wall_time_s"] += time.perf_counter() - start
        summary["final"], summary["best"] = final_and_best(recorder.rows)
        summary["non_finite"] = sorted(key for key, value in summary["final"].items() if not math.isfinite(value))
        summary["steps"] = trainer.global_step
        if writes_record:
            write_summary(path, summary)
            _report(path, summary)
        return summary

    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
        if isinstance(loader := trainer.train_dataloader, DataLoader):  # gone once trainer.test has run
            summary["batch_size_per_process"] = loader.batch_size
        if trainer.global_step < cfg.trainer.max_steps:  # stopped early (by a callback): not a completed run
            return record("interrupted", reason=f"stopped at step {trainer.global_step} of {cfg.trainer.max_steps}")
        trainer.test(task, datamodule=datamodule, verbose=False)
    except NonFiniteLossError as error:
        return record("failed", reason=str(error))
    except SIGTERMException as error:  # Lightning stopped at a batch end; report the signal to the launcher
        record("interrupted", reason=f"SIGTERM at step {trainer.global_step}")
        _terminate(128 + signal.SIGTERM, error)
    except BaseException as error:  # Ctrl-C, submitit's requeue, a crash: the next launch resumes from last.ckpt
        # Lightning turns Ctrl-C into SystemExit(1) after its shutdown: the reason names the KeyboardInterrupt
        stop = error.__context__ if isinstance(error.__context__, KeyboardInterrupt) else error
        record("interrupted", reason=f"{type(stop).__name__}: {stop}".rstrip(": "))
        raise
    if hasattr(task.model, "certified_gain_bound"):
        from ssm_lab.models.certificate import audit  # only certified models need it

        summary.update(audit(task.model))  # certified_gain and empirical_gain
    return record("completed")


def _terminate(code: int, signal_error: BaseException) -> NoReturn:
    """End the process after a SIGTERM with ``code``: SystemExit, except in a joblib worker (loky), which catches
    SystemExit and lives on, idle for minutes after its sweep was stopped, holding its memory (and on a GPU its
    CUDA context, in the way of the relaunch); there the process exits at once, its record already written."""
    if multiprocessing.current_process().name.startswith("LokyProcess"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code) from signal_error


def _report(path: Path, summary: dict[str, Any]) -> None:
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary["final"].items()) if not k.startswith("train/"))
    print(f"[ssm_lab] {summary['status']}: {path}")
    if summary.get("reason"):
        print(f"[ssm_lab] reason: {summary['reason']}")
    print(f"[ssm_lab] {metrics} ({summary['steps']} steps, {summary['wall_time_s']:.1f} s)")
    if summary["non_finite"]:
        print(f"[ssm_lab] warning: not finite: {', '.join(summary['non_finite'])}")
