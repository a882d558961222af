"""Scoring images with a model: patch predictions averaged per image.

Validation, evaluate.py and predict.py all go through ``predict_images`` so an
image's score means the same thing everywhere: the mean over its planned
patches (the original demo's protocol).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from hyperiqa.metrics import per_image_mean
from pipelines.batching import PatchLoader
from pipelines.patches import PatchPlan

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; a no-op on the CPU, which always trains in fp32."""
    if device.type != "cuda" or amp in (None, "off"):
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[amp])


def prepare_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    # channels_last lets cuDNN pick its fastest (NHWC tensor-core) kernels.
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def patch_predictions(
    model: torch.nn.Module,
    loader: PatchLoader,
    plan: PatchPlan,
    *,
    amp: str | None = None,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (predictions, image_idx) per batch, both still on the device."""
    for batch in loader.batches(plan):
        with autocast(batch.images.device, amp):
            pred = model(prepare_input(batch.images, channels_last))
        yield pred.float(), batch.image_idx


@torch.inference_mode()
def predict_patches(
    model: torch.nn.Module,
    loader: PatchLoader,
    plan: PatchPlan,
    *,
    amp: str | None = None,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, image index) of every patch of ``plan``, in eval mode, on the host."""
    was_training = model.training
    model.eval()
    preds, idx = [], []
    try:
        for p, i in patch_predictions(model, loader, plan, amp=amp, channels_last=channels_last):
            preds.append(p)
            idx.append(i)
    finally:
        model.train(was_training)
    if not preds:  # an empty shard of a distributed run
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    # One device-to-host copy for the whole pass, not one per batch.
    return torch.cat(preds).cpu().numpy().astype(np.float64), torch.cat(idx).cpu().numpy()


def predict_images(
    model: torch.nn.Module,
    loader: PatchLoader,
    plan: PatchPlan,
    num_images: int,
    *,
    amp: str | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Per-image scores (mean over each image's patches), indexed like the loader's images."""
    pred, image_idx = predict_patches(model, loader, plan, amp=amp, channels_last=channels_last)
    return per_image_mean(pred, image_idx, num_images)
