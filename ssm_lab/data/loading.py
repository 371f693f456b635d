"""What every data module shares: a dataset of named tensors and loaders whose batch order
depends only on (seed, epoch), so a run resumed at an epoch boundary sees the same batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ssm_lab.data.spec import TaskSpec
from ssm_lab.validation import check_positive


class TensorDictDataset(Dataset):
    """Items are dicts {name: tensor[i]}; the default collate stacks them into a batch dict."""

    def __init__(self, **tensors: Tensor) -> None:
        sizes = {name: len(t) for name, t in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"tensors must share their first dimension, got sizes {sizes}")
        self.tensors = tensors
        self.size = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {name: t[i] for name, t in self.tensors.items()}


class EpochSampler(Sampler[int]):
    """``num_samples`` indices per epoch from a permutation seeded by (seed, epoch), cycling
    through the dataset when an epoch asks for more items than it holds.

    The epoch comes from ``epoch_index()`` (the data module derives it from the trainer's global
    step), not from Lightning's epoch counter, which is off by one after resuming from a
    checkpoint saved at an epoch's end."""

    def __init__(
        self,
        dataset_size: int,
        num_samples: int,
        seed: int,
        epoch_index: Callable[[], int],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if dataset_size <= 0 or num_samples <= 0:
            raise ValueError(f"need a non-empty dataset and epoch, got {dataset_size} items, {num_samples} samples")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.dataset_size, self.num_samples, self.seed, self.epoch_index = dataset_size, num_samples, seed, epoch_index
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch_index())
        repeats = -(-self.num_samples // self.dataset_size)
        order = torch.cat([torch.randperm(self.dataset_size, generator=generator) for _ in range(repeats)])
        # Rank r takes every world_size-th index: its k-th batch of batch_size / world_size items
        # and the other ranks' k-th batches together make the single-process k-th batch.
        return iter(order[: self.num_samples][self.rank :: self.world_size].tolist())


def train_loader(
    dataset: Dataset,
    batch_size: int,
    steps_per_epoch: int,
    seed: int,
    epoch_index: Callable[[], int],
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """An epoch of exactly ``steps_per_epoch`` full batches, reproducible by (seed, epoch_index()).
    Under DDP ``batch_size`` is the global batch: each of the ``world_size`` processes loads its
    ``batch_size / world_size`` share, so the optimisation does not change with the device count."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {world_size} processes of a DDP run")
    sampler = EpochSampler(len(dataset), batch_size * steps_per_epoch, seed, epoch_index, rank, world_size)
    return DataLoader(dataset, batch_size=batch_size // world_size, sampler=sampler, drop_last=True)


def eval_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


class SplitDataModule(L.LightningDataModule):
    """Base of every data module: builds the train/val/test datasets once (``build_split``) and
    serves them; training epochs are ``steps_per_epoch`` batches ordered by (shuffle_seed, epoch).
    Subclasses define ``spec`` and ``build_split``."""

    splits = ("train", "val", "test")

    def __init__(self, batch_size: int, steps_per_epoch: int, shuffle_seed: int) -> None:
        super().__init__()
        check_positive(batch_size=batch_size, steps_per_epoch=steps_per_epoch)
        self.batch_size, self.steps_per_epoch, self.shuffle_seed = batch_size, steps_per_epoch, shuffle_seed
        self.datasets: dict[str, Dataset] = {}

    @property
    def spec(self) -> TaskSpec:
        raise NotImplementedError

    def build_split(self, split: str) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        for split in self.splits:
            if split not in self.datasets:
                self.datasets[split] = self.build_split(split)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return train_loader(
            self.datasets["train"],
            self.batch_size,
            self.steps_per_epoch,
            self.shuffle_seed,
            self.epoch_index,
            rank,
            world_size,
        )

    def epoch_index(self) -> int:
        """Index of the training epoch about to start: every epoch is steps_per_epoch optimizer steps."""
        trainer = self.trainer
        return trainer.global_step // self.steps_per_epoch if trainer is not None else 0

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.datasets["val"], self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.datasets["test"], self.batch_size)
