"""The original HyperIQA release's data scheme, as a loader of our interface.

The original code trains on a dataset whose items are (image, patch) pairs: a
KonIQ image appears ``patch_num`` times in the item list, and every item opens
and decodes its JPEG again, resizes the whole picture, cuts one crop, maybe
mirrors it and normalises it, all in DataLoader workers. So each image is
decoded ``patch_num`` (25) times per epoch. This loader reproduces that scheme
(not its code) behind the same ``batches(plan)`` interface as ours, cutting the
plan's crops, so the benchmark compares the two schemes on identical patches
and shows what decoding once per image buys.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.images import ignore_interrupt, load_resized
from pipelines.loader import LoaderSettings, PatchBatch, normalize_uint8
from pipelines.patches import PatchPlan


class PerPatchDataset(Dataset):
    """Item ``i`` is the i-th patch the plan delivers: one full decode per item."""

    def __init__(self, paths: Sequence[Path], plan: PatchPlan, resize: tuple[int, int]) -> None:
        self.paths, self.plan, self.resize = list(paths), plan, resize
        p = plan.patches_per_image
        # (row in the plan, patch slot) of every patch, in delivery order.
        order = [np.arange(rows.start, rows.stop).repeat(p)[perm] for rows, perm in plan.windows()]
        slots = [
            np.tile(np.arange(p), rows.stop - rows.start)[perm] for rows, perm in plan.windows()
        ]
        self.rows = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
        self.slots = np.concatenate(slots) if slots else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        plan, row, k = self.plan, self.rows[i], self.slots[i]
        image = load_resized(self.paths[plan.order[row]], self.resize)  # decoded again, every item
        s = plan.patch_size
        top, left = plan.tops[row, k], plan.lefts[row, k]
        crop = image[top : top + s, left : left + s]
        if plan.flips[row, k]:
            crop = crop[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))), int(plan.order[row])


class OriginalSchemeLoader:
    """One decode per patch in DataLoader workers; batches as our loaders deliver them."""

    name = "original"

    def __init__(self, paths: Sequence[Path], settings: LoaderSettings) -> None:
        self.paths, self.settings = list(paths), settings

    def use_paths(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def batches(self, plan: PatchPlan) -> Iterator[PatchBatch]:
        s = self.settings
        items = DataLoader(
            PerPatchDataset(self.paths, plan, s.resize),
            batch_size=s.batch_size,
            shuffle=False,  # the plan's delivery order is already shuffled
            num_workers=s.num_workers,
            pin_memory=s.device.type == "cuda",
            worker_init_fn=ignore_interrupt,
        )
        for images, image_idx in items:
            yield PatchBatch(
                normalize_uint8(images.to(s.device, non_blocking=True), s.dtype),
                image_idx.to(s.device, non_blocking=True),
            )

    def close(self) -> None:
        pass
