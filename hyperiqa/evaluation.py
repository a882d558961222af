"""Scoring images with a model: load a checkpoint, predict patches, average per image.

Validation during training, evaluate.py and predict.py all go through
``predict_images`` so an image's score means the same thing everywhere: the
mean over its planned patches (the original demo's protocol), cut at the
fixed evaluation crops of :func:`pipelines.patches.eval_plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from hyperiqa.errors import UserError
from hyperiqa.metrics import per_image_mean
from hyperiqa.model import HyperNet, ModelLoadError, load_hypernet
from hyperiqa.runtime import Runtime, resolve_runtime
from pipelines.factory import make_loader
from pipelines.loader import PatchLoader
from pipelines.patches import EVAL_SEED, PatchPlan, eval_plan

EVAL_WINDOW = 32  # images decoded together; crops do not depend on it


def load_checkpoint(path: str | Path, rt: Runtime) -> HyperNet:
    """A HyperNet with the weights of ``path`` (best_model.pkl, koniq_pretrained.pkl), in eval mode."""
    try:
        model = load_hypernet(str(path))
    except ModelLoadError as e:
        raise UserError(str(e)) from None
    return rt.prepare_model(model).eval()


@torch.inference_mode()
def predict_patches(
    model: torch.nn.Module, loader: PatchLoader, plan: PatchPlan, rt: Runtime
) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, image index) of every patch of ``plan``, in eval mode, on the host."""
    was_training = model.training
    model.eval()
    preds, idx = [], []
    try:
        for batch in loader.batches(plan):
            with rt.autocast():
                pred = model(rt.prepare_input(batch.images))
            preds.append(pred.float())
            idx.append(batch.image_idx)
    finally:
        model.train(was_training)
    if not preds:  # an empty shard of a distributed run
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    # One device-to-host copy for the whole pass, not one per batch.
    return torch.cat(preds).cpu().numpy().astype(np.float64), torch.cat(idx).cpu().numpy()


def predict_images(
    model: torch.nn.Module, loader: PatchLoader, plan: PatchPlan, num_images: int, rt: Runtime
) -> np.ndarray:
    """Per-image scores (mean over each image's patches), indexed like the loader's images."""
    pred, image_idx = predict_patches(model, loader, plan, rt)
    return per_image_mean(pred, image_idx, num_images)


def score_images(
    model: torch.nn.Module,
    paths: Sequence[Path],
    rt: Runtime,
    *,
    resize: tuple[int, int] = (384, 512),
    patch_num: int = 25,
    patch_size: int = 224,
    seed: int = EVAL_SEED,
) -> np.ndarray:
    """One score per image file: the mean prediction over ``patch_num`` fixed crops."""
    loader = make_loader(rt.loader, paths, rt.loader_settings(resize))
    plan = eval_plan(
        len(paths),
        seed=seed,
        patches_per_image=patch_num,
        patch_size=patch_size,
        resize=resize,
        window=EVAL_WINDOW,
    )
    try:
        return predict_images(model, loader, plan, len(paths), rt)
    finally:
        loader.close()


def score_files(
    checkpoint: str | Path,
    paths: Sequence[Path],
    *,
    device: str = "auto",
    loader: str = "auto",
    num_workers: int = 0,
    batch_size: int = 96,
    resize: tuple[int, int] = (384, 512),
    patch_num: int = 25,
    patch_size: int = 224,
    echo: Callable[[str], None] = print,
) -> np.ndarray:
    """Load ``checkpoint`` and score image files, deciding the runtime as train.py does."""
    rt = resolve_runtime(
        device=device, loader=loader, num_workers=num_workers, batch_size=batch_size
    )
    model = load_checkpoint(checkpoint, rt)
    echo(rt.loader_reason)
    return score_images(model, paths, rt, resize=resize, patch_num=patch_num, patch_size=patch_size)
