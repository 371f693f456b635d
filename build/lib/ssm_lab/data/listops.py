"""ListOps of the Long Range Arena (Tay et al. 2021; the grammar of Nangia & Bowman 2018):
nested prefix expressions over the digits 0-9 with the operators MIN, MAX, MED (median, the
mean of the two middle values rounded down when the count is even) and SM (sum mod 10); the
label is the expression's value, a 10-way classification of the whole sequence.

Sampling, as the LRA generator describes it: a node below ``max_depth`` is an operator with
probability 1/4 (else a digit), with 2..``max_args`` arguments drawn the same way one level
deeper; at ``max_depth`` it is a digit. Whole expressions are drawn until ``num_train + num_val
+ num_test`` distinct ones have between ``min_length`` and ``max_length`` tokens.

Tokens as in the S4 code base: the "(" and ")" of the LRA files are dropped, "]" closes an
operator, sequences are right-padded with "<pad>" (id 0) and carry their ``lengths``. Reads the
official TSV files or a saved Hugging Face dataset from ``data_dir/listops`` when present.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssm_lab.data.cache import cached_arrays
from ssm_lab.data.loading import SplitDataModule
from ssm_lab.data.spec import TaskSpec
from ssm_lab.validation import check_positive

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
PAD = "<pad>"
VOCAB = (PAD, *map(str, range(10)), *OPERATORS, CLOSE)
TOKEN_IDS = {token: i for i, token in enumerate(VOCAB)}
DIGIT_IDS = tuple(TOKEN_IDS[str(d)] for d in range(10))
OPERATOR_IDS = tuple(TOKEN_IDS[op] for op in OPERATORS)
CLOSE_ID = TOKEN_IDS[CLOSE]
OPERATOR_PROBABILITY = 0.25
CHUNK_SIZE = 2_000
#: File names of the LRA release, per split (``lra_release/listops-1000/basic_*.tsv``).
TSV_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
SOURCES = ("auto", "generate", "tsv", "huggingface")


def apply_operator(operator: str, values: list[int]) -> int:
    if operator == "[MIN":
        return min(values)
    if operator == "[MAX":
        return max(values)
    if operator == "[MED":
        ordered, middle = sorted(values), len(values) // 2
        return ordered[middle] if len(values) % 2 else (ordered[middle - 1] + ordered[middle]) // 2
    if operator == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown operator {operator!r}; choose one of {', '.join(OPERATORS)}")


class _TooLongError(Exception):
    """The expression being drawn has passed max_length: it would be rejected, so stop early."""


def _digit(r: float, could_be_operator: bool) -> int:
    """The digit a draw r names: uniform on [1/4, 1) where an operator was possible, else on [0, 1)."""
    if could_be_operator:
        r = (r - OPERATOR_PROBABILITY) / (1 - OPERATOR_PROBABILITY)
    return min(int(r * 10), 9)  # min: rounding must never reach 10


def _sample_operator(
    rng: random.Random, tokens: list[int], operator: int, depth: int, max_depth: int, max_args: int, max_length: int
) -> int:
    """Append the tokens of an operator node at ``depth`` and its arguments; return its value.

    One uniform draw r decides each argument: an operator when it may be one and r < 1/4, which
    one from r * 16 (r is uniform on [0, 1/4) given that), else a digit (``_digit``). Digits are
    appended here rather than by a call per node: the generator's cost is Python-level calls."""
    tokens.append(OPERATOR_IDS[operator])
    values = []
    child_may_be_operator = depth + 1 < max_depth
    for _ in range(2 + int(rng.random() * (max_args - 1))):
        r = rng.random()
        if child_may_be_operator and r < OPERATOR_PROBABILITY:
            values.append(_sample_operator(rng, tokens, int(r * 16), depth + 1, max_depth, max_args, max_length))
        else:
            value = _digit(r, child_may_be_operator)
            tokens.append(DIGIT_IDS[value])
            values.append(value)
    tokens.append(CLOSE_ID)
    if len(tokens) > max_length:
        raise _TooLongError
    return apply_operator(OPERATORS[operator], values)


def sample_expression(rng: random.Random, max_depth: int, max_args: int, max_length: int) -> tuple[list[int], int]:
    """One expression (token ids) and its value; raises _TooLongError once it passes max_length."""
    r = rng.random()
    if max_depth > 1 and r < OPERATOR_PROBABILITY:
        tokens: list[int] = []
        value = _sample_operator(rng, tokens, int(r * 16), 1, max_depth, max_args, max_length)
        return tokens, value
    value = _digit(r, max_depth > 1)
    return [DIGIT_IDS[value]], value


def _generate_chunk(
    chunk: int, num_examples: int, min_length: int, max_length: int, max_depth: int, max_args: int, seed: int
) -> tuple[list[list[int]], list[int]]:
    """``num_examples`` expressions with min_length..max_length tokens from chunk ``chunk``'s own
    stream. Expressions that pass max_length are abandoned as soon as they do: they would be
    rejected anyway, so the accepted ones keep the distribution of the full rejection sampler."""
    rng = random.Random(f"listops-{seed}-{chunk}")
    expressions, labels = [], []
    while len(expressions) < num_examples:
        try:
            tokens, value = sample_expression(rng, max_depth, max_args, max_length)
        except _TooLongError:
            continue
        if min_length <= len(tokens) <= max_length:
            expressions.append(tokens)
            labels.append(value)
    return expressions, labels


def generate_listops(
    num_examples: int, min_length: int, max_length: int, max_depth: int, max_args: int, seed: int, workers: int = 0
) -> tuple[list[list[int]], list[int]]:
    """``num_examples`` distinct expressions and their values, drawn in chunks of up to CHUNK_SIZE
    from streams seeded by (seed, chunk) and merged in chunk order, so the result depends on the
    seed and sizes only, not on ``workers`` (processes; 0: one per CPU)."""
    seen: set[bytes] = set()
    expressions, labels = [], []
    workers = workers or os.cpu_count() or 1
    next_chunk = 0
    while len(expressions) < num_examples:
        # duplicates are rare (none at LRA lengths), so one round almost always suffices
        missing = num_examples - len(expressions)
        sizes = [CHUNK_SIZE] * (missing // CHUNK_SIZE) + ([missing % CHUNK_SIZE] if missing % CHUNK_SIZE else [])
        args = [
            (next_chunk + i, size, min_length, max_length, max_depth, max_args, seed) for i, size in enumerate(sizes)
        ]
        next_chunk += len(sizes)
        if workers == 1 or len(args) == 1:
            results = [_generate_chunk(*a) for a in args]
        else:
            # fork: the children run pure Python and need no re-import of the caller's main module
            # (spawn would fail in any script without an `if __name__ == "__main__"` guard)
            with ProcessPoolExecutor(min(workers, len(args)), mp_context=multiprocessing.get_context("fork")) as pool:
                results = list(pool.map(_generate_chunk, *zip(*args, strict=True)))
        for chunk_expressions, chunk_labels in results:
            for tokens, value in zip(chunk_expressions, chunk_labels, strict=True):
                key = bytes(tokens)
                if key not in seen and len(expressions) < num_examples:
                    seen.add(key)
                    expressions.append(tokens)
                    labels.append(value)
    return expressions, labels


def tokenize(source: str, where: str) -> list[int]:
    """LRA source text -> token ids (brackets "(" and ")" dropped); ``where`` names the file and
    line in the error for an unknown token."""
    ids = []
    for token in source.split():
        if token in ("(", ")"):
            continue
        if token not in TOKEN_IDS or token == PAD:
            raise ValueError(f"{where}: unknown token {token!r}; ListOps tokens are {', '.join(VOCAB[1:])}, ( and )")
        ids.append(TOKEN_IDS[token])
    if not ids:
        raise ValueError(f"{where}: empty expression")
    return ids


def _label(text: str, where: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise ValueError(f"{where}: target {text!r} is not an integer") from None
    if not 0 <= label <= 9:
        raise ValueError(f"{where}: target {label} is outside 0..9")
    return label


def read_listops_tsv(path: Path) -> tuple[list[list[int]], list[int]]:
    """An LRA file: a header ``Source<TAB>Target``, then one expression and its value per line."""
    expressions, labels = [], []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != ["Source", "Target"]:
            raise ValueError(f"{path}:1: header must be Source<TAB>Target, got {header}")
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            where = f"{path}:{line_number}"
            if len(fields) != 2:
                raise ValueError(f"{where}: need 2 tab-separated fields (Source, Target), got {len(fields)}")
            expressions.append(tokenize(fields[0], where))
            labels.append(_label(fields[1], where))
    if not expressions:
        raise ValueError(f"{path}: no examples in the file")
    return expressions, labels


def read_listops_huggingface(directory: Path, split: str) -> tuple[list[list[int]], list[int]]:
    """A ``datasets.DatasetDict`` saved with ``save_to_disk``: splits train/validation/test with
    the LRA columns Source and Target."""
    from datasets import load_from_disk  # only this source needs it

    dataset = load_from_disk(str(directory))[HF_SPLITS[split]]
    where = f"{directory} ({HF_SPLITS[split]})"
    pairs = [
        (tokenize(row["Source"], f"{where} row {i}"), _label(str(row["Target"]), f"{where} row {i}"))
        for i, row in enumerate(dataset)
    ]
    return [tokens for tokens, _ in pairs], [label for _, label in pairs]


def pack(expressions: list[list[int]], labels: list[int]) -> dict[str, np.ndarray]:
    """Ragged token lists as one flat uint8 array with offsets (98k LRA examples in ~100 MB)."""
    offsets = np.zeros(len(expressions) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in expressions])
    tokens = np.fromiter((t for e in expressions for t in e), dtype=np.uint8, count=int(offsets[-1]))
    return {"tokens": tokens, "offsets": offsets, "labels": np.asarray(labels, dtype=np.int64)}


class PaddedTokenDataset(Dataset):
    """Items {"inputs": (pad_to,) long ids right-padded with 0, "targets": () long,
    "lengths": () long}, cut from packed arrays on access."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, labels: np.ndarray, pad_to: int) -> None:
        if len(offsets) != len(labels) + 1:
            raise ValueError(f"{len(labels)} labels need {len(labels) + 1} offsets, got {len(offsets)}")
        longest = int(np.diff(offsets).max())
        if longest > pad_to:
            raise ValueError(f"an example has {longest} tokens, longer than pad_to={pad_to}")
        self.tokens, self.offsets, self.labels, self.pad_to = tokens, offsets, labels, pad_to

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        inputs = torch.zeros(self.pad_to, dtype=torch.long)
        inputs[: stop - start] = torch.from_numpy(self.tokens[start:stop].astype(np.int64))
        return {"inputs": inputs, "targets": torch.tensor(int(self.labels[i])), "lengths": torch.tensor(stop - start)}


class ListOpsDataModule(SplitDataModule):
    """Batches {"inputs": (B, L) ids, "targets": (B,) values 0..9, "lengths": (B,)}, L the longest
    expression of the data. ``source``: "generate" (cached in ``data_dir/listops``), "tsv" (the
    LRA files in ``data_dir/listops``), "huggingface" (``data_dir/listops/huggingface``), or
    "auto": the TSV files, else the Hugging Face copy, else generated."""

    def __init__(
        self,
        num_train: int = 96_000,
        num_val: int = 2_000,
        num_test: int = 2_000,
        min_length: int = 500,
        max_length: int = 2_000,
        max_depth: int = 10,
        max_args: int = 10,
        batch_size: int = 32,
        steps_per_epoch: int = 100,
        seed: int = 0,
        shuffle_seed: int = 0,
        source: str = "auto",
        data_dir: str = "data_dir",
    ) -> None:
        super().__init__(batch_size, steps_per_epoch, shuffle_seed)
        check_positive(
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
            min_length=min_length,
            max_length=max_length,
            max_depth=max_depth,
        )
        if min_length > max_length:
            raise ValueError(f"min_length {min_length} is above max_length {max_length}")
        if not isinstance(max_args, int) or max_args < 2:
            raise ValueError(
                f"max_args must be an integer >= 2 (operators take 2..max_args arguments), got {max_args!r}"
            )
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
        self.directory = Path(data_dir) / "listops"
        self.source = self._resolve_source(source)
        self.generation = {
            "num_train": num_train,
            "num_val": num_val,
            "num_test": num_test,
            "min_length": min_length,
            "max_length": max_length,
            "max_depth": max_depth,
            "max_args": max_args,
            "seed": seed,
        }
        self._packed: dict[str, dict[str, np.ndarray]] | None = None

    def _resolve_source(self, source: str) -> str:
        tsv_missing = [name for name in TSV_FILES.values() if not (self.directory / name).exists()]
        hf_missing = not (self.directory / "huggingface").exists()
        if source == "tsv" and tsv_missing:
            raise FileNotFoundError(f"no LRA ListOps files {tsv_missing} in {self.directory}; see data_dir/README.md")
        if source == "huggingface" and hf_missing:
            raise FileNotFoundError(
                f"no saved Hugging Face dataset at {self.directory / 'huggingface'}; see data_dir/README.md"
            )
        if source == "auto":
            return "tsv" if not tsv_missing else "huggingface" if not hf_missing else "generate"
        return source

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(
            name="listops",
            input_kind="tokens",
            output_kind="sequence_class",
            d_output=10,
            vocab_size=len(VOCAB),
            vocab=VOCAB,
        )

    def _load(self) -> dict[str, dict[str, np.ndarray]]:
        if self.source == "tsv":
            return {split: pack(*read_listops_tsv(self.directory / name)) for split, name in TSV_FILES.items()}
        if self.source == "huggingface":
            return {
                split: pack(*read_listops_huggingface(self.directory / "huggingface", split)) for split in TSV_FILES
            }
        params = {**self.generation, "generator": "lra-listops-v1"}
        arrays = cached_arrays(self.directory, "generated", params, lambda: self._generate())
        return {
            split: {k.split("/")[1]: v for k, v in arrays.items() if k.startswith(split + "/")} for split in TSV_FILES
        }

    def _generate(self) -> dict[str, np.ndarray]:
        g = self.generation
        sizes = [g["num_train"], g["num_val"], g["num_test"]]
        expressions, labels = generate_listops(
            sum(sizes), g["min_length"], g["max_length"], g["max_depth"], g["max_args"], g["seed"]
        )
        cuts = np.cumsum([0, *sizes])
        arrays = {}
        for split, start, stop in zip(TSV_FILES, cuts[:-1], cuts[1:], strict=True):
            for key, value in pack(expressions[start:stop], labels[start:stop]).items():
                arrays[f"{split}/{key}"] = value
        return arrays

    def build_split(self, split: str) -> PaddedTokenDataset:
        if self._packed is None:
            self._packed = self._load()
        pad_to = max(int(np.diff(p["offsets"]).max()) for p in self._packed.values())
        packed = self._packed[split]
        return PaddedTokenDataset(packed["tokens"], packed["offsets"], packed["labels"], pad_to)
