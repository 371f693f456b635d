"""Groups of the word-problem benchmark and their data module: axioms, orders, files, training."""

import collections
import logging
import math

import numpy as np
import pytest

from ssm_lab.data.groups import GROUPS, cycle_notation, element_orders, multiplication_table, running_products
from ssm_lab.data.word_problems import WordProblemDataModule, read_word_problem_csv, word_problem_file

#: How many elements of each order (Sylow counts and conjugacy classes; Z60 has phi(d) of order d).
ORDER_COUNTS = {
    "A5": {1: 1, 2: 15, 3: 20, 5: 24},
    "S5": {1: 1, 2: 25, 3: 20, 4: 30, 5: 24, 6: 20},
    "A4xZ5": {1: 1, 2: 3, 3: 8, 5: 4, 10: 12, 15: 32},
    "Z60": {d: sum(math.gcd(k, d) == 1 for k in range(1, d + 1)) for d in range(1, 61) if 60 % d == 0},
}


@pytest.fixture(scope="module", params=sorted(GROUPS))
def group(request):
    elements = GROUPS[request.param]()
    return request.param, elements, multiplication_table(elements)


def test_group_axioms(group):
    name, elements, table = group
    n = len(elements)
    assert n == (120 if name == "S5" else 60)
    np.testing.assert_array_equal(table[0], np.arange(n))  # identity first, on both sides
    np.testing.assert_array_equal(table[:, 0], np.arange(n))
    for row in table:  # Latin square: every element has a unique inverse and solutions are unique
        assert sorted(row) == list(range(n))
    a, b, c = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    np.testing.assert_array_equal(table[table[a, b], c], table[a, table[b, c]])  # associativity


def test_element_order_counts(group):
    name, _, table = group
    assert dict(collections.Counter(element_orders(table).tolist())) == ORDER_COUNTS[name]


def test_abelian_exactly_for_z60(group):
    name, _, table = group
    assert np.array_equal(table, table.T) == (name == "Z60")


def test_names_are_unique_cycle_notation(group):
    _, elements, _ = group
    names = [cycle_notation(p) for p in elements]
    assert names[0] == "e" and len(set(names)) == len(names)
    assert cycle_notation((1, 2, 0, 4, 3)) == "(0 1 2)(3 4)"


def test_running_products_against_a_fold():
    elements = GROUPS["S5"]()
    table = multiplication_table(elements)
    words = np.random.default_rng(0).integers(0, 120, size=(4, 7))
    products = running_products(words, table)
    for word, row in zip(words, products, strict=True):
        state = tuple(range(5))
        for element, expected in zip(word, row, strict=True):
            state = tuple(state[k] for k in elements[element])
            assert elements[expected] == state


def test_module_is_reproducible_by_seed_and_splits_differ(tmp_path):
    def make(seed):
        module = WordProblemDataModule(
            "A4xZ5", seq_len=5, num_train=50, num_val=20, num_test=20, seed=seed, data_dir=tmp_path
        )
        module.setup()
        return module

    a, b, c = make(1), make(1), make(2)
    for split in ("train", "val", "test"):
        assert a.datasets[split].tensors["inputs"].equal(b.datasets[split].tensors["inputs"])
    assert not a.datasets["train"].tensors["inputs"].equal(c.datasets["train"].tensors["inputs"])
    assert not a.datasets["val"].tensors["inputs"].equal(a.datasets["test"].tensors["inputs"])
    assert a.spec.vocab_size == 60 and a.spec.vocab[0] == "e"


def test_generated_held_out_words_are_distinct_and_never_trained_on():
    """At length 3 (216,000 words) independent draws of 50,000 train words would hold ~21% of val's."""

    def splits(num_train):
        module = WordProblemDataModule("A5", seq_len=3, num_train=num_train, num_val=2000, num_test=2000, seed=4)
        module.setup()
        return {name: [tuple(w) for w in module.datasets[name].tensors["inputs"].tolist()] for name in module.splits}

    words = splits(50_000)
    test, val, train = set(words["test"]), set(words["val"]), set(words["train"])
    assert len(test) == len(words["test"]) == 2000 and len(val) == len(words["val"]) == 2000
    assert not test & val and not (test | val) & train and len(words["train"]) == 50_000
    fewer = splits(1000)
    assert fewer["test"] == words["test"] and fewer["val"] == words["val"]  # independent of num_train
    assert splits(50_000) == words


def test_a_word_space_too_small_for_the_held_out_words_is_an_error():
    with pytest.raises(
        ValueError, match=r"A5 has 60\^2 = 3600 distinct words of length 2: too few for 2000 test and 2000 val"
    ):
        WordProblemDataModule("A5", seq_len=2, num_val=2000, num_test=2000)
    assert len(WordProblemDataModule("A5", seq_len=2, num_val=256, num_test=256).build_split("test")) == 256


def _write_paper_file(path, words, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    products = running_products(words, table)
    lines = ["seed,input,target"] + [
        "7," + " ".join(map(str, w)) + "," + " ".join(map(str, p)) for w, p in zip(words, products, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return products


def test_reads_the_papers_csv_when_present(tmp_path):
    table = multiplication_table(GROUPS["A5"]())
    words = np.random.default_rng(3).integers(0, 60, size=(40, 6))
    path = word_problem_file(tmp_path, "A5", 6)
    assert path.name == "A5=6.csv"
    products = _write_paper_file(path, words, table)
    read_words, read_products = read_word_problem_csv(path, 60, 6)
    np.testing.assert_array_equal(read_words, words)
    np.testing.assert_array_equal(read_products, products)

    module = WordProblemDataModule(
        "A5", seq_len=6, num_train=30, num_val=5, num_test=5, source="auto", data_dir=tmp_path
    )
    module.setup()
    sizes = [len(module.datasets[s]) for s in ("train", "val", "test")]
    assert sizes == [30, 5, 5] and module.from_file and module.vocab[:2] == ("0", "1")
    rows = {tuple(w) for w in words.tolist()}
    assert all(tuple(w) in rows for split in module.datasets.values() for w in split.tensors["inputs"].tolist())


def test_a_file_with_fewer_words_than_asked_trains_on_the_rest_and_says_so(tmp_path, caplog):
    table = multiplication_table(GROUPS["A5"]())
    _write_paper_file(word_problem_file(tmp_path, "A5", 4), np.random.default_rng(0).integers(0, 60, (40, 4)), table)
    module = WordProblemDataModule(
        "A5", seq_len=4, num_train=1000, num_val=5, num_test=5, data_dir=tmp_path, source="file"
    )
    with caplog.at_level(logging.WARNING):
        module.setup()
    assert "A5=4.csv holds 40 words: training on the 30 left after 5 test and 5 val words, not num_train=1000" in (
        caplog.text
    )
    assert len(module.build_split("train")) == 30
    too_small = WordProblemDataModule("A5", seq_len=4, num_val=20, num_test=20, data_dir=tmp_path, source="file")
    with pytest.raises(ValueError, match=r"A5=4.csv holds 40 words, too few for 20 test and 20 val words"):
        too_small.setup()


def test_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("seed,input,target\n0,1 2,1 2\n0,1 2 x,1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: input '1 2 x' is not a list of integer"):
        read_word_problem_csv(path, 60, 2)
    path.write_text("seed,input,target\n0,1 2,1 2\n0,1 2 3,1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: need 2 ids in input and target, got 3 and 3"):
        read_word_problem_csv(path, 60, 2)
    path.write_text("seed,input,target\n0,1 2,1 5\n0,1 2,1 6\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: 1 . 2 = 6 here but 5 earlier"):
        read_word_problem_csv(path, 60, 2)
    path.write_text("seed,input,target\n0,1 70,1 2\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: input has element ids \[70\] outside 0..59"):
        read_word_problem_csv(path, 60, 2)
    path.write_text("seed,word\n0,1 2\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: header needs columns input and target"):
        read_word_problem_csv(path, 60, 2)
    path.write_bytes(b"seed,input,target\n0,1 2,1 2\n0,1 \xe9 2,1 2\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: not UTF-8 text \(byte 0xe9 at column 5\)"):
        read_word_problem_csv(path, 60, 2)


def test_bad_options_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown group 'A6'; choose one of A5, S5, A4xZ5, Z60"):
        WordProblemDataModule("A6")
    with pytest.raises(ValueError, match="unknown source 'web'; choose one of auto, generate, file"):
        WordProblemDataModule("A5", source="web")
    with pytest.raises(FileNotFoundError, match=r"word_problems/Z60=8.csv; put the paper's Z60=8.csv there"):
        WordProblemDataModule("Z60", seq_len=8, source="file", data_dir=tmp_path)


def test_word_problem_trains_end_to_end(train):
    summary = train("data=S5", "trainer.max_steps=20")
    assert summary["status"] == "completed"
    assert all(math.isfinite(v) for v in summary["final"].values())
    assert 0.0 <= summary["final"]["test/accuracy"] <= 1.0
