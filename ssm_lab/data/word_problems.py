"""Group word problems (Merrill, Petty & Sabharwal 2024, "The Illusion of State in State-Space
Models"): a word g_0 g_1 ... g_{L-1} of group elements; the target at step t is the running
product g_0 . g_1 . ... . g_t, a per-token classification over the group. A5 (order 60, the
smallest non-solvable group) needs NC1 state tracking, which no fixed-depth diagonal LTI SSM
expresses; this is the benchmark behind Figure 2 of Cirone et al. 2024. S5 is the other
non-solvable group of the paper; A4 x Z5 and Z60 are its solvable controls of the same order.

Words are generated (test and val words distinct and disjoint from each other, train words drawn
uniformly from the others, so no held-out word is trained on), or read from the paper's published
files (``<data_dir>/word_problems/A5=16.csv``: a header ``seed,input,target``, then one word per
line as space-separated element ids with its running products). The files number elements their
own way; the reader checks that the running products are consistent with one multiplication table
and keeps the file's ids.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssm_lab.data.groups import GROUPS, cycle_notation, multiplication_table, running_products
from ssm_lab.data.loading import SplitDataModule, TensorDictDataset
from ssm_lab.data.spec import TaskSpec
from ssm_lab.data.text_files import utf8_lines
from ssm_lab.validation import check_positive

log = logging.getLogger(__name__)

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
    group table explains (the same pair of elements with two different products), or a byte that
    is not UTF-8."""
    words, products, table = [], [], {}
    reader = csv.DictReader(utf8_lines(path))
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

    ``source``: "generate" draws random words (``draw_words``): ``num_test`` distinct test words,
    ``num_val`` distinct val words that are not test words, then ``num_train`` train words uniform
    over the words in neither split (repeats allowed), each split from its own stream seeded by
    (seed, split), so val and test do not change with ``num_train``. The |G|^seq_len words must
    hold the held-out ones with some left to train on (A5 at seq_len 2: 3600 words). "file" reads
    the paper's CSV for this group and length from ``data_dir``, shuffled by ``seed`` and cut into
    test, val and (up to num_train: a warning says when the file holds fewer) train. "auto" reads the file
    when it exists and generates otherwise."""

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
        if source == "auto":
            source = self.auto_source({"group": group, "seq_len": seq_len, "data_dir": data_dir})
        self.from_file = source == "file"
        words = len(self.elements) ** seq_len
        if not self.from_file and num_val + num_test >= words:
            raise ValueError(
                f"{group} has {len(self.elements)}^{seq_len} = {words} distinct words of length {seq_len}: too few "
                f"for {num_test} test and {num_val} val words that are distinct and leave words to train on; "
                f"lower num_val and num_test or raise seq_len"
            )
        # the files' ids are not our element order, so they are named by id
        names = (str(i) for i in range(len(self.elements))) if self.from_file else map(cycle_notation, self.elements)
        self.vocab = tuple(names)
        self._splits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @staticmethod
    def auto_source(data: Mapping[str, Any]) -> str:
        """The source "auto" picks for the data config ``data``: "file" when the paper's file of its group and
        length is in ``data_dir``, else "generate" ("auto" itself for an unknown group)."""
        if data["group"] not in GROUPS:  # the constructor names the groups
            return "auto"
        file = word_problem_file(data.get("data_dir", "data_dir"), data["group"], data["seq_len"])
        return "file" if file.exists() else "generate"

    @property
    def spec(self) -> TaskSpec:
        n = len(self.elements)
        return TaskSpec(
            name=self.group, input_kind="tokens", output_kind="token_class", d_output=n, vocab_size=n, vocab=self.vocab
        )

    def build_split(self, split: str) -> TensorDictDataset:
        if self._splits is None:
            self._splits = self._read_splits() if self.from_file else self._generate_splits()
        words, products = self._splits[split]
        return TensorDictDataset(inputs=torch.from_numpy(words), targets=torch.from_numpy(products))

    def _generate_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        held_out: set[bytes] = set()
        splits = {}
        for split in ("test", "val", "train"):
            rng = np.random.default_rng([self.seed, self.splits.index(split)])
            words = draw_words(rng, self.sizes[split], self.seq_len, len(self.elements), held_out, split != "train")
            splits[split] = words, running_products(words, self.table)
        return splits

    def _read_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        words, products = read_word_problem_csv(self.file, len(self.elements), self.seq_len)
        test, val, train = self.sizes["test"], self.sizes["val"], self.sizes["train"]
        if len(words) <= test + val:
            raise ValueError(
                f"{self.file} holds {len(words)} words, too few for {test} test and {val} val words plus a "
                f"training set; lower num_val or num_test, or use source=generate"
            )
        if len(words) < test + val + train:  # the paper's files set the training set's size: said, not silent
            log.warning(
                "%s holds %d words: training on the %d left after %d test and %d val words, not num_train=%d",
                self.file, len(words), len(words) - test - val, test, val, train,
            )  # fmt: skip
        order = np.random.default_rng(self.seed).permutation(len(words))
        cuts = {"test": order[:test], "val": order[test : test + val], "train": order[test + val : test + val + train]}
        return {name: (words[rows], products[rows]) for name, rows in cuts.items()}


def draw_words(
    rng: np.random.Generator, count: int, seq_len: int, order: int, exclude: set[bytes], distinct: bool
) -> np.ndarray:
    """(count, seq_len) int64 words uniform over the order^seq_len words not in ``exclude`` (keys:
    ``word.tobytes()``): rejection sampling, each rejected word redrawn from ``rng``. ``distinct``:
    no word twice, and the drawn words join ``exclude`` (a sample without replacement); else
    i.i.d. draws. Without a rejection the words are rng's first draw as it is."""
    words = rng.integers(0, order, size=(count, seq_len))
    for word in words:
        while (key := word.tobytes()) in exclude:
            word[:] = rng.integers(0, order, size=seq_len)
        if distinct:
            exclude.add(key)
    return words
