"""Correlation metrics of image-quality assessment."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats


def _correlation(fn: Callable, pred: np.ndarray, target: np.ndarray) -> float | None:
    # A constant input or a single item has no defined correlation; JSON wants
    # null then, not NaN, so None stands for "undefined".
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return None
    value = float(fn(pred, target).statistic)
    return value if math.isfinite(value) else None


def srcc(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Spearman rank correlation, or None when undefined."""
    return _correlation(stats.spearmanr, pred, target)


def plcc(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Pearson linear correlation, or None when undefined."""
    return _correlation(stats.pearsonr, pred, target)


def krcc(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Kendall rank correlation, or None when undefined."""
    return _correlation(stats.kendalltau, pred, target)


def per_image_mean(pred: np.ndarray, image_idx: np.ndarray, num_images: int) -> np.ndarray:
    """Average patch predictions per image: the image's score is the mean over its patches."""
    sums = np.bincount(image_idx, weights=pred, minlength=num_images)
    counts = np.bincount(image_idx, minlength=num_images)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"no patch predicted for image {missing}")
    return sums / counts


def format_metric(value: float | None) -> str:
    """Four decimals, or "n/a" for an undefined correlation."""
    return "n/a" if value is None else f"{value:.4f}"
