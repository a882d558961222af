"""The synthetic loader: random patches already on the device, no files read.

It follows the plan like the real loaders (the same batches, the same image
indices, so scores and metrics work), but its patches come from a small pool
made once, so what it costs is only the bookkeeping every loader shares. Fed
to the real training step it gives the model's ceiling: the benchmark divides
the real loaders' training speed by this one's (as the "synthetic" data
backend of NVIDIA's DeepLearningExamples does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from pipelines.loader import LoaderSettings, PatchBatch, plan_indices
from pipelines.patches import PatchPlan

POOL_BATCHES = 2  # distinct batches in the pool: enough that no step sees its input twice in a row
SEED = 0


class SyntheticLoader:
    """Batches of normal noise in the delivery dtype, indexed like the plan's patches."""

    name = "synthetic"

    def __init__(self, paths: Sequence[Path], settings: LoaderSettings) -> None:
        self.num_images = len(paths)
        self.settings = settings
        self._pool: list[torch.Tensor] = []

    def _images(self, patch_size: int, k: int) -> torch.Tensor:
        s = self.settings
        if not self._pool or self._pool[0].shape[-1] != patch_size:
            g = torch.Generator().manual_seed(SEED)
            shape = (s.batch_size, 3, patch_size, patch_size)
            self._pool = [
                torch.randn(shape, generator=g).to(s.device, s.dtype) for _ in range(POOL_BATCHES)
            ]
        return self._pool[k % POOL_BATCHES]

    def use_paths(self, paths: Sequence[Path]) -> None:
        self.num_images = len(paths)

    def batches(self, plan: PatchPlan) -> Iterator[PatchBatch]:
        batch_size, device = self.settings.batch_size, self.settings.device
        # The image of every patch in delivery order, as the real loaders deliver them.
        image_idx = plan_indices(plan)[1]
        all_idx = torch.from_numpy(image_idx).to(device, non_blocking=True)
        for k, start in enumerate(range(0, len(image_idx), batch_size)):
            idx = all_idx[start : start + batch_size]
            yield PatchBatch(self._images(plan.patch_size, k)[: len(idx)], idx)

    def close(self) -> None:
        self._pool = []
