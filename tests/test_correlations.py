"""Tests for hyperiqa.scoring's correlations against scipy, undefined cases, the
per-image mean over patches and the display format."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hyperiqa.history import format_correlation as format_metric
from hyperiqa.scoring import correlations, krcc, per_image_mean, plcc, srcc

METRICS = [(srcc, stats.spearmanr), (plcc, stats.pearsonr), (krcc, stats.kendalltau)]


@pytest.mark.parametrize(("fn", "ref"), METRICS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_on_random_data(fn, ref, seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 100, size=200)
    pred = target + rng.normal(0, 20, size=200)
    value = fn(pred, target)
    assert isinstance(value, float)
    assert value == pytest.approx(float(ref(pred, target)[0]), abs=1e-12)
    assert 0 < value < 1


@pytest.mark.parametrize(("fn", "ref"), METRICS)
def test_matches_scipy_with_ties_and_lists(fn, ref) -> None:
    pred = [1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 4.0]
    target = [1, 3, 2, 2, 5, 4, 4]
    assert fn(pred, target) == pytest.approx(float(ref(pred, target)[0]), abs=1e-12)


@pytest.mark.parametrize("fn", [srcc, plcc, krcc])
def test_perfect_and_inverse(fn) -> None:
    x = np.arange(10, dtype=np.float64)
    assert fn(x, x) == pytest.approx(1.0)
    assert fn(-x, x) == pytest.approx(-1.0)


def test_srcc_is_rank_based_plcc_is_not() -> None:
    x = np.arange(1, 11, dtype=np.float64)
    y = x**5
    assert srcc(x, y) == pytest.approx(1.0)
    assert krcc(x, y) == pytest.approx(1.0)
    assert plcc(x, y) < 0.99


@pytest.mark.parametrize("fn", [srcc, plcc, krcc])
def test_undefined_is_none(fn) -> None:
    assert fn(np.full(5, 3.0), np.arange(5.0)) is None  # constant prediction
    assert fn(np.arange(5.0), np.full(5, 3.0)) is None  # constant target
    assert fn(np.array([1.0]), np.array([2.0])) is None  # one item
    assert fn(np.array([]), np.array([])) is None  # nothing


@pytest.mark.parametrize("fn", [srcc, plcc, krcc])
def test_two_items_is_defined(fn) -> None:
    assert fn(np.array([1.0, 2.0]), np.array([3.0, 5.0])) == pytest.approx(1.0)


def test_float32_input() -> None:
    rng = np.random.default_rng(5)
    a = rng.random(50).astype(np.float32)
    b = rng.random(50).astype(np.float32)
    assert plcc(a, b) == pytest.approx(float(stats.pearsonr(a.astype(np.float64), b)[0]))


# -- per-image mean ------------------------------------------------------------------


def test_per_image_mean() -> None:
    rng = np.random.default_rng(0)
    num_images, p = 6, 4
    image_idx = rng.permutation(np.repeat(np.arange(num_images), p))
    pred = rng.normal(size=image_idx.size)
    got = per_image_mean(pred, image_idx, num_images)
    expected = np.array([pred[image_idx == i].mean() for i in range(num_images)])
    assert got.shape == (num_images,)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_per_image_mean_uneven_counts() -> None:
    pred = np.array([1.0, 2.0, 3.0, 10.0, 7.0])
    image_idx = np.array([0, 0, 0, 2, 1])
    np.testing.assert_allclose(per_image_mean(pred, image_idx, 3), [2.0, 7.0, 10.0])


def test_per_image_mean_missing_image_raises() -> None:
    pred = np.array([1.0, 2.0, 3.0])
    image_idx = np.array([0, 0, 2])
    with pytest.raises(ValueError, match="image 1"):
        per_image_mean(pred, image_idx, 3)


def test_per_image_mean_missing_trailing_image_raises() -> None:
    with pytest.raises(ValueError, match="image 3"):
        per_image_mean(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 2]), 4)


# -- format ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "n/a"), (0.91234, "0.9123"), (1.0, "1.0000"), (-0.5, "-0.5000"), (0.0, "0.0000")],
)
def test_format_metric(value, text: str) -> None:
    assert format_metric(value) == text


def test_correlations_hold_all_three_and_the_count() -> None:
    pred, labels = np.array([1.0, 2.0, 4.0, 3.0]), np.array([10.0, 20.0, 30.0, 40.0])
    c = correlations(pred, labels)
    assert (c.srcc, c.plcc, c.krcc) == (srcc(pred, labels), plcc(pred, labels), krcc(pred, labels))
    assert c.num_images == 4
