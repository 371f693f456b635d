"""The system-identification data module: per-step regression u -> y on one benchmark.

Training samples random sub-windows of the training record (all but its last ``val_fraction``);
validation simulates that held-out tail in one go, and test the whole chosen test record
(simulation mode: one long sequence from the model's zero state), both with the benchmark's
warm-up left out of the error (``TaskSpec.eval_warmup``). Inputs and targets are normalised by
the training part's mean and std; the TaskSpec carries the target scaling so that RMSE is
reported in the benchmark's units.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssm_lab.data.cache import cached_arrays
from ssm_lab.data.loading import SplitDataModule, TensorDictDataset
from ssm_lab.data.spec import TaskSpec
from ssm_lab.data.sysid.benchmarks import BENCHMARKS, Benchmark
from ssm_lab.data.sysid.records import Record
from ssm_lab.validation import check_positive

log = logging.getLogger(__name__)
SOURCES = ("auto", "file", "simulate")
SIMULATOR_VERSION = 1  # bump when a simulator changes, so cached records are regenerated


class WindowDataset(Dataset):
    """Every run of ``window`` consecutive samples: item i = {"inputs": (window, d_u),
    "targets": (window, d_y)} starting at sample i."""

    def __init__(self, inputs: Tensor, targets: Tensor, window: int) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs have {len(inputs)} samples but targets {len(targets)}")
        if not 0 < window <= len(inputs):
            raise ValueError(f"window must be in 1..{len(inputs)} (the record's length), got {window}")
        self.inputs, self.targets, self.window = inputs, targets, window

    def __len__(self) -> int:
        return len(self.inputs) - self.window + 1

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"inputs": self.inputs[i : i + self.window], "targets": self.targets[i : i + self.window]}


def cached_simulation(benchmark: Benchmark, seed: int, record_length: int | None, cache_dir: Path) -> dict[str, Record]:
    """The benchmark's simulator output, cached in ``cache_dir`` under (seed, record_length)."""
    params = {"benchmark": benchmark.name, "seed": seed, "record_length": record_length, "version": SIMULATOR_VERSION}

    def build() -> dict[str, np.ndarray]:
        records = benchmark.simulate(seed, record_length)
        return {f"{name}/{part}": getattr(r, part) for name, r in records.items() for part in ("u", "y")}

    arrays = cached_arrays(cache_dir, "simulated", params, build)
    names = {key.split("/")[0] for key in arrays}
    kind = f"{benchmark.simulator_kind}, seed {seed}"
    return {
        name: Record(
            arrays[f"{name}/u"], arrays[f"{name}/y"], benchmark.sampling_time, f"{benchmark.name} {name} ({kind})"
        )
        for name in sorted(names)
    }


def _missing_files(benchmark: Benchmark, directory: Path) -> list[str]:
    return [name for name in benchmark.files if not (directory / name).exists()]


class SysIdDataModule(SplitDataModule):
    """Batches: train {"inputs": (B, window, d_u), "targets": (B, window, d_y)}; val and test
    one sequence each, (1, L, d). ``source``: "file" reads the official files from
    ``data_dir/sysid/<benchmark>/``, "simulate" runs the simulator (seeded by ``seed``, records
    capped at ``record_length`` samples, cached), "auto" reads the files when all are there."""

    def __init__(
        self,
        benchmark: str,
        window: int = 1024,
        record_length: int | None = None,
        val_fraction: float = 0.2,
        test_record: str | None = None,
        source: str = "auto",
        batch_size: int = 32,
        steps_per_epoch: int = 100,
        seed: int = 0,
        shuffle_seed: int = 0,
        data_dir: str = "data_dir",
    ) -> None:
        super().__init__(batch_size, steps_per_epoch, shuffle_seed)
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
        self.benchmark = BENCHMARKS[benchmark]
        test_record = test_record or self.benchmark.test_records[0]
        if test_record not in self.benchmark.test_records:
            allowed = ", ".join(self.benchmark.test_records)
            raise ValueError(f"unknown test_record {test_record!r} for {benchmark}; choose one of {allowed}")
        check_positive(window=window)
        if record_length is not None:
            check_positive(record_length=record_length)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.window, self.record_length, self.val_fraction, self.test_record = (
            window,
            record_length,
            val_fraction,
            test_record,
        )
        self.seed, self.directory = seed, Path(data_dir) / "sysid" / benchmark
        missing = _missing_files(self.benchmark, self.directory)
        where = f"put {', '.join(self.benchmark.files)} in {self.directory} (see data_dir/README.md)"
        if source == "file" and missing:
            raise FileNotFoundError(f"{benchmark}: missing {', '.join(missing)}; {where} or use source=simulate")
        self.from_files = source == "file" or (source == "auto" and not missing)  # as auto_source says
        if source == "auto" and missing:
            log.warning(
                "%s: official files not found, using the %s instead; to use them, %s",
                benchmark,
                self.benchmark.simulator_kind,
                where,
            )
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @staticmethod
    def auto_source(data: Mapping[str, Any]) -> str:
        """The source "auto" picks for the data config ``data``: "file" when all the benchmark's official files
        are in ``data_dir/sysid/<benchmark>``, else "simulate" ("auto" itself for an unknown benchmark, which
        the constructor names)."""
        if data["benchmark"] not in BENCHMARKS:
            return "auto"
        directory = Path(data.get("data_dir", "data_dir")) / "sysid" / data["benchmark"]
        return "simulate" if _missing_files(BENCHMARKS[data["benchmark"]], directory) else "file"

    def _records(self) -> dict[str, Record]:
        cache = self.directory
        if not self.from_files:
            return cached_simulation(self.benchmark, self.seed, self.record_length, cache)
        records = self.benchmark.load(self.directory)
        if self.benchmark.train_from_simulator:
            records["train"] = cached_simulation(self.benchmark, self.seed, self.record_length, cache)["train"]
        return records

    def _prepare(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Normalised (u, y) per split, and the training part's statistics."""
        if self._splits is not None:
            return self._splits
        records = self._records()
        train_record, test = records["train"], records[self.test_record]
        num_val = int(len(train_record) * self.val_fraction)
        train, val = train_record[: len(train_record) - num_val], train_record[len(train_record) - num_val :]
        warmup = self.benchmark.warmup
        if self.window > len(train):
            raise ValueError(
                f"window {self.window} is longer than the {len(train)}-sample training part of {train.name}"
            )
        if self.window <= warmup:
            raise ValueError(f"window {self.window} must exceed the warm-up of {warmup} samples, or no step counts")
        for part, record in (("val", val), ("test", test)):
            if len(record) <= warmup:
                raise ValueError(
                    f"the {part} record ({record.name}) has {len(record)} samples, not more than the warm-up {warmup}"
                )
        if train.u.shape[1] != test.u.shape[1] or train.y.shape[1] != test.y.shape[1]:
            raise ValueError(
                f"train and test records differ in dimensions: u {train.u.shape[1]} vs {test.u.shape[1]}, "
                f"y {train.y.shape[1]} vs {test.y.shape[1]}"
            )
        self.u_mean, self.u_std = train.u.mean(axis=0), _safe_std(train.u)
        self.y_mean, self.y_std = train.y.mean(axis=0), _safe_std(train.y)
        self._splits = {
            split: ((r.u - self.u_mean) / self.u_std, (r.y - self.y_mean) / self.y_std)
            for split, r in (("train", train), ("val", val), ("test", test))
        }
        return self._splits

    @property
    def spec(self) -> TaskSpec:
        u, y = self._prepare()["train"]
        return TaskSpec(
            name=self.benchmark.name,
            input_kind="continuous",
            output_kind="step_regression",
            d_input=u.shape[1],
            d_output=y.shape[1],
            eval_warmup=self.benchmark.warmup,
            units=self.benchmark.units,
            target_scale=tuple(float(s) for s in self.y_std),
            target_offset=tuple(float(m) for m in self.y_mean),
        )

    def build_split(self, split: str) -> Dataset:
        u, y = (torch.from_numpy(a.astype(np.float32)) for a in self._prepare()[split])
        if split == "train":
            return WindowDataset(u, y, self.window)
        return TensorDictDataset(inputs=u.unsqueeze(0), targets=y.unsqueeze(0))


def _safe_std(values: np.ndarray) -> np.ndarray:
    """Per-channel std; a constant channel keeps scale 1 rather than dividing by zero."""
    std = values.std(axis=0)
    return np.where(std > 0, std, 1.0)
