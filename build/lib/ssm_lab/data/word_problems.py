"""Group word problems (Merrill, Petty & Sabharwal 2024, "The Illusion of State in State-Space
Models"): a word g_0 g_1 ... g_{L-1} of group elements; the target at step t is the running
product g_0 . g_1 . ... . g_t, a per-token classification over the group. A5 (order 60, the
smallest non-solvable group) needs NC1 state tracking, which no fixed-depth diagonal LTI SSM
expresses; this is the benchmark behind Figure 2 of Cirone et al. 2024. S5 is the other
non-solvable group of the paper; A4 x Z5 and Z60 are its solvable controls of the same order.

Words are generated, or read from the paper's published files (``<data_dir>/word_problems/
A5=16.csv``: a header ``seed,input,target``, then one word per line as space-separated element
ids with its running products). The files number elements their own way; the reader checks that
the running products are consistent with one multiplication table and keeps the file's ids.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ssm_lab.data.groups import GROUPS, cycle_notation, multiplication_table, running_products
from ssm_lab.data.loading import SplitDataModule, TensorDictDataset
from ssm_lab.data.spec import TaskSpec
from ssm_lab.validation import check_positive

#: How the paper's repository names each group's files: ``<stem>=<length>.csv``.
FILE_STEMS = {"A5": "A5", "S5": "S5", "A4xZ5": "A4_x_Z5", "Z60": "Z60"}
SOURCES = ("auto", "generate", "file")


def word_problem_file(data_dir: str | Path, group: str, seq_len: int) -> Path:
    return Path(data_dir) / "word_problems" / f"{FILE_STEMS[group]}={seq_len}.csv"


def _ids(text: str, order: int, path: Path, line: int, column: str) -> list[int]:
    try:
        ids = [int(token) for token in text.split()]
    except ValueError:
        raise ValueError(f"{path}:{line}: {column} {text!r} is not a list of integer element ids") from None
    bad = [i for i in ids if not 0 <= i < order]
    if bad:
        raise ValueError(f"{path}:{line}: {column} has element ids {bad} outside 0..{order - 1}")
    return ids


def read_word_problem_csv(path: Path, order: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(words, products): (N, seq_len) int64 each, from a file of the paper's format. Raises
    naming the file and line for a malformed row, a wrong length, or running products that no
    group table explains (the same pair of elements with two different products)."""
    words, products, table = [], [], {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"input", "target"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}:1: header needs columns input and target, got {reader.fieldnames}")
        for row in reader:
            line = reader.line_num
            word = _ids(row["input"] or "", order, path, line, "input")
            product = _ids(row["target"] or "", order, path, line, "target")
            if len(word) != seq_len or len(product) != seq_len:
                raise ValueError(
                    f"{path}:{line}: need {seq_len} ids in input and target, got {len(word)} and {len(product)}"
                )
            if product[0] != word[0]:
                raise ValueError(
                    f"{path}:{line}: the first running product {product[0]} is not the first element {word[0]}"
                )
            for t in range(1, seq_len):
                known = table.setdefault((product[t - 1], word[t]), product[t])
                if known != product[t]:
                    pair = f"{product[t - 1]} . {word[t]}"
                    raise ValueError(f"{path}:{line}: {pair} = {product[t]} here but {known} earlier in the file")
            words.append(word)
            products.append(product)
    if not words:
        raise ValueError(f"{path}: no words in the file")
    return np.asarray(words, dtype=np.int64), np.asarray(products, dtype=np.int64)


class WordProblemDataModule(SplitDataModule):
    """Words of length ``seq_len`` over ``group``; batches {"inputs": (B, L) element ids,
    "targets": (B, L) running-product ids}. ``seed`` fixes the data (the same for every model
    seed); ``shuffle_seed`` the batch order.

    ``source``: "generate" draws uniformly random words; "file" reads the paper's CSV for this
    group and length from ``data_dir`` (shuffled by ``seed``, then cut into test, val and train);
    "auto" reads the file when it exists and generates otherwise."""

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
        source: str = "generate",
        data_dir: str = "data_dir",
    ) -> None:
        super().__init__(batch_size, steps_per_epoch, shuffle_seed)
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
        check_positive(seq_len=seq_len, num_train=num_train, num_val=num_val, num_test=num_test)
        self.group, self.seq_len, self.seed = group, seq_len, seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.elements = GROUPS[group]()
        self.table = multiplication_table(self.elements)
        self.file = word_problem_file(data_dir, group, seq_len)
        if source == "file" and not self.file.exists():
            raise FileNotFoundError(
                f"no word-problem file at {self.file}; put the paper's {self.file.name} there "
                f"(see data_dir/README.md) or use source=generate"
            )
        self.from_file = source == "file" or (source == "auto" and self.file.exists())
        # the files' ids are not our element order, so they are named by id
        names = (str(i) for i in range(len(self.elements))) if self.from_file else map(cycle_notation, self.elements)
        self.vocab = tuple(names)
        self._file_splits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def spec(self) -> TaskSpec:
        n = len(self.elements)
        return TaskSpec(
            name=self.group, input_kind="tokens", output_kind="token_class", d_output=n, vocab_size=n, vocab=self.vocab
        )

    def build_split(self, split: str) -> TensorDictDataset:
        words, products = self._read_split(split) if self.from_file else self._generate_split(split)
        return TensorDictDataset(inputs=torch.from_numpy(words), targets=torch.from_numpy(products))

    def _generate_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Words drawn uniformly at random; each split from its own seeded stream."""
        rng = np.random.default_rng([self.seed, self.splits.index(split)])
        words = rng.integers(0, len(self.elements), size=(self.sizes[split], self.seq_len))
        return words, running_products(words, self.table)

    def _read_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if self._file_splits is None:
            words, products = read_word_problem_csv(self.file, len(self.elements), self.seq_len)
            held_out = self.sizes["test"] + self.sizes["val"]
            if len(words) <= held_out:
                raise ValueError(
                    f"{self.file} holds {len(words)} words, too few for {self.sizes['test']} test "
                    f"and {self.sizes['val']} val words plus a training set"
                )
            order = np.random.default_rng(self.seed).permutation(len(words))
            cuts = {
                "test": order[: self.sizes["test"]],
                "val": order[self.sizes["test"] : held_out],
                "train": order[held_out : held_out + self.sizes["train"]],
            }
            self._file_splits = {name: (words[rows], products[rows]) for name, rows in cuts.items()}
        return self._file_splits[split]
