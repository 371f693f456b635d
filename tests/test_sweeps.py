"""Hydra multirun through the real entry point (`python run_experiment.py -m ...`, scale=smoke):
parallel runs with the joblib launcher, relaunched sweeps that skip completed runs, and two
sweeps at once into one results_dir, where every run is trained by exactly one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.plugins.launcher import Launcher
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from experiments.__main__ import main as figures_cli
from experiments.harness import Session
from ssm_lab.config import CONFIG_DIR
from ssm_lab.results import final_and_best, gather, read_metrics, read_summary

REPO = Path(__file__).resolve().parents[1]
SWEEP_TIMEOUT_S = 600


def sweep_command(results_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "run_experiment.py", "-m", "scale=smoke", "logger=none",
        f"results_dir={results_dir}", f"data_dir={results_dir.parent / 'data'}", *overrides,
    ]  # fmt: skip


def sweep_env() -> dict[str, str]:
    return {**os.environ, "CI": "1", "PYTHONUNBUFFERED": "1"}


def run_sweep(results_dir: Path, *overrides: str) -> str:
    """Runs a sweep to the end; returns its output, failing the test (with the output) if it fails."""
    done = subprocess.run(
        sweep_command(results_dir, *overrides), cwd=REPO, env=sweep_env(), capture_output=True, text=True,
        timeout=SWEEP_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def run_dirs_by_seed(results_dir: Path) -> dict[int, Path]:
    return {read_summary(path)["seed"]: path for path in sorted((results_dir / "runs" / "default").iterdir())}


def assert_complete_record(path: Path) -> None:
    """A finished run's files agree with each other: one row per (step, split, metric), the last
    step is the budget, and the summary's metrics are those of metrics.csv."""
    summary, rows = read_summary(path), read_metrics(path)
    assert summary["status"] == "completed", summary
    assert summary["steps"] == 40
    keys = [(row["step"], row["split"], row["metric"]) for row in rows]
    assert len(keys) == len(set(keys)), f"duplicate metric rows in {path}"
    assert max(step for step, _, _ in keys) == 40
    assert (summary["final"], summary["best"]) == final_and_best(rows)
    assert (path / "config.yaml").exists()


def test_joblib_sweep_then_two_concurrent_relaunches_train_each_run_once(tmp_path):
    results = tmp_path / "results"
    output = run_sweep(results, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1")
    assert "Joblib.Parallel" in output  # the runs went through joblib's workers
    first = run_dirs_by_seed(results)
    assert sorted(first) == [0, 1]
    for path in first.values():
        assert_complete_record(path)
    written = {seed: (path / "summary.json").stat().st_mtime_ns for seed, path in first.items()}

    # The same sweep, grown by two seeds, launched twice at once: completed runs are skipped by
    # both, and each new run is trained by one of them while the other skips or waits it out.
    sweeps = [
        subprocess.Popen(
            sweep_command(results, "seed=0,1,2,3"),
            cwd=REPO,
            env=sweep_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [sweep.communicate(timeout=SWEEP_TIMEOUT_S)[0] for sweep in sweeps]
    for sweep, output in zip(sweeps, outputs, strict=True):
        assert sweep.returncode == 0, output

    paths = run_dirs_by_seed(results)
    assert sorted(paths) == [0, 1, 2, 3]
    for seed, path in paths.items():
        assert_complete_record(path)
        trained_by = sum(output.count(f"[ssm_lab] completed: {path}\n") for output in outputs)
        if seed in first:
            assert trained_by == 0
            assert (path / "summary.json").stat().st_mtime_ns == written[seed]
            assert all(f"run already complete, skipped: {path}" in output for output in outputs)
        else:
            assert trained_by == 1, outputs
    table = gather(results)
    assert sorted(table["seed"]) == [0, 1, 2, 3]
    assert set(table["status"]) == {"completed"}


def hydra_config(*overrides: str, config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The hydra node of `run_experiment.py -m OVERRIDES`: its launcher, callbacks, ..."""
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose("config", overrides=["scale=smoke", *overrides], return_hydra_config=True).hydra


def launcher_config(*overrides: str, config_dir: Path = CONFIG_DIR) -> DictConfig:
    """hydra.launcher of `run_experiment.py -m OVERRIDES`, as the launcher plugin receives it."""
    return hydra_config(*overrides, config_dir=config_dir).launcher


def test_a_stopped_joblib_sweep_leaves_no_worker_behind(tmp_path):
    """SIGTERM to the sweep's process group (what ``timeout`` and SLURM send): each run is recorded interrupted and
    every process of the sweep exits. joblib's workers used to catch the runs' SystemExit and live on, idle,
    holding their memory (a CUDA context on a GPU) for minutes."""
    import signal
    import time

    results = tmp_path / "results"
    command = sweep_command(
        results, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "trainer.max_steps=100000"
    )
    sweep = subprocess.Popen(
        command, cwd=REPO, env=sweep_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while len(list(results.glob("runs/*/*/checkpoints/last.ckpt"))) < 2:  # both runs are training
        assert sweep.poll() is None and time.monotonic() < deadline, "the sweep did not start both runs"
        time.sleep(0.5)
    os.killpg(sweep.pid, signal.SIGTERM)
    sweep.wait(timeout=120)

    def members() -> list[str]:
        listing = subprocess.run(["ps", "-eo", "sid=,pid=,args="], capture_output=True, text=True).stdout.splitlines()
        return [line for line in listing if line.split()[0] == str(sweep.pid)]

    for _ in range(60):  # the workers exit within seconds of their run's record
        if not members():
            break
        time.sleep(0.5)
    assert not members(), "\n".join(members())
    assert {read_summary(path)["status"] for path in run_dirs_by_seed(results).values()} == {"interrupted"}


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm"])
def test_launcher_configs_build_their_plugins(launcher):
    assert issubclass(get_class(launcher_config(f"hydra/launcher={launcher}")._target_), Launcher)


@pytest.mark.parametrize("launcher", ["submitit_local", "submitit_slurm"])
def test_submitit_launchers_run_one_task_per_ddp_process(launcher):
    assert launcher_config(f"hydra/launcher={launcher}").tasks_per_node == 1
    assert launcher_config(f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4").tasks_per_node == 4


def test_slurm_site_values_come_from_configs_local(tmp_path):
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir, ignore=shutil.ignore_patterns("local"))
    assert launcher_config("hydra/launcher=submitit_slurm", config_dir=config_dir).partition is None
    (config_dir / "local").mkdir()
    shutil.copy(CONFIG_DIR.parent / "configs" / "local.example" / "slurm.yaml", config_dir / "local" / "slurm.yaml")
    site = launcher_config("hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=3", config_dir=config_dir)
    assert (site.partition, site.account, site.gpus_per_node) == ("gpu", "my_lab", 1)
    assert site.cpus_per_task == 3  # the command line still wins over the site file


def test_unknown_launcher_names_the_available_ones():
    with pytest.raises(MissingConfigException, match="hydra/launcher/slurm") as error:
        launcher_config("hydra/launcher=slurm")
    for choice in ("basic", "joblib", "submitit_local", "submitit_slurm"):
        assert choice in str(error.value)


def test_a_sweep_with_zero_runs_is_an_error(tmp_path):
    done = subprocess.run(
        sweep_command(tmp_path / "results", "seed=range(0,0)"), cwd=REPO, env=sweep_env(), capture_output=True,
        text=True, timeout=SWEEP_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode != 0
    assert "the sweep launched zero runs" in done.stderr and "seed=range(0,0)" in done.stderr
    assert not (tmp_path / "results" / "runs").exists()


def test_slurm_launcher_checks_for_slurm_commands_before_a_sweep(monkeypatch):
    """Without sbatch, srun or sinfo on PATH, a SLURM sweep stops before it starts, in one line saying what to do
    (submitit ended in a traceback: 'Could not detect "srun", are you indeed on a slurm cluster?')."""
    callbacks = hydra_config("hydra/launcher=submitit_slurm").callbacks
    assert set(callbacks) == {"require_jobs", "require_slurm_cluster"}  # only this launcher's sweeps check for SLURM
    assert set(hydra_config("hydra/launcher=submitit_local").callbacks) == {"require_jobs"}
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # python, and no SLURM client
    with pytest.raises(SystemExit) as stopped:
        instantiate(callbacks.require_slurm_cluster).on_multirun_start(config=hydra_config())
    assert str(stopped.value) == (
        "error: hydra/launcher=submitit_slurm needs SLURM's sbatch, srun, sinfo, not on PATH here; launch from a "
        "machine of the cluster (SLURM_CONF names its slurm.conf where it is not found), or sweep here with "
        "hydra/launcher=submitit_local or hydra/launcher=joblib"
    )


def test_slurm_launcher_where_no_cluster_answers_fails_in_one_line(tmp_path):
    """sbatch on PATH, and no cluster: no slurm.conf (SLURM_CONF unset, none in /etc/slurm), no DNS record of one.
    submitit used to end in a 40-line traceback at the first submission."""
    if missing := [command for command in ("sbatch", "srun", "sinfo") if shutil.which(command) is None]:
        pytest.skip(f"no SLURM client ({', '.join(missing)}) on PATH; scripts/slurm/start.sh installs one")
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("this machine has /etc/slurm/slurm.conf: a cluster may answer")
    env = {key: value for key, value in sweep_env().items() if key != "SLURM_CONF"}
    done = subprocess.run(
        sweep_command(tmp_path / "results", "hydra/launcher=submitit_slurm"), cwd=REPO, env=env, capture_output=True,
        text=True, timeout=SWEEP_TIMEOUT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert (
        "error: hydra/launcher=submitit_slurm: no SLURM cluster answers here (sinfo: fatal: Could not establish a "
        "configuration source); launch from a machine of the cluster"
    ) in output
    assert "Traceback" not in output, output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("launcher", "name"), [("slurm", "submitit_slurm"), ("local", "submitit_local")])
def test_figures_refuse_a_launcher_option_the_launcher_lacks_naming_the_one_that_has_it(
    launcher, name, capsys, tmp_path
):
    """`python -m experiments --set hydra.launcher.n_jobs=2` is joblib's; with another launcher every run used to fail
    in Hydra, one by one."""
    folders = ["--results-dir", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data"), "--no-launch"]
    with pytest.raises(SystemExit):
        figures_cli(["--launcher", launcher, "--set", "hydra.launcher.n_jobs=2", *folders])
    error = capsys.readouterr().err
    assert f"--set hydra.launcher.n_jobs=2: the {name} launcher has no option 'n_jobs' (its options: " in error
    assert "timeout_min, cpus_per_task" in error and error.rstrip().endswith("n_jobs is an option of --launcher joblib")
    with pytest.raises(SystemExit):
        figures_cli(["--launcher", launcher, "--set", "hydra.launcher.no_such_option=1", *folders])
    assert capsys.readouterr().err.rstrip().endswith("; no launcher has it")
    assert not (tmp_path / "results").exists()  # refused before anything was drawn


def test_figures_accept_the_options_their_launcher_has(tmp_path):
    for launcher, option in [("joblib", "n_jobs=2"), ("slurm", "partition=gpu"), ("local", "timeout_min=5")]:
        session = Session("smoke", tmp_path, tmp_path, launcher=launcher, extra=(f"hydra.launcher.{option}",))
        assert session.launch_overrides()[-1] == f"hydra.launcher.{option}"
