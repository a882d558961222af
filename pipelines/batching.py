"""The batch type both loaders yield, and the window shuffle they share.

A loader decodes the images of one plan window at a time and hands over their
patches image-major (``[n * P, 3, S, S]`` on the target device); everything
after that -- the shuffle across images, cutting into batches, the score
lookup -- happens here, on the device, identically for every loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pipelines.patches import PatchPlan

# ImageNet statistics on the [0, 1] scale; the backbone was pretrained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PatchBatch:
    images: torch.Tensor  # [B, 3, S, S] normalised float, on the target device
    scores: torch.Tensor  # [B] float32, on the target device
    image_idx: torch.Tensor  # [B] int64 index into the loader's sample list


class PatchLoader(Protocol):
    """What the trainer and evaluate.py need of a loader, whichever it is."""

    name: str

    def batches(self, plan: PatchPlan) -> Iterator[PatchBatch]: ...

    def close(self) -> None: ...


def normalize_uint8(patches: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` (0-255) -> ImageNet-normalised float of ``dtype``."""
    mean = torch.tensor(IMAGENET_MEAN, device=patches.device, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, device=patches.device, dtype=torch.float32)
    scale = 1.0 / (255.0 * std)
    # (x / 255 - mean) / std == x * scale - mean / std: one multiply-add per element.
    out = patches.to(torch.float32) * scale.view(1, 3, 1, 1) - (mean / std).view(1, 3, 1, 1)
    return out.to(dtype)


def shuffle_into_batches(
    plan: PatchPlan,
    windows: Iterable[torch.Tensor],
    scores: torch.Tensor,
    batch_size: int,
    finish: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> Iterator[PatchBatch]:
    """Shuffle each window's patches by the plan and cut the stream into batches.

    ``windows`` yields, per plan window, its patches image-major on the device.
    Batches may straddle two windows; the last batch of the plan may be short
    (the original code kept it too). ``finish`` runs per batch, after the cut,
    so a uint8 window is converted to float one batch at a time.
    """
    device = scores.device
    p = plan.patches_per_image
    carry_x: torch.Tensor | None = None
    carry_idx: torch.Tensor | None = None
    for (rows, perm), patches in zip(plan.windows(), windows, strict=True):
        if patches.shape[0] != len(perm):
            raise RuntimeError(f"loader gave {patches.shape[0]} patches, plan wants {len(perm)}")
        image_idx = np.repeat(plan.order[rows], p)[perm]
        x = patches[torch.from_numpy(perm).to(device)]
        idx = torch.from_numpy(image_idx).to(device)
        if carry_x is not None:
            x, idx = torch.cat([carry_x, x]), torch.cat([carry_idx, idx])
        full = (x.shape[0] // batch_size) * batch_size
        for start in range(0, full, batch_size):
            sl = slice(start, start + batch_size)
            yield PatchBatch(finish(x[sl]), scores[idx[sl]], idx[sl])
        carry_x, carry_idx = (x[full:], idx[full:]) if full < x.shape[0] else (None, None)
    if carry_x is not None:
        yield PatchBatch(finish(carry_x), scores[carry_idx], carry_idx)
