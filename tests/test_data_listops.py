"""LRA ListOps: generator labels and the files' label check against an independent evaluator,
tokenisation, files, caching."""

import itertools
import math
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from ssm_lab.data.cache import cache_path
from ssm_lab.data.listops import (
    GENERATOR,
    VOCAB,
    ListOpsDataModule,
    apply_operator,
    count_expressions,
    evaluate,
    generate_listops,
    pack,
    read_listops_tsv,
    tokenize,
)

# LRA's definitions (lra_benchmarks/data/listops.py): MED is int(np.median(values)), the mean of the
# middle two for an even count, truncated toward zero
FOLD = {"[MIN": min, "[MAX": max, "[MED": lambda v: int(np.median(v)), "[SM": lambda v: sum(v) % 10}


def reference_value(tokens: list[str]) -> int:
    """An independent evaluator: a stack machine over the token strings, with LRA's operators."""
    stack: list = []
    for token in tokens:
        if token == "]":
            args = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())
            stack.append(FOLD[stack.pop()](args))
        else:
            stack.append(token if token.startswith("[") else int(token))
    (value,) = stack
    return value


def as_text(ids: list[int]) -> list[str]:
    return [VOCAB[i] for i in ids]


def test_every_generated_label_agrees_with_an_independent_evaluator():
    expressions, labels = generate_listops(300, 10, 200, 6, 10, seed=1, workers=1)
    assert all(reference_value(as_text(e)) == label for e, label in zip(expressions, labels, strict=True))
    assert len({bytes(e) for e in expressions}) == 300  # distinct
    assert all(10 <= len(e) <= 200 for e in expressions)
    assert set(labels) == set(range(10))


def test_generator_respects_depth_and_arity():
    expressions, _ = generate_listops(200, 3, 300, 3, 4, seed=2, workers=1)
    for e in expressions:
        depth, deepest, open_args = 0, 0, []
        for token in as_text(e):
            if token.startswith("["):
                if open_args:
                    open_args[-1] += 1
                depth += 1
                deepest = max(deepest, depth)
                open_args.append(0)
            elif token == "]":
                assert 2 <= open_args.pop() <= 4
                depth -= 1
            else:
                open_args[-1] += 1
        assert deepest <= 2  # operators sit at depths 1..max_depth-1; depth max_depth holds digits


def test_generation_is_reproducible_and_independent_of_workers():
    a = generate_listops(2_500, 5, 100, 5, 10, seed=3, workers=1)
    b = generate_listops(2_500, 5, 100, 5, 10, seed=3, workers=2)
    c = generate_listops(2_500, 5, 100, 5, 10, seed=4, workers=1)
    assert a == b and a != c


@contextmanager
def within(seconds: int):
    """Fail (rather than hang) when the block runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def all_expressions(max_depth: int, max_args: int, max_length: int) -> set[tuple[str, ...]]:
    """Every expression the sampler can draw, enumerated (small options only)."""
    digits = {(str(d),) for d in range(10)}
    if max_depth == 1:
        return digits
    arguments = [e for e in all_expressions(max_depth - 1, max_args, max_length) if len(e) <= max_length - 3]
    return digits | {
        (operator, *itertools.chain(*args), "]")
        for operator in FOLD
        for m in range(2, max_args + 1)
        for args in itertools.product(arguments, repeat=m)
        if sum(map(len, args)) + 2 <= max_length
    }


@pytest.mark.parametrize("max_depth, max_args, max_length", [(1, 10, 5), (2, 3, 6), (3, 2, 9)])
def test_expression_counts_match_an_enumeration(max_depth, max_args, max_length):
    lengths = [len(e) for e in all_expressions(max_depth, max_args, max_length)]
    expected = np.bincount(lengths, minlength=max_length + 1)
    np.testing.assert_array_equal(count_expressions(max_length, max_depth, max_args, cap=10**12), expected)
    np.testing.assert_array_equal(count_expressions(max_length, max_depth, max_args, cap=50), np.minimum(expected, 50))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_depth=1, min_length=2, num_train=4), r"min_length=2, .*max_depth=1.* allow 0 distinct expressions"),
        (
            dict(max_depth=1, min_length=1, num_train=20),
            r"max_depth=1.* allow 10 distinct expressions.* fewer than the 24",
        ),
        # possible, but an operator of 10 arguments that nearly all are operators of 10: too rare to draw
        (dict(max_depth=3, min_length=110, max_length=122, num_train=4), r"only 0 of 1000 drawn .* min_length=110"),
    ],
)
def test_options_that_allow_too_few_expressions_are_an_error_not_a_hang(tmp_path, options, message):
    sizes = dict(num_val=2, num_test=2, max_length=64, batch_size=2, source="generate", data_dir=tmp_path)
    with within(20), pytest.raises(ValueError, match=message):
        ListOpsDataModule(**{**sizes, **options}).setup()


def test_generation_can_use_up_every_expression_the_options_allow():
    # the 410 expressions of at most 4 tokens at max_depth 2 and max_args 2: 10 digits, 4 x 10 x 10 operators
    expressions, _ = generate_listops(410, 1, 4, 2, 2, seed=0, workers=1)
    assert len({bytes(e) for e in expressions}) == 410


def test_median_and_sum_mod_10():
    assert apply_operator("[MED", [1, 9, 3]) == 3 and apply_operator("[MED", [1, 2, 5, 9]) == 3
    assert apply_operator("[SM", [7, 8, 9]) == 4 and apply_operator("[MIN", [4, 2]) == 2
    with pytest.raises(ValueError, match="unknown operator '\\[FIRST'; choose one of \\[MIN, \\[MAX, \\[MED, \\[SM"):
        apply_operator("[FIRST", [1])


def every_operator_on_every_digit_list(max_arguments: int) -> tuple[list[list[int]], list[int]]:
    """Each operator applied to every list of 1..max_arguments digits, as token ids, and LRA's value."""
    expressions, values = [], []
    for operator, fold in FOLD.items():
        for count in range(1, max_arguments + 1):
            for digits in itertools.product(range(10), repeat=count):
                expressions.append([VOCAB.index(operator), *(VOCAB.index(str(d)) for d in digits), VOCAB.index("]")])
                values.append(fold(list(digits)))
    return expressions, values


def test_operators_agree_with_lras_definitions_on_every_list_of_up_to_four_digits():
    # MED of an even count is the mean of the middle two truncated (LRA's int(np.median)): [MED 1 2 ] is 1
    expressions, values = every_operator_on_every_digit_list(4)
    assert apply_operator("[MED", [1, 2]) == 1 and apply_operator("[MED", [3, 4, 5, 8]) == 4
    assert [apply_operator(VOCAB[e[0]], [int(VOCAB[t]) for t in e[1:-1]]) for e in expressions] == values
    packed = pack(expressions, values)
    np.testing.assert_array_equal(evaluate(packed["tokens"], packed["offsets"]), values)


@pytest.mark.parametrize("chunk_tokens", [1, 97, 2**17])
def test_the_vectorised_evaluator_agrees_with_the_generator_and_a_stack_machine(chunk_tokens):
    # deep and shallow expressions, single digits included, cut into chunks of every size
    expressions, labels = generate_listops(1_500, 1, 300, 12, 10, seed=5, workers=1)
    assert min(map(len, expressions)) == 1 and max(map(len, expressions)) > 200
    packed = pack(expressions, labels)
    values = evaluate(packed["tokens"], packed["offsets"], chunk_tokens=chunk_tokens)
    np.testing.assert_array_equal(values, labels)
    assert values.tolist() == [reference_value(as_text(e)) for e in expressions]


def test_tokenisation_drops_brackets_and_keeps_close():
    ids = tokenize("( ( [MAX 2 ) 9 ] )", "here")
    assert as_text(ids) == ["[MAX", "2", "9", "]"]
    with pytest.raises(ValueError, match="here: unknown token '\\[FIRST'"):
        tokenize("[FIRST 1 2 ]", "here")


def _write_tsv(directory, rows):
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        text = "Source\tTarget\n" + "".join(f"{source}\t{target}\n" for source, target in rows)
        (directory / f"basic_{split}.tsv").write_text(text)


def test_reads_the_official_tsv_files(tmp_path):
    rows = [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( [SM 5 ) ( ( [MIN 3 ) 7 ] ) ) ] )", 8), ("4", 4)]
    _write_tsv(tmp_path / "listops", rows)
    module = ListOpsDataModule(batch_size=2, steps_per_epoch=1, data_dir=tmp_path)  # source=auto finds them
    module.setup()
    assert module.source == "tsv" and len(module.datasets["val"]) == 3
    batch = next(iter(module.val_dataloader()))
    assert batch["lengths"].tolist() == [4, 7]
    assert batch["inputs"].shape == (2, 7) and batch["inputs"][0, 4:].eq(0).all()
    assert as_text(batch["inputs"][1].tolist()) == ["[SM", "5", "[MIN", "3", "7", "]", "]"]
    assert batch["targets"].tolist() == [9, 8]
    assert all(
        reference_value(as_text(batch["inputs"][i, : batch["lengths"][i]].tolist())) == batch["targets"][i]
        for i in range(2)
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("( [MAX 2 9 ]\t12", "basic_train.tsv:3: target 12 is outside 0..9"),
        ("( [MAX 1 2 )\t2", r"basic_train.tsv:3: unbalanced expression: 1 operator\(s\) never closed by '\]'"),
        ("[MAX 1 2 ] ]\t2", r"basic_train.tsv:3: '\]' \(token 5\) closes no operator"),
        ("[MAX ]\t2", r"basic_train.tsv:3: the operator closed by '\]' \(token 2\) has no arguments"),
        ("1 2\t2", r"basic_train.tsv:3: a second expression starts at token 2 \('2'\)"),
        ("( [MAX 2 9 ]", "basic_train.tsv:3: need 2 tab-separated fields"),
        ("( [MAX 2 x ]\t1", "basic_train.tsv:3: unknown token 'x'"),
        ("( [MAX 2 9 ]\tnine", "basic_train.tsv:3: target 'nine' is not an integer"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "basic_train.tsv"
    path.write_text(f"Source\tTarget\n[MIN 1 2 ]\t1\n{line}\n")
    with pytest.raises(ValueError, match=message):
        read_listops_tsv(path)


def test_a_label_that_is_not_the_value_of_its_expression_names_file_line_value_and_label(tmp_path):
    path = tmp_path / "basic_train.tsv"
    lines = [
        "( ( ( ( ( [MED 1 ) 2 ) 5 ) 9 ) ] )\t3",  # LRA: int(np.median([1, 2, 5, 9])) = int(3.5) = 3
        "( ( ( [SM 9 ) 8 ) ] )\t7",
        "( ( ( [MAX 2 ) ( ( ( [MIN 3 ) 7 ) ] ) ) ] )\t3",
        "( ( ( ( [MED 2 ) 3 ) 7 ) ] )\t4",  # the median is 3
        "( ( ( [MIN 4 ) 6 ) ] )\t6",
    ]
    path.write_text("Source\tTarget\n" + "\n".join(lines[:3]) + "\n")
    assert read_listops_tsv(path)["labels"].tolist() == [3, 7, 3]
    path.write_text("Source\tTarget\n" + "\n".join(lines) + "\n")
    message = r"basic_train.tsv:5: the expression's value is 3 but its label \(Target\) is 4 \(and 1 more\)"
    with pytest.raises(ValueError, match=message):
        read_listops_tsv(path)
    _write_tsv(tmp_path / "listops", [("( [MIN 4 6 ] )", 6)])  # through the data module too
    with pytest.raises(ValueError, match=r"basic_train.tsv:2: the expression's value is 4 but its label .* is 6"):
        ListOpsDataModule(batch_size=2, steps_per_epoch=1, data_dir=tmp_path).setup()


def test_a_byte_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "basic_train.tsv"
    path.write_bytes(b"Source\tTarget\n[MIN 1 2 ]\t1\n[MAX 1 \xff ]\t1\n")
    with pytest.raises(ValueError, match=r"basic_train.tsv:3: not UTF-8 text \(byte 0xff at column 8\)"):
        read_listops_tsv(path)


def test_file_expressions_longer_than_max_length_are_an_error(tmp_path):
    long_line = "( [SM " + "1 " * 11 + "] )"  # 13 tokens once the brackets are dropped
    _write_tsv(tmp_path / "listops", [("( [MAX 2 9 ] )", 9), (long_line, 1)])
    module = ListOpsDataModule(min_length=1, max_length=12, batch_size=2, steps_per_epoch=1, data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"basic_train.tsv:3: the expression has 13 tokens, more than max_length=12"):
        module.setup()
    module = ListOpsDataModule(min_length=1, max_length=13, batch_size=2, steps_per_epoch=1, data_dir=tmp_path)
    module.setup()
    assert module.datasets["test"][1]["lengths"] == 13


def test_generated_held_out_sets_do_not_change_with_num_train(tmp_path):
    def splits(num_train):
        module = ListOpsDataModule(
            num_train=num_train, num_val=32, num_test=32, min_length=16, max_length=64, max_depth=4,
            batch_size=4, source="generate", data_dir=tmp_path,
        )  # fmt: skip
        module.setup()
        return {
            name: [bytes(d[i]["inputs"][: d[i]["lengths"]].tolist()) for i in range(len(d))]
            for name, d in module.datasets.items()
        }

    small, large = splits(256), splits(512)
    assert small["test"] == large["test"] and small["val"] == large["val"]
    for words in (small, large):
        test, val, train = (set(words[name]) for name in ("test", "val", "train"))
        assert len(test) == 32 and len(val) == 32 and len(train) == len(words["train"])
        assert not test & val and not (test | val) & train
    assert set(small["train"]) <= set(large["train"])


def test_missing_files_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="no LRA ListOps files .*basic_train.tsv.*data_dir/README.md"):
        ListOpsDataModule(source="tsv", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown source 'web'; choose one of auto, generate, tsv, huggingface"):
        ListOpsDataModule(source="web", data_dir=tmp_path)
    with pytest.raises(ValueError, match="min_length 50 is above max_length 20"):
        ListOpsDataModule(min_length=50, max_length=20, data_dir=tmp_path)
    with pytest.raises(ValueError, match="max_args must be an integer >= 2"):
        ListOpsDataModule(max_args=1, data_dir=tmp_path)


def test_generated_data_is_cached_under_its_parameters(tmp_path):
    def make(seed):
        kwargs = dict(num_train=40, num_val=10, num_test=10, min_length=8, max_length=40, max_depth=4)
        return ListOpsDataModule(
            **kwargs, seed=seed, batch_size=4, steps_per_epoch=1, source="generate", data_dir=tmp_path
        )

    module = make(0)
    module.setup()
    cached = cache_path(tmp_path / "listops", "generated", {**module.generation, "generator": GENERATOR})
    assert cached.exists() and not list((tmp_path / "listops").glob(".*tmp"))
    again = make(0)
    again.setup()
    for split in ("train", "val", "test"):
        first, second = module.datasets[split], again.datasets[split]
        assert all(torch.equal(first[i]["inputs"], second[i]["inputs"]) for i in range(len(first)))
    other = make(1)
    other.setup()
    assert len(list((tmp_path / "listops").glob("generated-*.npz"))) == 2
    item = other.datasets["train"][0]
    assert reference_value(as_text(item["inputs"][: item["lengths"]].tolist())) == item["targets"].item()
    assert np.all(np.diff(module.datasets["train"].offsets) >= 8)


def test_listops_trains_end_to_end(train):
    summary = train("data=listops", "trainer.max_steps=20")
    assert summary["status"] == "completed"
    assert all(math.isfinite(v) for v in summary["final"].values())
    assert 0.0 <= summary["final"]["test/accuracy"] <= 1.0


def hugging_face_copy(data_dir, targets: list[int]) -> ListOpsDataModule:
    """A ListOps module over a saved Hugging Face copy whose three splits hold two expressions with ``targets``."""
    datasets = pytest.importorskip("datasets")
    rows = {"Source": ["( [MIN 4 ( [MAX 1 7 ] ) ]", "( [SM 9 9 ] )"], "Target": targets}
    splits = {name: datasets.Dataset.from_dict(rows) for name in ("train", "validation", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(data_dir / "listops" / "huggingface"))
    return ListOpsDataModule(batch_size=2, steps_per_epoch=1, data_dir=data_dir)


def test_reads_a_saved_hugging_face_copy(tmp_path):
    module = hugging_face_copy(tmp_path, [4, 8])
    module.setup()
    assert module.source == "huggingface"
    item = module.datasets["test"][0]
    assert as_text(item["inputs"][: item["lengths"]].tolist()) == ["[MIN", "4", "[MAX", "1", "7", "]", "]"]
    assert [module.datasets["train"][i]["targets"].item() for i in range(2)] == [4, 8]


def test_a_wrong_label_in_a_saved_hugging_face_copy_names_its_row(tmp_path):
    module = hugging_face_copy(tmp_path, [4, 9])
    with pytest.raises(ValueError, match=r"huggingface \(train\) row 1: the expression's value is 8 but its label"):
        module.setup()
