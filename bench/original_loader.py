"""The original HyperIQA release's data scheme, rewritten for comparison.

The original code trains on a dataset whose items are (image, patch) pairs: a
KonIQ image appears ``patch_num`` times in the item list, and every item opens
and decodes its JPEG again, resizes the whole picture, cuts one random crop,
maybe mirrors it and normalises it, all in DataLoader workers; the loader
shuffles the whole item list. So each image is decoded ``patch_num`` (25) times
per epoch. This module reproduces that scheme (not its code) so the benchmark
can show what decoding once per image buys.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from pipelines.batching import IMAGENET_MEAN, IMAGENET_STD


def _open_rgb(path: Path) -> Image.Image:
    # Decode in full, as the original did (no reduced-size JPEG decode).
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


class PerPatchDataset(Dataset):
    """Item ``i`` is patch ``i % patch_num`` of image ``i // patch_num``: one decode per item."""

    def __init__(
        self,
        paths: Sequence[Path],
        scores: Sequence[float],
        *,
        patch_num: int,
        resize: tuple[int, int],
        patch_size: int,
    ) -> None:
        self.paths = list(paths)
        self.scores = [float(s) for s in scores]
        self.patch_num = patch_num
        # (H, W): the training size. BILINEAR on a PIL image is Pillow's
        # antialiased bilinear resize, the filter our loaders use too.
        self.transform = transforms.Compose(
            [
                transforms.Resize(resize, interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.RandomCrop(patch_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths) * self.patch_num

    def __getitem__(self, item: int) -> tuple[torch.Tensor, float]:
        image = item // self.patch_num
        return self.transform(_open_rgb(self.paths[image])), self.scores[image]


def make_original_loader(
    paths: Sequence[Path],
    scores: Sequence[float],
    *,
    patch_num: int,
    resize: tuple[int, int],
    patch_size: int,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A shuffled DataLoader over every (image, patch) pair, yielding (images, scores) batches."""
    dataset = PerPatchDataset(
        paths, scores, patch_num=patch_num, resize=resize, patch_size=patch_size
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
