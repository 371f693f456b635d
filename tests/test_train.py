"""End-to-end runs through the real config: learning, run records, skip, resume, determinism."""

import json
import math
import os
import warnings
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

from ssm_lab.results import final_and_best, gather, run_dir


def _record(summary: dict, config) -> Path:
    return run_dir(config)


def test_run_learns_easy_a5_and_writes_its_record(make_config, train):
    overrides = ("scale.seq_len=3", "trainer.max_steps=150", "scale.eval_every=50")
    summary = train(*overrides)
    path = run_dir(make_config(*overrides))
    assert summary["status"] == "completed"
    assert {p.name for p in path.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json", "checkpoints"}
    metrics = pd.read_csv(path / "metrics.csv")
    assert list(metrics.columns) == ["step", "split", "metric", "value"]
    val_loss = metrics.query("split == 'val' and metric == 'loss'").sort_values("step")["value"].tolist()
    assert val_loss[-1] < val_loss[0] - 0.1
    # chance is 1/60; the first token of each word is a copy, so an easy word length is learnable
    assert summary["final"]["val/accuracy"] > 0.2 and summary["final"]["test/accuracy"] > 0.2
    stored = json.loads((path / "summary.json").read_text())
    for key in ("seed", "parameters", "wall_time_s", "device", "package_version", "git_commit", "final", "best"):
        assert key in stored, key
    assert stored["best"]["val/accuracy"] >= stored["final"]["val/accuracy"]
    assert stored["parameters"] > 0 and stored["device"] == "cpu"


def test_run_id_is_readable_and_follows_the_config(make_config):
    base, seeded, wider = make_config(), make_config("seed=3"), make_config("model.d_model=16")
    assert run_dir(base).name.startswith("l2n-A5-s0-")
    assert run_dir(seeded).name.startswith("l2n-A5-s3-")
    assert len({run_dir(c).name for c in (base, seeded, wider)}) == 3
    assert run_dir(make_config()) == run_dir(base)  # same config, same folder: never a timestamp
    assert run_dir(make_config("logger=csv")) == run_dir(base)  # where it is logged is not what it computes
    assert run_dir(make_config("model.gamma=1.0")) == run_dir(make_config("model.gamma=1"))  # one number, one run
    # nor where its data are read from: the data group's data_dir follows the top-level one
    elsewhere = make_config("data_dir=/somewhere/else")
    assert elsewhere.data.data_dir == "/somewhere/else" and run_dir(elsewhere) == run_dir(base)


def test_rerun_skips_a_completed_run_and_changes_nothing(make_config, train, capsys):
    train()
    path = run_dir(make_config())
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    capsys.readouterr()
    summary = train()
    assert "already complete" in capsys.readouterr().out
    assert summary["status"] == "completed"
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before
    assert len(list(path.parent.iterdir())) == 1


def test_same_seed_same_metrics(make_config, tmp_path):
    from ssm_lab.config import compose_config
    from ssm_lab.train import run

    tables = []
    for folder in ("a", "b"):
        cfg = compose_config(["scale=smoke", "logger=none", f"results_dir={tmp_path / folder}"])
        run(cfg)
        tables.append((run_dir(cfg) / "metrics.csv").read_text())
    assert tables[0] == tables[1]


class _CrashAfter(L.Callback):
    """Kills training once it has passed ``step``, as a crash or a lost node would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated crash")


class _StopAt(L.Callback):
    """At ``step``, Ctrl-C (``interrupt``) or a graceful stop such as trainer.max_time's or early stopping's."""

    def __init__(self, step: int, interrupt: bool) -> None:
        self.step, self.interrupt = step, interrupt

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            if self.interrupt:
                raise KeyboardInterrupt
            trainer.should_stop = True


@pytest.mark.parametrize("interrupt", [True, False])
def test_a_run_stopped_before_max_steps_is_recorded_interrupted_with_why(make_config, tmp_path, interrupt):
    from ssm_lab.config import compose_config
    from ssm_lab.train import run

    cfg = compose_config(["scale=smoke", "logger=none", "trainer.max_steps=60", f"results_dir={tmp_path}"])
    if interrupt:  # Lightning shuts down and exits 1 on Ctrl-C
        with pytest.raises(SystemExit):
            run(cfg, callbacks=[_StopAt(step=10, interrupt=True)])
        summary = json.loads((run_dir(cfg) / "summary.json").read_text())
    else:
        summary = run(cfg, callbacks=[_StopAt(step=10, interrupt=False)])
    assert summary["status"] == "interrupted"
    assert summary["reason"] == ("KeyboardInterrupt" if interrupt else "stopped at step 10 of 60")
    assert not any(key.startswith("test/") for key in summary["final"])  # never tested as if complete


def test_interrupted_run_resumes_from_its_checkpoint_to_the_same_metrics(make_config, tmp_path):
    from ssm_lab.config import compose_config
    from ssm_lab.train import run

    overrides = ["scale=smoke", "logger=none", "trainer.max_steps=60"]
    whole = compose_config([*overrides, f"results_dir={tmp_path / 'whole'}"])
    run(whole)
    parts = compose_config([*overrides, f"results_dir={tmp_path / 'parts'}"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(parts, callbacks=[_CrashAfter(step=30)])  # dies mid-epoch, after the step-20 checkpoint
    first = json.loads((run_dir(parts) / "summary.json").read_text())
    assert first["status"] == "interrupted" and "simulated crash" in first["reason"]
    second = run(parts)
    assert second["status"] == "completed" and second["resumed_from_step"] == 20
    assert (run_dir(parts) / "metrics.csv").read_text() == (run_dir(whole) / "metrics.csv").read_text()


def test_gather_returns_one_row_per_run(make_config, train, tmp_path):
    train()
    train("seed=1")
    df = gather(tmp_path / "results")
    assert len(df) == 2
    assert sorted(df["seed"]) == [0, 1]
    assert {"model.d_model", "choices.model", "final.val/accuracy", "best.val/loss", "status"} <= set(df.columns)
    curves = gather(tmp_path / "results", metrics=True)
    assert set(curves["split"]) == {"train", "val", "test"} and curves["run_dir"].nunique() == 2


def test_gather_of_an_empty_folder_is_an_empty_table(tmp_path):
    assert gather(tmp_path).empty


def test_an_unreadable_summary_is_an_error_naming_its_file(make_config, train, tmp_path):
    train()
    summary = run_dir(make_config()) / "summary.json"
    summary.write_text("")
    with pytest.raises(ValueError, match=f"unreadable run summary {summary}"):
        gather(tmp_path / "results")
    with pytest.raises(ValueError, match=f"unreadable run summary {summary}"):
        train()


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_loggers_write_into_the_run_folder(make_config, train, logger, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = train(f"logger={logger}")
    assert summary["status"] == "completed"
    path = run_dir(make_config())
    expected = {
        "csv": "lightning_csv/metrics.csv",
        "tensorboard": "tensorboard/events.out.tfevents.*",
        "wandb": "wandb/offline-run-*",
    }
    assert list(path.glob(expected[logger])), sorted(p.name for p in path.iterdir())


def test_a_cpu_run_keeps_freed_memory_for_its_next_steps(make_config, train, monkeypatch):
    """ssm_lab.cpu_memory.keep_freed_memory (tested in test_cpu_memory.py) is called once by a CPU run."""
    import ssm_lab.train

    calls = []
    monkeypatch.setattr(ssm_lab.train, "keep_freed_memory", lambda: calls.append(True) or True)
    assert train("scale.seq_len=3", "trainer.max_steps=2", "scale.eval_every=2")["status"] == "completed"
    assert calls == [True]


def test_best_metrics_skip_nan_and_infinite_values():
    rows = [
        {"step": 10, "split": "val", "metric": "loss", "value": float("nan")},
        {"step": 20, "split": "val", "metric": "loss", "value": 0.5},
        {"step": 30, "split": "val", "metric": "loss", "value": float("-inf")},
        {"step": 10, "split": "val", "metric": "accuracy", "value": float("nan")},
    ]
    final, best = final_and_best(rows)
    assert best == {"val/loss": 0.5}  # accuracy was never finite: no best
    assert math.isinf(final["val/loss"]) and math.isnan(final["val/accuracy"])


def test_a_run_whose_evaluation_overflows_completes_and_says_which_metrics_are_not_finite(train, capsys):
    """The Linear CDE (init_std 0.5: log|h| grows ~0.5 a step on a slowly varying input) trains on windows of 64
    steps of Silverbox but overflows float32 on its 1024-step validation and test records."""
    summary = train("model=lcde", "data=silverbox")
    assert summary["status"] == "completed"
    assert summary["non_finite"] == [f"{split}/{metric}" for split in ("test", "val") for metric in
                                     ("fit_index", "loss", "nrmse", "rmse")]  # fmt: skip
    assert all(math.isfinite(summary["final"][f"train/{metric}"]) for metric in ("loss", "rmse"))
    assert "val/loss" not in summary["best"]
    assert "[ssm_lab] warning: not finite: test/fit_index, test/loss" in capsys.readouterr().out
    assert train()["non_finite"] == []  # the default run: everything finite


def test_lightning_srun_hint_is_kept_only_inside_a_slurm_job(train, tmp_path, monkeypatch):
    """With srun on the PATH, Lightning warns that it was not used: noise on a login node or in CI (ssm_lab reaches
    SLURM through submitit), kept inside a SLURM job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for seed, job in ((0, None), (1, "1234")):
        if job is None:
            monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        else:
            monkeypatch.setenv("SLURM_JOB_ID", job)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(f"seed={seed}")
        assert any("`srun` command is available" in str(warning.message) for warning in caught) == (job is not None)


def test_train_metrics_are_each_epochs_over_all_its_batches(make_config, train):
    """Each training epoch's accuracy (train/accuracy at each evaluation, the partial last epoch included) equals
    the accuracy over all of that epoch's batches, counted here by a callback that runs the model before each
    step (the default l2n has no dropout: the same predictions as the step's), and its train/loss is the loss of
    its last step, also where that step is not one the loggers write (every 10)."""
    import torch

    class Counted(L.Callback):
        def __init__(self) -> None:
            self.correct, self.total, self.loss, self.epochs = 0, 0, None, []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            with torch.no_grad():
                predictions = pl_module.model(batch["inputs"]).argmax(-1)
            self.correct += int((predictions == batch["targets"]).sum())
            self.total += batch["targets"].numel()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.loss = float(outputs["loss"])

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs.append((trainer.global_step, self.correct / self.total, self.loss))
            self.correct, self.total = 0, 0

    counted = Counted()
    overrides = ("scale.eval_every=15", "trainer.max_steps=40")  # epochs of 15 steps: 15, 30, then 10
    assert train(*overrides, callbacks=[counted])["status"] == "completed"
    metrics = pd.read_csv(run_dir(make_config(*overrides)) / "metrics.csv").query("split == 'train'")
    accuracy = metrics.query("metric == 'accuracy'").sort_values("step")
    loss = metrics.query("metric == 'loss'").sort_values("step")
    assert [step for step, *_ in counted.epochs] == accuracy["step"].tolist() == loss["step"].tolist() == [15, 30, 40]
    assert accuracy["value"].tolist() == pytest.approx([value for _, value, _ in counted.epochs], abs=1e-6)
    assert loss["value"].tolist() == pytest.approx([value for *_, value in counted.epochs], rel=1e-6)
