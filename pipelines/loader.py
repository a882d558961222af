"""What every loader shares: its settings, the batch it yields, and
the window shuffle that turns decoded patches into batches.

A loader is built as ``Loader(paths, settings)`` and asked for
``loader.batches(plan)``. It decodes the images of one plan window at a time
and hands over their patches image-major (``[n * P, 3, S, S]`` on the target
device); everything after that -- the shuffle across images, cutting into
batches -- happens here, on the device, identically for every loader.

Loaders know images, not scores: a batch carries the index of each patch's
image, and whoever holds the scores (the trainer, the metrics) looks them up.
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


@dataclass(frozen=True)
class LoaderSettings:
    """How a loader delivers, the same type for every kind of loader."""

    resize: tuple[int, int]  # (H, W) every image is resized to before cropping
    batch_size: int  # patches per batch (per process)
    device: torch.device  # where batches are delivered
    dtype: torch.dtype = torch.float32  # dtype of the delivered images
    num_workers: int = 0  # Pillow decode processes
    dali_threads: int = 4  # DALI CPU threads (file reading; decoding too on the CPU backend)
    dali_hw_decoder_load: float = 0.65  # share of JPEGs for the hardware decoder (A100/H100)
    dali_prefetch: int = 2  # DALI pipeline depth: windows decoded ahead of training


@dataclass
class PatchBatch:
    images: torch.Tensor  # [B, 3, S, S] normalised float, on the target device
    image_idx: torch.Tensor  # [B] int64 index into the loader's image list, on the device


class PatchLoader(Protocol):
    """What the trainer, evaluation and the bench need of a loader, whichever it is."""

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
    batch_size: int,
    finish: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> Iterator[PatchBatch]:
    """Shuffle each window's patches by the plan and cut the stream into batches.

    ``windows`` yields, per plan window, its patches image-major on the device.
    Batches may straddle two windows; the last batch of the plan may be short
    (the original code kept it too). ``finish`` runs per batch, after the cut,
    so a uint8 window is converted to float one batch at a time.
    """
    p = plan.patches_per_image
    carry_x: torch.Tensor | None = None
    carry_idx: torch.Tensor | None = None
    for (rows, perm), patches in zip(plan.windows(), windows, strict=True):
        if patches.shape[0] != len(perm):
            raise RuntimeError(f"loader gave {patches.shape[0]} patches, plan wants {len(perm)}")
        device = patches.device
        image_idx = np.repeat(plan.order[rows], p)[perm]
        x = patches[torch.from_numpy(perm).to(device)]
        idx = torch.from_numpy(image_idx).to(device)
        if carry_x is not None:
            x, idx = torch.cat([carry_x, x]), torch.cat([carry_idx, idx])
        full = (x.shape[0] // batch_size) * batch_size
        for start in range(0, full, batch_size):
            sl = slice(start, start + batch_size)
            yield PatchBatch(finish(x[sl]), idx[sl])
        carry_x, carry_idx = (x[full:], idx[full:]) if full < x.shape[0] else (None, None)
    if carry_x is not None:
        yield PatchBatch(finish(carry_x), carry_idx)
