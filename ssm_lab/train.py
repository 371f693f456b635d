"""run(cfg): one training run from a composed config to a completed run record.

Skips a completed run, resumes an unfinished one from its last checkpoint, and records a run
that stops on a non-finite training loss as failed, with the reason. A run whose validation or test metrics
are not finite (a model that trains on short windows may overflow on a full-length record) completes; its
summary lists them under ``non_finite`` and the run's report warns.

Sweeps and clusters: a per-run file lock lets concurrent sweeps share a results_dir (each run is
trained by one process, a completed one never again); under DDP only global rank 0 locks and
writes the record, and where a launcher starts every rank (srun, submitit_local's tasks, torchrun) the
other ranks train or skip as rank 0 decided. A run stopped by SIGTERM (Ctrl-C, scancel, preemption) or by
submitit's USR2 requeue is recorded as interrupted, naming the signal, and exits non-zero; its next launch
resumes from last.ckpt, which is only written at epoch ends, so the resumed run replays the uninterrupted
one exactly."""

from __future__ import annotations

import fcntl
import hashlib
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
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


#: What rank 0 tells the other ranks of its launch when it trains the run; else it tells them why it skips it.
TRAIN = "train"
#: How long the ranks of one launch wait for each other before DDP starts: the others for rank 0's decision, rank 0
#: for each of them to have read it.
RANK_AGREEMENT_TIMEOUT_S = 600.0
#: The environment that the processes of one launch share and no other launch does: the job, step and restart of
#: SLURM, torchrun's run and restart, submitit_local's job, the rendezvous address.
LAUNCH_KEYS = (
    "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
    "SUBMITIT_LOCAL_JOB_ID", "MASTER_ADDR", "MASTER_PORT",
)  # fmt: skip


def _launcher_processes() -> int:
    """How many processes a launcher started for this run, each running it from the start: torchrun's workers,
    srun's tasks, submitit_local's tasks. 1 where Lightning starts a DDP run's other processes itself (from rank 0,
    once it trains the run)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SUBMITIT_LOCAL_NTASKS") or 1)


def _submitit_local_ranks() -> None:
    """Tell Lightning, the way torchrun does (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), that a submitit_local
    job's tasks are a DDP run's processes, one per device, as srun's tasks are on SLURM: else it starts them itself by
    re-running the command line, which in a submitit job is submitit's and cannot start a run. The rendezvous port
    follows from the job id (the pid of submitit's controller), below Linux's ephemeral ports, unless MASTER_PORT
    is set."""
    tasks = int(os.environ.get("SUBMITIT_LOCAL_NTASKS") or 1)
    if tasks == 1 or os.environ.get("SUBMITIT_EXECUTOR") != "local" or "LOCAL_RANK" in os.environ:
        return
    rank = os.environ["SUBMITIT_LOCAL_GLOBALID"]
    port = os.environ.get("MASTER_PORT") or str(15000 + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % 15000)
    os.environ.update(
        RANK=rank, LOCAL_RANK=rank, NODE_RANK="0", WORLD_SIZE=str(tasks), MASTER_ADDR="127.0.0.1", MASTER_PORT=port
    )


def _decision_file(path: Path) -> Path:
    """Where rank 0 of this launch leaves its decision on the run for the launch's other processes."""
    launch = "\n".join(f"{key}={os.environ.get(key, '')}" for key in LAUNCH_KEYS)
    return path / f".launch-{hashlib.sha1(launch.encode()).hexdigest()[:12]}"


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RANK_AGREEMENT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {RANK_AGREEMENT_TIMEOUT_S:.0f} s for {what}")
        time.sleep(0.05)


def _tell_other_ranks(path: Path, decision: str) -> None:
    """Rank 0's ``decision`` on the run (TRAIN, or why it skips) for the processes that the launcher started beside
    it; returns once each has read it, its files removed. They would otherwise each decide alone, and one that
    trains while rank 0 skips waits in DDP's rendezvous for the process group's timeout (30 minutes)."""
    processes = _launcher_processes()
    if processes == 1:
        return
    note = _decision_file(path)
    atomic_write(note, decision)
    receipts = [note.with_name(f"{note.name}.rank{rank}") for rank in range(1, processes)]
    try:
        _wait_until(lambda: all(receipt.exists() for receipt in receipts), f"ranks 1-{processes - 1} to read {note}")
    finally:
        for file in (note, *receipts):
            file.unlink(missing_ok=True)


def _rank_zero_decision(path: Path) -> str:
    """The decision of rank 0 of this launch on the run (TRAIN, or why it skips), once it has made it."""
    note = _decision_file(path)
    _wait_until(note.exists, f"the decision of rank 0 in {note}")
    decision = note.read_text()
    rank = os.environ.get("RANK") or os.environ["SLURM_PROCID"]
    atomic_write(note.with_name(f"{note.name}.rank{rank}"), "")  # read: rank 0 may remove the note
    return decision


def _sweep_launcher() -> str | None:
    """The sweep launcher (hydra/launcher) whose worker is this process: a process whose command line is the
    launcher's own, not run_experiment.py's."""
    if executor := os.environ.get("SUBMITIT_EXECUTOR"):
        return f"submitit_{executor}"
    if multiprocessing.current_process().name.startswith("LokyProcess"):
        return "joblib"
    return None


def _check_cuda_graphs(trainer: L.Trainer) -> None:
    """trainer.cuda_graphs=true (``ssm_lab.cuda_graphs``) needs one CUDA process and one batch per optimiser step."""
    if trainer.world_size != 1:
        raise ValueError(
            f"trainer.cuda_graphs=true trains in one process, and this run has {trainer.world_size} (DDP): "
            "use trainer=gpu, or trainer.cuda_graphs=false"
        )
    if trainer.accumulate_grad_batches != 1:
        raise ValueError(
            f"trainer.cuda_graphs=true needs trainer.accumulate_grad_batches=1, got "
            f"{trainer.accumulate_grad_batches}: a replayed backward writes its gradients into the buffers that an "
            "accumulated .grad may already be"
        )
    if not isinstance(trainer.accelerator, CUDAAccelerator):
        raise ValueError(
            f"trainer.cuda_graphs=true needs a CUDA GPU (trainer=gpu), got trainer.accelerator's "
            f"{type(trainer.accelerator).__name__}"
        )


def _check_processes(trainer: L.Trainer, trainer_cfg: dict[str, Any]) -> None:
    """A run of N processes (DDP) needs them started: by its launcher, beside this one (srun's or submitit_local's
    tasks, torchrun's workers), N of them; or by Lightning, which re-runs this process's command line, so only where
    that is run_experiment.py's (no sweep launcher, or the basic one)."""
    needed, started, launcher = trainer.world_size, _launcher_processes(), _sweep_launcher()
    if started == needed or (started == 1 and launcher is None):
        return
    nodes = trainer_cfg.get("num_nodes", 1)
    devices = f"trainer.devices={trainer_cfg.get('devices')}" + (f" x num_nodes={nodes}" if nodes != 1 else "")
    if launcher == "joblib":
        raise ValueError(
            f"{devices} runs {needed} DDP processes, which Lightning starts by re-running the command line, and that "
            "of a hydra/launcher=joblib worker is joblib's: launch DDP runs with hydra/launcher=submitit_local or "
            "submitit_slurm (one task per process: their tasks_per_node follows trainer.devices), or without "
            "hydra/launcher (the basic launcher, one run after another)"
        )
    if launcher is not None:
        raise ValueError(
            f"{devices} runs {needed} DDP processes, one per task of a hydra/launcher={launcher} job, and this job "
            f"has {started}: set hydra.launcher.tasks_per_node={max(needed // nodes, 1)} (the launcher's default "
            "follows trainer.devices)"
        )
    raise ValueError(
        f"the launcher started {started} processes for this run and {devices} runs {needed}: start one per process "
        "(torchrun --nproc-per-node, srun --ntasks-per-node)"
    )


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
    return summary


def _skip(path: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Skip the run (finished, or ``summary`` None: in progress in another process), saying why, and with it
    the other processes of this launch."""
    if summary is None:
        why = "run is in progress in another process"
    elif summary["status"] == "completed":
        why = "run already complete"
    else:
        why = f"run already failed ({summary.get('reason')}; remove it to retry)"
    print(f"[ssm_lab] {why}, skipped: {path}")
    _tell_other_ranks(path, why)
    return summary or read_summary(path) or {"status": "running", "run_dir": str(path)}


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
    _submitit_local_ranks()
    auto_source = OmegaConf.select(cfg, "data.source") == "auto"
    cfg = finalize(cfg)
    if auto_source:  # the run records the source that auto picked (ssm_lab.config.resolve_data_source)
        print(
            f"[ssm_lab] data.source=auto: {cfg.data.source}, from what is in {cfg.data.data_dir} "
            "(data_dir/README.md says which benchmark files go where)"
        )
    _check_run_values(cfg)
    path = run_dir(cfg)
    if not is_rank_zero():
        return _follow_rank_zero(cfg, path, callbacks)
    if summary := _finished(path):
        return _skip(path, summary)
    created = not path.exists()
    with run_lock(path) as locked:
        if not locked:
            return _skip(path, None)
        if summary := _finished(path):  # finished by another sweep between our first look and the lock
            return _skip(path, summary)
        _tell_other_ranks(path, TRAIN)
        return _train(cfg, path, read_summary(path) or {}, callbacks, created)


def _follow_rank_zero(cfg: DictConfig, path: Path, callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    """A process of rank > 0 trains the run with rank 0, or skips it with rank 0. Lightning starts its DDP
    processes from rank 0 once that trains the run; a launcher's (srun, torchrun) start with it and wait for its
    decision."""
    if _launcher_processes() > 1 and (decision := _rank_zero_decision(path)) != TRAIN:
        print(f"[ssm_lab] {decision}, skipped: {path}")
        return read_summary(path) or {"status": "running", "run_dir": str(path)}
    return _train(cfg, path, read_summary(path) or {}, callbacks)


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
    trainer_cfg = OmegaConf.to_container(cfg.trainer)
    cuda_graphs = trainer_cfg.pop("cuda_graphs", False)  # ssm_lab's, not a lightning.Trainer argument
    task = SequenceTask(
        model,
        spec,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        recurrence_lr=cfg.optim.get("recurrence_lr"),
        cuda_graphs=cuda_graphs,
    )
    logger = instantiate(cfg.logger, save_dir=str(path)) if cfg.get("logger") else False
    recorder = MetricsRecorder(path, resume_step)
    checkpointing = ModelCheckpoint(
        dirpath=path / "checkpoints", filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False,
        save_on_train_epoch_end=True,
    )  # fmt: skip
    trainer_cfg["enable_progress_bar"] = _progress_bar(trainer_cfg.get("enable_progress_bar"))
    if plugins := _cluster_plugins():
        trainer_cfg["plugins"] = plugins
    trainer: L.Trainer = instantiate(
        trainer_cfg, default_root_dir=str(path), logger=logger, callbacks=[checkpointing, recorder, *callbacks]
    )
    _check_processes(trainer, trainer_cfg)
    if cuda_graphs:
        _check_cuda_graphs(trainer)
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

    received: list[int] = []  # the requeue signal, when it came
    try:
        with _noting_signal(signal.SIGUSR2, received):
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
        record("interrupted", reason=_interruption(error, received, trainer.global_step))
        raise
    if hasattr(task.model, "certified_gain_bound"):
        from ssm_lab.models.certificate import audit  # only certified models need it

        summary.update(audit(task.model))  # certified_gain and empirical_gain
    return record("completed")


@contextmanager
def _noting_signal(signum: int, received: list[int]) -> Iterator[None]:
    """Appends ``signum`` to ``received`` when it comes, then hands it to the handler installed before: submitit's
    USR2 handler (SLURM's warning before a time limit or a preemption) requeues the job and exits with a
    SystemExit that alone does not say why the run stopped."""
    previous = signal.getsignal(signum)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield  # no handler of Python's to hand it to; and only the main thread can install one
        return

    def note(number: int, frame: Any) -> None:
        received.append(number)
        previous(number, frame)

    signal.signal(signum, note)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _interruption(error: BaseException, received: list[int], step: int) -> str:
    """Why a run stopped on ``error``: the signal it received (submitit's requeue on USR2 exits with a SystemExit),
    Ctrl-C (Lightning turns it into SystemExit(1) after its shutdown), or the error."""
    if received:
        stop = f"{signal.Signals(received[0]).name} at step {step}"
        return stop if isinstance(error, SystemExit) else f"{stop} ({type(error).__name__}: {error})"
    stop = error.__context__ if isinstance(error.__context__, KeyboardInterrupt) else error
    return f"{type(stop).__name__}: {stop}".rstrip(": ")


def _terminate(code: int, signal_error: BaseException) -> NoReturn:
    """End the process after a SIGTERM with ``code``: SystemExit, except in a joblib worker (loky), which catches
    SystemExit and lives on, idle for minutes after its sweep was stopped, holding its memory (and on a GPU its
    CUDA context, in the way of the relaunch); there the process exits at once, its record already written."""
    if _sweep_launcher() == "joblib":
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
