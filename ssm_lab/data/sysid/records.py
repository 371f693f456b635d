"""An input-output record of a system-identification benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Record:
    """u: (L, d_u) inputs, y: (L, d_y) outputs in the benchmark's reporting units, one sample
    every ``sampling_time`` seconds."""

    u: np.ndarray
    y: np.ndarray
    sampling_time: float
    name: str

    def __post_init__(self) -> None:
        if self.u.ndim != 2 or self.y.ndim != 2:
            raise ValueError(
                f"record {self.name!r}: u and y must be (L, d), got shapes {self.u.shape} and {self.y.shape}"
            )
        if len(self.u) != len(self.y):
            raise ValueError(f"record {self.name!r}: u has {len(self.u)} samples but y has {len(self.y)}")
        if not (np.isfinite(self.u).all() and np.isfinite(self.y).all()):
            raise ValueError(f"record {self.name!r}: u or y holds NaN or Inf")
        if not (math.isfinite(self.sampling_time) and self.sampling_time > 0):  # NaN fails both comparisons
            raise ValueError(
                f"record {self.name!r}: sampling_time must be a positive finite number of s, got {self.sampling_time}"
            )

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, part: slice) -> Record:
        return Record(self.u[part], self.y[part], self.sampling_time, self.name)


def column(values: np.ndarray) -> np.ndarray:
    """A 1-D signal as an (L, 1) float64 column."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)
