"""Scoring images with a model, and how well the scores agree with the labels.

An image's score is the mean prediction over its patches, cut at the fixed
evaluation crops of :func:`pipelines.patches.eval_plan` (the same positions for
every image), so a score depends on the image alone. Validation and the
held-out sets during training, evaluate.py, predict.py and the ``Scorer`` all
score this way; the correlations (SRCC, PLCC, KRCC) compare such scores with
the labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats

from hyperiqa.errors import UserError
from hyperiqa.history import Correlations
from hyperiqa.progress import progress_bar
from hyperiqa.runtime import Runtime
from pipelines.loader import PatchLoader
from pipelines.patches import PatchPlan


@torch.inference_mode()
def predict_patches(
    model: torch.nn.Module,
    loader: PatchLoader,
    plan: PatchPlan,
    rt: Runtime,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, image index) of every patch of ``plan``, in eval mode, on the host."""
    was_training = model.training
    model.eval()
    preds, idx = [], []
    try:
        with progress_bar(
            total=plan.num_patches, desc="scoring", unit="patch", show=progress
        ) as bar:
            for batch in loader.batches(plan):
                with rt.autocast():
                    pred = model(rt.prepare_input(batch.images))
                preds.append(pred.float())
                idx.append(batch.image_idx)
                bar.update(batch.images.shape[0])
    finally:
        model.train(was_training)
    if not preds:  # an empty shard of a distributed run
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    # One device-to-host copy for the whole pass, not one per batch.
    return torch.cat(preds).cpu().numpy().astype(np.float64), torch.cat(idx).cpu().numpy()


def per_image_mean(pred: np.ndarray, image_idx: np.ndarray, num_images: int) -> np.ndarray:
    """Average patch predictions per image: the image's score is the mean over its patches."""
    sums = np.bincount(image_idx, weights=pred, minlength=num_images)
    counts = np.bincount(image_idx, minlength=num_images)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"no patch predicted for image {missing}")
    return sums / counts


def check_finite(scores: np.ndarray, images: Sequence[object] | None = None) -> np.ndarray:
    """``scores``, or a UserError when the model gave NaN/inf (weights that hold
    them): such a number would pass for a score and break every JSON written.
    Without ``images``, the first bad one is named by its index."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        first = f"image {bad[0]}" if images is None else images[bad[0]]
        raise UserError(
            f"the model gives no finite score for {len(bad)} of {len(scores)} images "
            f"(first: {first}); its weights may hold NaN or inf"
        )
    return scores


# -- correlations ----------------------------------------------------------------------


def _correlation(fn: Callable, pred: np.ndarray, labels: np.ndarray) -> float | None:
    # A constant input or a single item has no defined correlation; JSON wants
    # null then, not NaN, so None stands for "undefined".
    pred, labels = np.asarray(pred, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(labels) == 0:
        return None
    value = float(fn(pred, labels).statistic)
    return value if math.isfinite(value) else None


def srcc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Spearman rank correlation, or None when undefined."""
    return _correlation(stats.spearmanr, pred, labels)


def plcc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Pearson linear correlation, or None when undefined."""
    return _correlation(stats.pearsonr, pred, labels)


def krcc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Kendall rank correlation, or None when undefined."""
    return _correlation(stats.kendalltau, pred, labels)


def correlations(pred: np.ndarray, labels: np.ndarray) -> Correlations:
    """All three correlations of per-image scores with their labels."""
    return Correlations(
        srcc=srcc(pred, labels),
        plcc=plcc(pred, labels),
        krcc=krcc(pred, labels),
        num_images=len(labels),
    )
