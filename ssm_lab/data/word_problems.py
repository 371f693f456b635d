"""Group word problems (Merrill, Petty & Sabharwal 2024, "The Illusion of State in State-Space
Models"): a word g_0 g_1 ... g_{L-1} of group elements; the target at step t is the running
product g_0 . g_1 . ... . g_t, a per-token classification over the group. A5 (order 60, the
smallest non-solvable group) needs NC1 state tracking, which no fixed-depth diagonal LTI SSM
expresses; this is the benchmark behind Figure 2 of Cirone et al. 2024.
"""

from __future__ import annotations

import numpy as np
import torch

from ssm_lab.data.groups import GROUPS, multiplication_table, running_products
from ssm_lab.data.loading import SplitDataModule, TensorDictDataset, check_positive
from ssm_lab.data.spec import TaskSpec


class WordProblemDataModule(SplitDataModule):
    """Uniformly random words of length ``seq_len`` over ``group``; batches
    {"inputs": (B, L) element ids, "targets": (B, L) running-product ids}. ``seed`` fixes the
    data (the same for every model seed); ``shuffle_seed`` the batch order."""

    def __init__(
        self,
        group: str = "A5",
        seq_len: int = 16,
        num_train: int = 10_000,
        num_val: int = 1_000,
        num_test: int = 1_000,
        batch_size: int = 32,
        steps_per_epoch: int = 100,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, steps_per_epoch, shuffle_seed)
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")
        check_positive(seq_len=seq_len, num_train=num_train, num_val=num_val, num_test=num_test)
        self.group, self.seq_len, self.seed = group, seq_len, seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.elements = GROUPS[group]()
        self.table = multiplication_table(self.elements)
        self.vocab = tuple("".join(map(str, p)) for p in self.elements)

    @property
    def spec(self) -> TaskSpec:
        n = len(self.elements)
        return TaskSpec(
            name=self.group, input_kind="tokens", output_kind="token_class", d_output=n, vocab_size=n, vocab=self.vocab
        )

    def build_split(self, split: str) -> TensorDictDataset:
        """Words drawn uniformly at random; each split from its own seeded stream."""
        rng = np.random.default_rng([self.seed, self.splits.index(split)])
        words = rng.integers(0, len(self.elements), size=(self.sizes[split], self.seq_len))
        products = running_products(words, self.table)
        return TensorDictDataset(inputs=torch.from_numpy(words), targets=torch.from_numpy(products))
