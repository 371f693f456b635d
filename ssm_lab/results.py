"""Run records: where a run lives, its files (written atomically), and ``gather`` of all runs
into one pandas DataFrame from which every figure is drawn.

<results_dir>/runs/<experiment>/<run_id>/
    config.yaml    the resolved config
    metrics.csv    long format: step, split, metric, value
    summary.json   status, final and best metrics (non_finite: the final ones that are NaN or infinite), seed,
                   parameters, wall time, device, processes (DDP) and batch size per process, version, commit
    checkpoints/   last.ckpt of an unfinished run
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ssm_lab.metrics import METRIC_MODES

#: Keys that say where or how a run is recorded, not what it computes: left out of the run_id (the data group's
#: ``data_dir`` too: the same data read from another folder is the same run).
NON_IDENTITY_KEYS = ("results_dir", "data_dir", "logger", "choices", "tags")
NON_IDENTITY_GROUP_KEYS = {"trainer": ("enable_progress_bar",), "data": ("data_dir",)}
SUMMARY, CONFIG, METRICS = "summary.json", "config.yaml", "metrics.csv"
METRIC_COLUMNS = ("step", "split", "metric", "value")


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """The part of a resolved config that determines a run's results."""
    identity = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_IDENTITY_KEYS:
        identity.pop(key, None)
    for group, keys in NON_IDENTITY_GROUP_KEYS.items():
        for key in keys:
            identity.get(group, {}).pop(key, None)
    return identity


def _integral_floats_as_ints(value: Any) -> Any:
    """1.0 -> 1 throughout: ``model.gamma=1`` and ``model.gamma=1.0`` are the same run."""
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def run_id(cfg: DictConfig) -> str:
    """Readable prefix (model, data, seed) + 10 hex digits of the hash of the run's identity (a number written as
    1 or 1.0 hashes alike)."""
    text = json.dumps(_integral_floats_as_ints(run_identity(cfg)), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    choices = cfg.get("choices") or {}
    parts = [choices.get("model"), choices.get("data"), f"s{cfg.seed}"]
    prefix = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(p)) for p in parts if p is not None)
    return f"{prefix}-{digest}"


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / "runs" / str(cfg.name) / run_id(cfg)


def read_summary(path: Path) -> dict[str, Any] | None:
    """The run's summary.json, None when it has none; an unreadable one is an error naming the file (it is written
    atomically, so only something outside ssm_lab can have broken it)."""
    file = path / SUMMARY
    if not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        advice = "move the run folder away or repair the file"
        raise ValueError(f"unreadable run summary {file}: {error}; {advice}") from error


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write(path / SUMMARY, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    file = path / METRICS
    if not file.exists():
        return []
    with file.open() as f:
        return [{**row, "step": int(row["step"]), "value": float(row["value"])} for row in csv.DictReader(f)]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in METRIC_COLUMNS} for row in rows)
    atomic_write(path / METRICS, buffer.getvalue())


def final_and_best(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Last value of every split/metric, and the best finite value of every validation metric (a NaN or an
    infinity is never the best, and a metric that was never finite has none)."""
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r["step"]):
        key = f"{row['split']}/{row['metric']}"
        final[key] = row["value"]
        mode = METRIC_MODES.get(row["metric"])
        if row["split"] == "val" and mode is not None and math.isfinite(row["value"]):
            better = min if mode == "min" else max
            best[key] = better(best.get(key, row["value"]), row["value"])
    return final, best


class MetricsRecorder(L.Callback):
    """Appends epoch-level metrics (train, val, test) to metrics.csv in long format.

    On resume, rows past the checkpoint's step are dropped, so a resumed run's file equals an
    uninterrupted run's."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        self.rows = [r for r in read_metrics(path) if r["step"] <= resume_step]

    def _record(self, trainer: L.Trainer, splits: tuple[str, ...]) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        for name, value in sorted(trainer.callback_metrics.items()):
            split, _, metric = name.partition("/")
            if split in splits and metric:
                self.rows = [r for r in self.rows if (r["step"], r["split"], r["metric"]) != (step, split, metric)]
                self.rows.append({"step": step, "split": split, "metric": metric, "value": float(value)})
        write_metrics(self.path, self.rows)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, ("val",))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, ("train",))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, ("test",))


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value if not isinstance(value, list) else str(value)


def gather(results_dir: str | Path, metrics: bool = False) -> pd.DataFrame:
    """One row per run: config keys flattened (``model.d_model``), summary fields, final metrics
    (``final.val/accuracy``) and best ones (``best.val/accuracy``). ``metrics=True`` returns the
    long learning-curve table of every run instead (run_dir, step, split, metric, value)."""
    rows = []
    for summary_file in sorted(Path(results_dir).glob(f"runs/*/*/{SUMMARY}")):
        path = summary_file.parent
        if metrics:
            rows.extend({"run_dir": str(path), **r} for r in read_metrics(path))
            continue
        row: dict[str, Any] = {"run_dir": str(path)}
        config_file = path / CONFIG
        if config_file.exists():
            _flatten("", OmegaConf.to_container(OmegaConf.load(config_file), resolve=False), row)
        _flatten("", read_summary(path), row)
        rows.append(row)
    columns = ["run_dir", *METRIC_COLUMNS] if metrics else ["run_dir"]
    return pd.DataFrame(rows, columns=None if rows else columns)
