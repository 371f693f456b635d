"""Exact signature terms (Chen's identity) and the toy signature-regression dataset."""

import itertools
import math

import numpy as np
import pytest
import torch

from ssm_lab.data.toy_signature import WORDS, ToySignatureDataModule, toy_signature_paths
from ssm_lab.ops.signature import signature_term, signature_term_loop


def brute_force_signature_term(points: np.ndarray, word: tuple[int, ...]) -> float:
    """Iterated integral of the piecewise-linear path by summing over every non-decreasing
    assignment of the word's letters to segments: letters sharing a segment integrate over an
    ordered sub-simplex of it, which contributes 1/m! for m of them."""
    increments = np.diff(points, axis=0)
    total = 0.0
    for segments in itertools.combinations_with_replacement(range(len(increments)), len(word)):
        term = math.prod(increments[s, letter] for s, letter in zip(segments, word, strict=True))
        term /= math.prod(math.factorial(len(list(run))) for _, run in itertools.groupby(segments))
        total += term
    return total


@pytest.mark.parametrize("word", [(0,), (0, 1), (1, 0), (0, 0), (0, 1, 2), (2, 1, 0), (1, 1, 0), (0, 1, 2, 0)])
def test_signature_term_matches_brute_force_iterated_integrals(word):
    points = torch.randn(3, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([brute_force_signature_term(p.numpy(), word) for p in points], dtype=torch.float64)
    torch.testing.assert_close(signature_term(points, word), expected, rtol=1e-10, atol=1e-12)


def test_signature_term_closed_forms():
    points = torch.randn(4, 9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total = points[:, -1] - points[:, 0]
    # level 1 is the increment; the symmetric part of level 2 is a shuffle product: S^{ii} = (X^i)^2 / 2
    torch.testing.assert_close(signature_term(points, (1,)), total[:, 1])
    torch.testing.assert_close(signature_term(points, (0, 0)), total[:, 0] ** 2 / 2)
    torch.testing.assert_close(
        signature_term(points, (0, 1)) + signature_term(points, (1, 0)), total[:, 0] * total[:, 1]
    )


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_vectorised_signature_term_matches_the_loop_in_values_and_gradients(dtype, tolerance):
    points = torch.randn(5, 30, 3, dtype=dtype, generator=torch.Generator().manual_seed(2)) / 3
    for word in ((0, 1), (0, 1, 2), (2, 0, 2, 1)):
        fast_points, loop_points = points.clone().requires_grad_(), points.clone().requires_grad_()
        fast, loop = signature_term(fast_points, word), signature_term_loop(loop_points, word)
        torch.testing.assert_close(fast, loop, rtol=tolerance, atol=tolerance)
        weights = torch.randn(5, dtype=dtype, generator=torch.Generator().manual_seed(3))
        (fast * weights).sum().backward()
        (loop * weights).sum().backward()
        torch.testing.assert_close(fast_points.grad, loop_points.grad, rtol=tolerance, atol=tolerance)


def test_signature_term_agrees_with_roughpy():
    roughpy = pytest.importorskip("roughpy")
    points = np.random.default_rng(4).standard_normal((2, 12, 3))
    context = roughpy.get_context(width=3, depth=3, coeffs=roughpy.DPReal)
    for path in points:
        increments = np.diff(path, axis=0)
        stream = roughpy.LieIncrementStream.from_increments(
            increments, indices=np.arange(len(increments), dtype=float), ctx=context
        )
        signature = np.array(stream.signature(roughpy.RealInterval(0, len(increments))))
        # roughpy orders terms by level, then lexicographically: S^{12} at 1 + 3 + 1, S^{123} at 1 + 3 + 9 + 5
        s12 = signature_term(torch.from_numpy(path[None]), (0, 1)).item()
        s123 = signature_term(torch.from_numpy(path[None]), (0, 1, 2)).item()
        assert s12 == pytest.approx(signature[1 + 3 + 1], rel=1e-9, abs=1e-12)
        assert s123 == pytest.approx(signature[1 + 3 + 9 + 5], rel=1e-9, abs=1e-12)


def test_bad_paths_and_words_are_refused():
    with pytest.raises(ValueError, match="word must be .* 0..1, got \\(0, 2\\)"):
        signature_term(torch.zeros(1, 3, 2), (0, 2))
    with pytest.raises(ValueError, match="non-empty"):
        signature_term(torch.zeros(1, 3, 2), ())
    with pytest.raises(ValueError, match="L >= 2 points"):
        signature_term(torch.zeros(1, 1, 2), (0, 1))


@pytest.mark.parametrize("dim", [2, 3])
def test_toy_paths_follow_the_recipe(dim):
    paths, labels = toy_signature_paths(num_paths=64, seq_len=10, dim=dim, seed=5)
    assert paths.shape == (64, 10, dim) and labels.shape == (64,)
    assert np.abs(paths).max() == pytest.approx(1.0) and np.abs(labels).max() == pytest.approx(1.0)
    # the same stream of rounded Gaussian increments, summed, scaled by the dataset's largest |value|
    walks = np.cumsum(np.round(np.random.default_rng(5).standard_normal((64, 10, dim))), axis=1)
    np.testing.assert_allclose(paths, walks / np.abs(walks).max(), rtol=1e-6)
    raw = signature_term(torch.from_numpy(paths.astype(np.float64)), WORDS[dim]).numpy()
    np.testing.assert_allclose(labels, raw / np.abs(raw).max(), rtol=1e-5, atol=1e-6)


def test_toy_data_is_reproducible_by_seed():
    a, b, c = (toy_signature_paths(32, 8, 3, seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_toy_module_splits_80_20_and_refuses_bad_dims():
    module = ToySignatureDataModule(dim=3, seq_len=12, num_paths=100, batch_size=8, steps_per_epoch=2)
    module.setup()
    assert [len(module.datasets[s]) for s in ("train", "val", "test")] == [80, 20, 20]
    batch = next(iter(module.train_dataloader()))
    assert batch["inputs"].shape == (8, 12, 3) and batch["targets"].shape == (8, 1)
    assert module.spec.d_input == 3 and module.spec.output_kind == "sequence_regression"
    with pytest.raises(ValueError, match="dim must be one of 2, 3, got 4"):
        ToySignatureDataModule(dim=4)


def test_toy_increments_sum_back_to_the_path_with_the_same_labels():
    kwargs = dict(dim=2, seq_len=9, num_paths=40, batch_size=4, steps_per_epoch=1)
    values, increments = (ToySignatureDataModule(inputs=kind, **kwargs) for kind in ("values", "increments"))
    for module in (values, increments):
        module.setup()
    x, dx = values.datasets["train"].tensors["inputs"], increments.datasets["train"].tensors["inputs"]
    assert torch.equal(values.datasets["val"].tensors["targets"], increments.datasets["val"].tensors["targets"])
    assert float(dx.square().mean().sqrt()) == pytest.approx(1.0, rel=0.1)  # the train part of a unit-RMS set
    assert dx[:, 0].eq(0).all()  # the path starts at its first point, not at the origin
    scale = float(x[:, 1:].sub(x[:, :-1]).abs().max() / dx[:, 1:].abs().max())
    torch.testing.assert_close(torch.cumsum(dx, dim=1) * scale, x - x[:, :1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown inputs 'levels'; choose one of values, increments"):
        ToySignatureDataModule(inputs="levels")


@pytest.mark.parametrize("dim", [2, 3])
def test_toy_increments_rebuild_the_labelled_path_and_nothing_more(dim):
    """The label is a signature term of X_1..X_L. The path the increments drive (a CDE's control:
    from the origin, one segment per increment) must have that signature, up to the one scale the
    normalisations leave; computed here by brute force."""
    module = ToySignatureDataModule(dim=dim, seq_len=8, num_paths=30, inputs="increments", batch_size=4)
    module.setup()
    increments = torch.cat([module.datasets[s].tensors["inputs"] for s in ("train", "val")]).double().numpy()
    labels = torch.cat([module.datasets[s].tensors["targets"] for s in ("train", "val")])[:, 0].double().numpy()
    rebuilt = np.concatenate([np.zeros_like(increments[:, :1]), np.cumsum(increments, axis=1)], axis=1)
    terms = np.array([brute_force_signature_term(path, WORDS[dim]) for path in rebuilt])
    scale = labels @ terms / (terms @ terms)  # the best-scaled fit: exact when the paths are the labelled ones
    assert np.abs(labels).max() == pytest.approx(1.0)
    np.testing.assert_allclose(scale * terms, labels, atol=1e-6)


def test_toy_signature_trains_end_to_end(train):
    summary = train("data=toy_signature", "data.dim=3", "trainer.max_steps=20")
    assert summary["status"] == "completed"
    assert all(math.isfinite(v) for v in summary["final"].values())
    assert "test/rmse" in summary["final"]
