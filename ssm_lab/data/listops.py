"""ListOps of the Long Range Arena (Tay et al. 2021; the grammar of Nangia & Bowman 2018):
nested prefix expressions over the digits 0-9 with the operators MIN, MAX, MED (median, LRA's
``int(np.median)``: the mean of the two middle values rounded down when the count is even) and SM
(sum mod 10); the label is the expression's value, a 10-way classification of the whole sequence.

Sampling, as the LRA generator describes it: a node below ``max_depth`` is an operator with
probability 1/4 (else a digit), with 2..``max_args`` arguments drawn the same way one level
deeper; at ``max_depth`` it is a digit. Whole expressions are drawn until ``num_test + num_val
+ num_train`` distinct ones have between ``min_length`` and ``max_length`` tokens: the first
``num_test`` are the test set, the next ``num_val`` the val set, the rest the training set, so the
held-out sets do not change with ``num_train``. Options that allow too few distinct expressions,
or make them too rare to draw, are an error rather than an endless loop.

Tokens as in the S4 code base: the "(" and ")" of the LRA files are dropped, "]" closes an
operator, sequences are right-padded with "<pad>" (id 0) and carry their ``lengths``. Reads the
official TSV files or a saved Hugging Face dataset from ``data_dir/listops`` when present; each
line must hold one well-formed expression of at most ``max_length`` tokens (LRA's cap is 2000): a
longer one is an error naming its file and line, never silently dropped or cut, since dropping
would change the benchmark's test set and cutting its labels. So is a label that is not its
expression's value (``evaluate``, vectorised: a few seconds for LRA's 96k training expressions).
"""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssm_lab.data.cache import cached_arrays
from ssm_lab.data.loading import SplitDataModule
from ssm_lab.data.spec import TaskSpec
from ssm_lab.data.text_files import utf8_lines
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
#: The cache key of generated data: bump it whenever the same options give other data.
GENERATOR = "lra-listops-v2"
#: A chunk gives up once it has drawn more than this many expressions per accepted one (plus one):
#: LRA's lengths accept about one draw in 11, so only options whose lengths are too rare to sample stop.
MAX_DRAWS_PER_EXAMPLE = 1_000
LRA_MAX_LENGTH = 2_000
#: File names of the LRA release, per split (``lra_release/listops-1000/basic_*.tsv``).
TSV_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}
SOURCES = ("auto", "generate", "tsv", "huggingface")


def apply_operator(operator: str, values: list[int]) -> int:
    """The value of one operator node, the reference the generator uses and ``evaluate`` must match.
    MED is LRA's ``int(np.median(values))``: for an even count the mean of the two middle values
    truncated toward zero, which for digits (never negative) is their sum halved and rounded down."""
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


_DIGITS = np.arange(10)[:, None]
# per token id: how it changes the operator depth, its digit value, whether it is an operator
_DEPTH_CHANGE = np.zeros(256, dtype=np.int32)
_DEPTH_CHANGE[list(OPERATOR_IDS)], _DEPTH_CHANGE[CLOSE_ID] = 1, -1
_DIGIT_VALUE = np.zeros(256, dtype=np.int64)
_DIGIT_VALUE[list(DIGIT_IDS)] = range(10)
_IS_OPERATOR = np.zeros(256, dtype=bool)
_IS_OPERATOR[list(OPERATOR_IDS)] = True


def _operator_values(kinds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Values (n,) of n operator nodes from their arguments' digits: kinds (n,) the operators'
    token ids, counts (10, n) how many arguments of each are 0..9. Each operator is a function of
    that multiset, so one histogram serves all four (``apply_operator`` is the reference)."""
    cumulative = counts.cumsum(axis=0)  # cumulative[d]: how many arguments are <= d
    total = cumulative[-1]
    smallest = (cumulative == 0).sum(axis=0)
    largest = (cumulative < total).sum(axis=0)
    # the digits at sorted positions (n - 1) // 2 and n // 2: the same one when n is odd
    median = ((cumulative <= (total - 1) // 2).sum(axis=0) + (cumulative <= total // 2).sum(axis=0)) // 2
    sum_mod_10 = (counts * _DIGITS).sum(axis=0) % 10
    return np.choose(kinds - OPERATOR_IDS[0], (smallest, largest, median, sum_mod_10))


def _evaluate_chunk(tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``evaluate`` for the expressions of one chunk."""
    depth_change = _DEPTH_CHANGE[tokens]
    # a node's level: how many operators enclose it (the expressions are balanced, so the depth is
    # back at 0 between them); an operator's arguments are the nodes one level below it
    levels = np.cumsum(depth_change, dtype=np.int32) - depth_change
    deepest = int(levels.max())
    # node positions by level, in token order within a level, "]" last: a stable sort (radix on
    # 16-bit keys)
    is_close = tokens == CLOSE_ID
    keys = np.where(is_close, deepest + 1, levels).astype(np.uint16 if deepest + 1 < 2**16 else np.int32)
    by_level = np.argsort(keys, kind="stable")
    level_starts = np.concatenate(([0], np.cumsum(np.bincount(levels[~is_close], minlength=deepest + 1))))
    is_operator, values = _IS_OPERATOR[tokens], _DIGIT_VALUE[tokens]
    for level in range(deepest - 1, -1, -1):
        candidates = by_level[level_starts[level] : level_starts[level + 1]]
        operators = candidates[is_operator[candidates]]
        if not len(operators):
            continue
        # the nodes one level down fall into contiguous runs, one per operator, in the same order
        arguments = by_level[level_starts[level + 1] : level_starts[level + 2]]
        first_argument = np.searchsorted(arguments, operators)
        owner = np.repeat(np.arange(len(operators)), np.diff(first_argument, append=len(arguments)))
        n = len(operators)
        counts = np.bincount(values[arguments] * n + owner, minlength=10 * n).reshape(10, n)
        values[operators] = _operator_values(tokens[operators], counts)
    return values[offsets[:-1]]  # an expression's first token is its root


def evaluate(tokens: np.ndarray, offsets: np.ndarray, chunk_tokens: int = 2**17) -> np.ndarray:
    """The values (n,) of n well-formed expressions packed as by ``pack`` (token ids; offsets
    (n + 1,)): vectorised, one nesting level at a time from the deepest, in chunks of about
    ``chunk_tokens`` tokens (temporary arrays that stay in the CPU's cache) on a few threads
    (numpy releases the GIL): LRA's 96k training expressions (99M tokens) in about 3 s on 2 cores, 5 s
    on one."""
    chunks = []
    first = 0
    while first < len(offsets) - 1:
        last = max(int(np.searchsorted(offsets, offsets[first] + chunk_tokens, side="right")) - 1, first + 1)
        chunks.append((first, last))
        first = last

    def evaluate_chunk(bounds: tuple[int, int]) -> np.ndarray:
        first, last = bounds
        start = offsets[first]
        return _evaluate_chunk(tokens[start : offsets[last]], offsets[first : last + 1] - start)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        values = list(pool.map(evaluate_chunk, chunks))
    return np.concatenate(values) if values else np.zeros(0, dtype=np.int64)


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


def _options(min_length: int, max_length: int, max_depth: int, max_args: int) -> str:
    return f"min_length={min_length}, max_length={max_length}, max_depth={max_depth}, max_args={max_args}"


def _generate_chunk(
    chunk: int, num_examples: int, min_length: int, max_length: int, max_depth: int, max_args: int, seed: int
) -> tuple[list[list[int]], list[int]]:
    """The first ``num_examples`` expressions with min_length..max_length tokens of chunk ``chunk``'s
    own stream. Expressions that pass max_length are abandoned as soon as they do: they would be
    rejected anyway, so the accepted ones keep the distribution of the full rejection sampler.
    Raises once more than MAX_DRAWS_PER_EXAMPLE draws were needed per accepted expression."""
    rng = random.Random(f"listops-{seed}-{chunk}")
    expressions, labels = [], []
    draws = 0
    while len(expressions) < num_examples:
        draws += 1
        if draws > MAX_DRAWS_PER_EXAMPLE * (len(expressions) + 1):
            raise ValueError(
                f"ListOps: only {len(expressions)} of {draws - 1} drawn expressions have min_length..max_length "
                f"tokens at {_options(min_length, max_length, max_depth, max_args)} (fewer than one in "
                f"{MAX_DRAWS_PER_EXAMPLE}): too rare to sample; lower min_length or raise max_length"
            )
        try:
            tokens, value = sample_expression(rng, max_depth, max_args, max_length)
        except _TooLongError:
            continue
        if min_length <= len(tokens) <= max_length:
            expressions.append(tokens)
            labels.append(value)
    return expressions, labels


def count_expressions(max_length: int, max_depth: int, max_args: int, cap: int) -> np.ndarray:
    """counts[n]: the number of distinct expressions of n = 0..max_length tokens the sampler can draw,
    saturated at ``cap`` (< 2^53: float64 then counts exactly below the cap).

    With P_k(x) = sum_n counts_k[n] x^n for expressions of at most k levels: P_1 = 10 x (a digit),
    P_k = 10 x + 4 x^2 sum_{m=2}^{max_args} P_{k-1}^m (a digit, or an operator, its m arguments and
    "]"); the answer is P_{max_depth} truncated at degree max_length."""
    counts = np.zeros(max_length + 1)
    counts[1] = 10.0
    for _ in range(max_depth - 1):
        arguments, power = np.zeros(max_length + 1), counts
        for _ in range(max_args - 1):
            power = np.minimum(np.convolve(power, counts)[: max_length + 1], cap)
            if not power.any():  # m arguments take at least m tokens: more no longer fit in max_length
                break
            arguments = np.minimum(arguments + power, cap)
        deeper = np.zeros(max_length + 1)
        deeper[1] = 10.0
        deeper[2:] = np.minimum(4 * arguments[: max_length - 1], cap)
        if np.array_equal(deeper, counts):  # every length up to max_length is reached (or saturated)
            break
        counts = deeper
    return counts


def check_generation_options(
    num_examples: int, min_length: int, max_length: int, max_depth: int, max_args: int
) -> None:
    """Raise naming the options when fewer than ``num_examples`` distinct expressions have
    min_length..max_length tokens (``count_expressions``), e.g. max_depth=1 (digits only) with
    min_length 2, or 20 expressions of 10 digits."""
    counts = count_expressions(max_length, max_depth, max_args, cap=num_examples)
    available = int(min(counts[min_length:].sum(), num_examples))
    if available < num_examples:
        longest = 1
        for _ in range(max_depth - 1):
            longest = 2 + max_args * longest
        raise ValueError(
            f"ListOps: {_options(min_length, max_length, max_depth, max_args)} allow {available} distinct "
            f"expressions (the longest max_depth and max_args can make has {longest} token(s)), fewer than the "
            f"{num_examples} asked (num_test + num_val + num_train); lower the sizes or min_length, or raise "
            f"max_depth or max_length"
        )


def generate_listops(
    num_examples: int, min_length: int, max_length: int, max_depth: int, max_args: int, seed: int, workers: int = 0
) -> tuple[list[list[int]], list[int]]:
    """The first ``num_examples`` distinct expressions (and their values) of one stream: chunks of
    CHUNK_SIZE accepted draws seeded by (seed, chunk), in chunk order. The result depends on the
    seed and options only, not on ``workers`` (processes; 0: one per CPU), and asking for fewer
    gives a prefix of it. Raises naming the options when they allow too few distinct expressions
    (up front), make them too rare to draw, or when a round of draws finds no new one."""
    check_generation_options(num_examples, min_length, max_length, max_depth, max_args)
    options = _options(min_length, max_length, max_depth, max_args)
    seen: set[bytes] = set()
    expressions, labels = [], []
    workers = workers or os.cpu_count() or 1
    position = 0  # accepted draws of the stream consumed so far
    while len(expressions) < num_examples:
        # duplicates are rare (none at LRA lengths), so one round almost always suffices; a later
        # round draws at least a chunk, so that one without a new expression means they are too rare
        missing = num_examples - len(expressions)
        stop = position + (missing if position == 0 else max(missing, CHUNK_SIZE))
        first, last = position // CHUNK_SIZE, (stop - 1) // CHUNK_SIZE
        # a chunk's first n draws do not depend on how many follow: a chunk begun in an earlier
        # round is drawn again from its start and its consumed part skipped
        args = [
            (chunk, min(stop - chunk * CHUNK_SIZE, CHUNK_SIZE), min_length, max_length, max_depth, max_args, seed)
            for chunk in range(first, last + 1)
        ]
        if workers == 1 or len(args) == 1:
            results = [_generate_chunk(*a) for a in args]
        else:
            # fork: the children run pure Python and need no re-import of the caller's main module
            # (spawn would fail in any script without an `if __name__ == "__main__"` guard)
            with ProcessPoolExecutor(min(workers, len(args)), mp_context=multiprocessing.get_context("fork")) as pool:
                results = list(pool.map(_generate_chunk, *zip(*args, strict=True)))
        found = len(expressions)
        for (chunk, *_), (chunk_expressions, chunk_labels) in zip(args, results, strict=True):
            skip = max(position - chunk * CHUNK_SIZE, 0)
            for tokens, value in zip(chunk_expressions[skip:], chunk_labels[skip:], strict=True):
                key = bytes(tokens)
                if key not in seen and len(expressions) < num_examples:
                    seen.add(key)
                    expressions.append(tokens)
                    labels.append(value)
        if len(expressions) == found:
            raise ValueError(
                f"ListOps: {stop - position} more expressions drawn at {options} held no new one: {found} "
                f"distinct expressions in {stop} draws, {num_examples} asked "
                f"(num_test + num_val + num_train); lower the sizes or min_length, or raise max_depth or max_length"
            )
        position = stop
    return expressions, labels


def tokenize(source: str, where: str) -> list[int]:
    """LRA source text -> token ids (brackets "(" and ")" dropped: they only group the LRA
    generator's binary tree and do not change the expression). The ids must form one expression:
    a digit, or an operator, its arguments (at least one) and the "]" that closes it. Errors name
    ``where`` (file and line) and the token's position in the line."""
    ids: list[int] = []
    open_arguments: list[int] = []  # per operator not yet closed, the arguments it has so far
    for position, token in enumerate(source.split(), start=1):
        if token in ("(", ")"):
            continue
        if token not in TOKEN_IDS or token == PAD:
            raise ValueError(f"{where}: unknown token {token!r}; ListOps tokens are {', '.join(VOCAB[1:])}, ( and )")
        if token == CLOSE:
            if not open_arguments:
                raise ValueError(f"{where}: ']' (token {position}) closes no operator")
            if open_arguments.pop() == 0:
                raise ValueError(f"{where}: the operator closed by ']' (token {position}) has no arguments")
        elif ids and not open_arguments:
            raise ValueError(f"{where}: a second expression starts at token {position} ({token!r}); a line holds one")
        else:
            if open_arguments:
                open_arguments[-1] += 1
            if token in OPERATORS:
                open_arguments.append(0)
        ids.append(TOKEN_IDS[token])
    if not ids:
        raise ValueError(f"{where}: empty expression")
    if open_arguments:
        raise ValueError(f"{where}: unbalanced expression: {len(open_arguments)} operator(s) never closed by ']'")
    return ids


def _label(text: str, where: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise ValueError(f"{where}: target {text!r} is not an integer") from None
    if not 0 <= label <= 9:
        raise ValueError(f"{where}: target {label} is outside 0..9")
    return label


def _example(source: str, target: str, where: str, max_length: int) -> tuple[list[int], int]:
    """One line of a file: (token ids, label), the expression at most ``max_length`` tokens long."""
    ids = tokenize(source, where)
    if len(ids) > max_length:
        raise ValueError(
            f"{where}: the expression has {len(ids)} tokens, more than max_length={max_length} (LRA: "
            f"{LRA_MAX_LENGTH}); raise max_length or remove the line"
        )
    return ids, _label(target, where)


def pack(expressions: list[list[int]], labels: list[int]) -> dict[str, np.ndarray]:
    """Ragged token lists as one flat uint8 array with offsets (98k LRA examples in ~100 MB)."""
    offsets = np.zeros(len(expressions) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in expressions])
    tokens = np.fromiter((t for e in expressions for t in e), dtype=np.uint8, count=int(offsets[-1]))
    return {"tokens": tokens, "offsets": offsets, "labels": np.asarray(labels, dtype=np.int64)}


def pack_checked(expressions: list[list[int]], labels: list[int], places: list[str]) -> dict[str, np.ndarray]:
    """``pack``, after checking that every label is its expression's value (``evaluate``): a file's
    wrong label would otherwise train and score the model against a wrong answer. The error names
    the first such example by ``places`` (its file and line) and counts the others."""
    packed = pack(expressions, labels)
    values = evaluate(packed["tokens"], packed["offsets"])
    wrong = np.flatnonzero(values != packed["labels"])
    if len(wrong):
        i = int(wrong[0])
        value = int(values[i])
        others = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ValueError(
            f"{places[i]}: the expression's value is {value} but its label (Target) is {labels[i]}{others}; a "
            f"label must be the value: MIN, MAX, MED (the median; for an even count the mean of the middle two, "
            f"rounded down, as LRA's int(np.median)), SM (the sum mod 10)"
        )
    return packed


def read_listops_tsv(path: Path, max_length: int = LRA_MAX_LENGTH) -> dict[str, np.ndarray]:
    """An LRA file, packed (``pack``): a header ``Source<TAB>Target``, then one expression of at most
    ``max_length`` tokens and its value per line (UTF-8). Errors name the file and line, a label
    that is not its expression's value included."""
    expressions, labels, places = [], [], []
    lines = utf8_lines(path)
    header = next(lines, "").rstrip("\r\n").split("\t")
    if header != ["Source", "Target"]:
        raise ValueError(f"{path}:1: header must be Source<TAB>Target, got {header}")
    for line_number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        where = f"{path}:{line_number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: need 2 tab-separated fields (Source, Target), got {len(fields)}")
        tokens, label = _example(*fields, where, max_length)
        expressions.append(tokens)
        labels.append(label)
        places.append(where)
    if not expressions:
        raise ValueError(f"{path}: no examples in the file")
    return pack_checked(expressions, labels, places)


def read_listops_huggingface(directory: Path, split: str, max_length: int = LRA_MAX_LENGTH) -> dict[str, np.ndarray]:
    """A ``datasets.DatasetDict`` saved with ``save_to_disk``, one split packed (``pack``): splits
    train/validation/test with the LRA columns Source and Target, expressions of at most
    ``max_length`` tokens, each Target its expression's value."""
    from datasets import load_from_disk  # only this source needs it

    dataset = load_from_disk(str(directory))[HF_SPLITS[split]]
    places = [f"{directory} ({HF_SPLITS[split]}) row {i}" for i in range(len(dataset))]
    pairs = [
        _example(row["Source"], str(row["Target"]), place, max_length)
        for row, place in zip(dataset, places, strict=True)
    ]
    return pack_checked([tokens for tokens, _ in pairs], [label for _, label in pairs], places)


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
    "auto": the TSV files, else the Hugging Face copy, else generated. ``max_length`` bounds the
    files' expressions too (a longer one is an error naming its file and line); the other
    generation options apply to generated data only."""

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
        self.source = self._resolve_source(source, data_dir)
        if self.source == "generate":  # fail at configuration time, not after the trainer is built
            check_generation_options(num_train + num_val + num_test, min_length, max_length, max_depth, max_args)
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

    @staticmethod
    def auto_source(data: Mapping[str, Any]) -> str:
        """The source "auto" picks for the data config ``data``: "tsv" when the LRA files are all in
        ``data_dir/listops``, else "huggingface" when a saved copy is there, else "generate"."""
        directory = Path(data.get("data_dir", "data_dir")) / "listops"
        if all((directory / name).exists() for name in TSV_FILES.values()):
            return "tsv"
        return "huggingface" if (directory / "huggingface").exists() else "generate"

    def _resolve_source(self, source: str, data_dir: str) -> str:
        tsv_missing = [name for name in TSV_FILES.values() if not (self.directory / name).exists()]
        if source == "tsv" and tsv_missing:
            raise FileNotFoundError(f"no LRA ListOps files {tsv_missing} in {self.directory}; see data_dir/README.md")
        if source == "huggingface" and not (self.directory / "huggingface").exists():
            raise FileNotFoundError(
                f"no saved Hugging Face dataset at {self.directory / 'huggingface'}; see data_dir/README.md"
            )
        return self.auto_source({"data_dir": data_dir}) if source == "auto" else source

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
        max_length = self.generation["max_length"]
        if self.source == "tsv":
            return {split: read_listops_tsv(self.directory / name, max_length) for split, name in TSV_FILES.items()}
        if self.source == "huggingface":
            directory = self.directory / "huggingface"
            return {split: read_listops_huggingface(directory, split, max_length) for split in TSV_FILES}
        params = {**self.generation, "generator": GENERATOR}
        arrays = cached_arrays(self.directory, "generated", params, lambda: self._generate())
        return {
            split: {k.split("/")[1]: v for k, v in arrays.items() if k.startswith(split + "/")} for split in TSV_FILES
        }

    def _generate(self) -> dict[str, np.ndarray]:
        """One stream of distinct expressions cut into test, val, then train: the held-out sets are
        a prefix of it, the same whatever num_train, and no expression is in two splits."""
        g = self.generation
        splits = ("test", "val", "train")
        sizes = [g[f"num_{split}"] for split in splits]
        expressions, labels = generate_listops(
            sum(sizes), g["min_length"], g["max_length"], g["max_depth"], g["max_args"], g["seed"]
        )
        cuts = np.cumsum([0, *sizes])
        arrays = {}
        for split, start, stop in zip(splits, cuts[:-1], cuts[1:], strict=True):
            for key, value in pack(expressions[start:stop], labels[start:stop]).items():
                arrays[f"{split}/{key}"] = value
        return arrays

    def build_split(self, split: str) -> PaddedTokenDataset:
        if self._packed is None:
            self._packed = self._load()
        pad_to = max(int(np.diff(p["offsets"]).max()) for p in self._packed.values())
        packed = self._packed[split]
        return PaddedTokenDataset(packed["tokens"], packed["offsets"], packed["labels"], pad_to)
