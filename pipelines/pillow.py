"""The Pillow loader: the CPU fallback with the DALI loader's semantics.

Each image is decoded once per epoch (in a DataLoader worker), resized to the
training size, and cut into all of its planned patches at once. Only uint8
patches cross the process boundary and the host-to-device copy; the float
conversion and ImageNet normalisation happen per batch on the target device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.errors import LoaderError
from pipelines.images import ignore_interrupt, load_resized
from pipelines.loader import (
    LoaderSettings,
    PatchBatch,
    normalize_uint8,
    shuffle_into_batches,
)
from pipelines.patches import PatchPlan

CHECK_HINT = "python -m hyperiqa.check_data lists every unusable image"


def cut_patches(
    image: np.ndarray, tops: np.ndarray, lefts: np.ndarray, flips: np.ndarray, patch_size: int
) -> np.ndarray:
    """All planned crops of one resized image: uint8 [P, 3, S, S] (CHW, like the model wants)."""
    s = patch_size
    out = np.empty((len(tops), 3, s, s), dtype=np.uint8)
    for k, (top, left, flip) in enumerate(zip(tops, lefts, flips, strict=True)):
        crop = image[top : top + s, left : left + s]
        if flip:
            crop = crop[:, ::-1]
        out[k] = crop.transpose(2, 0, 1)
    return out


def _patches_or_raise(item: torch.Tensor | str) -> torch.Tensor:
    if isinstance(item, str):
        raise LoaderError(item)
    return item


class _PlannedPatches(Dataset):
    """Item i: the uint8 patches of the i-th image of a plan (in plan order)."""

    def __init__(self, paths: Sequence[Path], plan: PatchPlan, resize: tuple[int, int]) -> None:
        self.paths, self.plan, self.resize = paths, plan, resize

    def __len__(self) -> int:
        return self.plan.num_images

    def __getitem__(self, row: int) -> torch.Tensor | str:
        plan = self.plan
        path = self.paths[plan.order[row]]
        try:
            image = load_resized(path, self.resize)
        except FileNotFoundError:
            return f"image file not found: {path}; {CHECK_HINT}"
        except Exception as e:  # Pillow raises many types for bad data; all mean "unusable"
            # Returned, not raised: an exception leaves a worker as a traceback
            # dump, and a bad file (say, one checked with --skip_check) deserves one line.
            return f"cannot decode {path} ({type(e).__name__}: {e}); {CHECK_HINT}"
        patches = cut_patches(
            image, plan.tops[row], plan.lefts[row], plan.flips[row], plan.patch_size
        )
        return torch.from_numpy(patches)


class PillowLoader:
    """Decode with Pillow in worker processes; shuffle and batch on the device."""

    name = "pillow"

    def __init__(self, paths: Sequence[Path], settings: LoaderSettings) -> None:
        self.paths = list(paths)
        self.settings = settings

    def use_paths(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)  # each plan starts its own DataLoader over self.paths

    def _windows(self, plan: PatchPlan) -> Iterator[torch.Tensor]:
        settings = self.settings
        images = DataLoader(
            _PlannedPatches(self.paths, plan, settings.resize),
            batch_size=None,  # one image's patches per item; the window is assembled here
            shuffle=False,  # the plan already fixed the order
            num_workers=settings.num_workers,
            pin_memory=settings.device.type == "cuda",
            prefetch_factor=4 if settings.num_workers else None,
            worker_init_fn=ignore_interrupt,
        )
        it = iter(images)
        for rows, _ in plan.windows():
            # Copy each image's patches to the device as it arrives (pinned, async),
            # so the window is assembled on the device rather than in host memory.
            parts = [
                _patches_or_raise(next(it)).to(settings.device, non_blocking=True)
                for _ in range(rows.stop - rows.start)
            ]
            yield torch.cat(parts)

    def batches(self, plan: PatchPlan) -> Iterator[PatchBatch]:
        dtype = self.settings.dtype
        yield from shuffle_into_batches(
            plan,
            self._windows(plan),
            self.settings.batch_size,
            finish=lambda x: normalize_uint8(x, dtype),
        )

    def close(self) -> None:
        pass
