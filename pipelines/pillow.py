"""The Pillow loader: the CPU fallback with the DALI loader's semantics.

Each image is decoded once per epoch (in a DataLoader worker), resized to the
training size, and cut into all of its planned patches at once. Only uint8
patches cross the process boundary and the host-to-device copy; the float
conversion and ImageNet normalisation happen per batch on the target device.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from hyperiqa.errors import UserError
from pipelines.batching import PatchBatch, normalize_uint8, shuffle_into_batches
from pipelines.patches import PatchPlan

_EXIF_ORIENTATION = 0x0112


def load_rgb(path: str | Path) -> Image.Image:
    """Decode any image Pillow reads to RGB, honouring its EXIF orientation.

    DALI's decoder also applies the EXIF orientation, so both loaders see the
    same upright picture.
    """
    with Image.open(path) as img:
        # exif_transpose and convert each copy the whole image even when there
        # is nothing to do; skipping them then gives the same pixels, faster.
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            return img.convert("RGB")
        img.load()  # the pixels must outlive the file, which closes here
        return img


def load_resized(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Decode, convert to RGB and resize the whole image to ``size`` = (H, W): uint8 [H, W, 3]."""
    height, width = size
    img = load_rgb(path)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img)


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


CHECK_HINT = "python -m hyperiqa.check_data lists every unusable image"


def _patches_or_raise(item: torch.Tensor | str) -> torch.Tensor:
    if isinstance(item, str):
        raise UserError(item)
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


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Decode workers leave Ctrl-C to the main process.

    A terminal's Ctrl-C reaches the whole process group. A worker that died of
    it would make the main process fail with "worker exited unexpectedly"
    instead of stopping at its next safe point; the main process shuts its
    workers down itself. SIGTERM keeps its default: Python's exit handler
    stops leftover workers with it (ignoring it hangs the exit), and a
    group-wide SIGTERM that kills a worker is still reported as the stop
    (``Trainer._run_epoch``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class PillowLoader:
    """Decode with Pillow in worker processes; shuffle and batch on the device."""

    name = "pillow"

    def __init__(
        self,
        paths: Sequence[Path],
        scores: Sequence[float],
        *,
        resize: tuple[int, int],
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.paths = list(paths)
        self.scores = torch.tensor(list(scores), dtype=torch.float32, device=device)
        self.resize, self.batch_size, self.device = resize, batch_size, device
        self.num_workers, self.dtype = num_workers, dtype

    def _windows(self, plan: PatchPlan) -> Iterator[torch.Tensor]:
        images = DataLoader(
            _PlannedPatches(self.paths, plan, self.resize),
            batch_size=None,  # one image's patches per item; the window is assembled here
            shuffle=False,  # the plan already fixed the order
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.num_workers else None,
            worker_init_fn=ignore_stop_signals,
        )
        it = iter(images)
        for rows, _ in plan.windows():
            # Copy each image's patches to the device as it arrives (pinned, async),
            # so the window is assembled on the device rather than in host memory.
            parts = [
                _patches_or_raise(next(it)).to(self.device, non_blocking=True)
                for _ in range(rows.stop - rows.start)
            ]
            yield torch.cat(parts)

    def batches(self, plan: PatchPlan) -> Iterator[PatchBatch]:
        yield from shuffle_into_batches(
            plan,
            self._windows(plan),
            self.scores,
            self.batch_size,
            finish=lambda x: normalize_uint8(x, self.dtype),
        )

    def close(self) -> None:
        pass
