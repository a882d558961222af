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

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
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

    def use_paths(self, paths: Sequence[Path]) -> None:
        """Read another list of images from the next plan on, keeping what the loader
        built (DALI's pipelines): a collection is scored a chunk of paths at a time.
        Only between plans, never while a plan's batches are being consumed."""
        ...

    def close(self) -> None: ...


@functools.cache
def _normalize_affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of the ImageNet normalisation as ``[1, 3, 1, 1]`` float32 on
    ``device``, made once per device: built per batch from Python lists they would
    cost a pageable, blocking host-to-device copy every batch on CUDA."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
    scale, shift = 1.0 / (255.0 * std), mean / std
    return scale.view(1, 3, 1, 1).to(device), shift.view(1, 3, 1, 1).to(device)


def normalize_uint8(patches: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` (0-255) -> ImageNet-normalised float of ``dtype``."""
    scale, shift = _normalize_affine(patches.device)
    # (x / 255 - mean) / std == x * scale - mean / std: one multiply-add per element.
    return (patches.to(torch.float32) * scale - shift).to(dtype)


def plan_indices(plan: PatchPlan) -> np.ndarray:
    """Everything the shuffle needs to know of a plan, as one ``[2, num_patches]`` int64 array.

    Row 0: every window's permutation, concatenated (each indexes its own window's
    patches, laid out image-major). Row 1: the image index of each patch in delivery
    order. Window ``w`` owns the columns ``[offset_w, offset_w + len(perm_w))``.
    """
    windows = list(plan.windows())
    if not windows:
        return np.zeros((2, 0), dtype=np.int64)
    p = plan.patches_per_image
    perms = np.concatenate([perm for _, perm in windows]).astype(np.int64, copy=False)
    image_idx = np.concatenate([np.repeat(plan.order[rows], p)[perm] for rows, perm in windows])
    return np.stack([perms, image_idx.astype(np.int64, copy=False)])


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy a host array to ``device`` without making the host wait for the device.

    On CUDA the array goes through pinned (page-locked) memory with ``non_blocking``:
    the copy is queued on the current stream behind the work already there, and the
    host returns at once. A pageable ``.to(device)`` would instead wait until that
    stream has drained (a blocking copy synchronises the stream), emptying the
    GPU's queue of training kernels. Dropping the pinned tensor right away is safe:
    PyTorch allocates it from its caching host allocator, which records an event
    for the pending copy and reuses the block only once the copy has finished.
    The result belongs to the current stream, where the shuffle uses it.
    """
    host = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return host.to(device)  # the CPU: no copy at all
    return host.pin_memory().to(device, non_blocking=True)


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

    The plan's permutations and image indices reach the device in one upload,
    made when the first window arrives (its device is where batches go); each
    window then slices its part on the device. A plan's batches are consumed on
    one stream (the stream current at the first window), as the trainer does.
    """
    indices = plan_indices(plan)
    on_device: torch.Tensor | None = None
    offset = 0
    carry_x: torch.Tensor | None = None
    carry_idx: torch.Tensor | None = None
    for (_, perm), patches in zip(plan.windows(), windows, strict=True):
        n = len(perm)
        if patches.shape[0] != n:
            raise RuntimeError(f"loader gave {patches.shape[0]} patches, plan wants {n}")
        if on_device is None:
            on_device = upload(indices, patches.device)  # once per plan
        window = on_device[:, offset : offset + n]
        offset += n
        x, idx = patches[window[0]], window[1]
        if carry_x is not None:
            x, idx = torch.cat([carry_x, x]), torch.cat([carry_idx, idx])
        full = (x.shape[0] // batch_size) * batch_size
        for start in range(0, full, batch_size):
            sl = slice(start, start + batch_size)
            yield PatchBatch(finish(x[sl]), idx[sl])
        carry_x, carry_idx = (x[full:], idx[full:]) if full < x.shape[0] else (None, None)
    if carry_x is not None:
        yield PatchBatch(finish(carry_x), carry_idx)
