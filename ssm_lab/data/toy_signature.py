"""Toy signature-regression paths (Cirone et al. 2024, "Theoretical Foundations of Deep Selective
State-Space Models", Figure 1): regress one signature term of a random walk from its values.

Recipe: increments are standard Gaussians rounded to integers, summed into paths of ``seq_len``
points and scaled by the largest |value| over the dataset; the label is S^{12} (``dim=2``) or
S^{123} (``dim=3``) of the piecewise-linear path through those points (exact, by Chen's
identity, ``ssm_lab.ops.signature``), scaled by its largest |value| over the dataset.

``inputs="increments"`` gives a model the path's increments instead of its values: 0 at the first
point, X_t - X_{t-1} after it, scaled to unit RMS over the dataset. They are the control a Linear
CDE integrates (the paper drives its LCDE by dX), while the other models read the values; summed,
they give back the labelled path X_1..X_L moved to start at 0, the same signature (it is
translation-invariant, and a scaled path only rescales the term, which the labels' normalisation
removes). A first increment of X_1 - 0 would add a segment from the origin that the label does
not hold.
"""

from __future__ import annotations

import numpy as np
import torch

from ssm_lab.data.loading import SplitDataModule, TensorDictDataset
from ssm_lab.data.spec import TaskSpec
from ssm_lab.ops.signature import signature_term
from ssm_lab.validation import check_positive

#: The label's signature word per path dimension (channels 0-based: (0, 1) is S^{12}).
WORDS = {2: (0, 1), 3: (0, 1, 2)}
#: What a model reads of each path: its values, or its increments (unit RMS), see the module docstring.
INPUTS = ("values", "increments")


def toy_signature_paths(num_paths: int, seq_len: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(paths: (num_paths, seq_len, dim) float32 in [-1, 1], labels: (num_paths,) float32 in [-1, 1])."""
    if dim not in WORDS:
        raise ValueError(f"dim must be one of {', '.join(map(str, WORDS))}, got {dim!r}")
    check_positive(num_paths=num_paths, seq_len=seq_len)
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (a path needs two points), got {seq_len}")
    rng = np.random.default_rng(seed)
    paths = np.cumsum(np.round(rng.standard_normal((num_paths, seq_len, dim))), axis=1)
    paths /= max(np.abs(paths).max(), 1.0)  # a walk of all-zero increments stays unscaled
    labels = signature_term(torch.from_numpy(paths), WORDS[dim]).numpy()
    labels /= max(np.abs(labels).max(), np.finfo(labels.dtype).tiny)
    return paths.astype(np.float32), labels.astype(np.float32)


def path_increments(paths: np.ndarray) -> np.ndarray:
    """(N, L, dim) values -> (N, L, dim) increments: 0 at t = 1, X_t - X_{t-1} for t > 1 (the segments
    of the path X_1..X_L and nothing else), divided by their RMS over the whole array (left as they
    are when every increment is zero)."""
    increments = np.diff(paths, axis=1, prepend=paths[:, :1])
    rms = float(np.sqrt(np.mean(np.square(increments, dtype=np.float64))))
    return (increments / rms if rms > 0 else increments).astype(paths.dtype)


class ToySignatureDataModule(SplitDataModule):
    """Batches {"inputs": (B, seq_len, dim) path values (or increments), "targets": (B, 1) scaled label}.

    The paper splits 80/20 into train and held-out paths and reports the held-out RMSE during
    training: "val" and "test" are both that held-out set. ``seed`` fixes the data,
    ``shuffle_seed`` the batch order."""

    def __init__(
        self,
        dim: int = 2,
        seq_len: int = 100,
        num_paths: int = 100_000,
        train_fraction: float = 0.8,
        batch_size: int = 32,
        steps_per_epoch: int = 100,
        seed: int = 0,
        shuffle_seed: int = 0,
        inputs: str = "values",
    ) -> None:
        super().__init__(batch_size, steps_per_epoch, shuffle_seed)
        if dim not in WORDS:
            raise ValueError(f"dim must be one of {', '.join(map(str, WORDS))}, got {dim!r}")
        if inputs not in INPUTS:
            raise ValueError(f"unknown inputs {inputs!r}; choose one of {', '.join(INPUTS)}")
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        check_positive(seq_len=seq_len, num_paths=num_paths)
        self.num_train = int(round(num_paths * train_fraction))
        if not 0 < self.num_train < num_paths:
            raise ValueError(f"{num_paths} paths with train_fraction {train_fraction} leave an empty split")
        self.dim, self.seq_len, self.num_paths, self.seed, self.inputs = dim, seq_len, num_paths, seed, inputs
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def spec(self) -> TaskSpec:
        word = "".join(str(letter + 1) for letter in WORDS[self.dim])
        return TaskSpec(
            name=f"toy_signature_{self.dim}d_S{word}",
            input_kind="continuous",
            output_kind="sequence_regression",
            d_input=self.dim,
            d_output=1,
        )

    def build_split(self, split: str) -> TensorDictDataset:
        if self._data is None:
            paths, labels = toy_signature_paths(self.num_paths, self.seq_len, self.dim, self.seed)
            if self.inputs == "increments":
                paths = path_increments(paths)
            self._data = torch.from_numpy(paths), torch.from_numpy(labels).unsqueeze(1)
        paths, labels = self._data
        part = slice(None, self.num_train) if split == "train" else slice(self.num_train, None)
        return TensorDictDataset(inputs=paths[part], targets=labels[part])
