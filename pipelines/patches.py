"""The patch plan: which patches an epoch cuts, computed once in Python.

Both loaders (DALI and Pillow) consume the same plan, so the same (seed, epoch)
gives the same patches whichever loader decodes them. That is what makes runs
reproducible and the loaders testable against each other.

An epoch is a list of images (``order``), each cut into ``patches_per_image``
crops at integer offsets (``tops``, ``lefts``) and optionally mirrored
(``flips``). Images are decoded in ``order``, ``window`` images at a time; the
patches of one window are shuffled together (``window_perms``) and the shuffled
stream is cut into batches. A batch therefore mixes patches of many images, as
the original code's fully shuffled patch list did, while a loader only ever
holds one window of decoded patches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Separate streams of randomness for the two kinds of plan, so that changing
# the number of epochs never changes the validation crops and vice versa.
_TRAIN_STREAM = 1
_VAL_STREAM = 2

# The training guide's crops: every image resized to 384x512 (H x W: half of
# KonIQ-10k's 768x1024, aspect kept) and cut into 25 patches.
DEFAULT_RESIZE = (384, 512)
DEFAULT_PATCHES_PER_IMAGE = 25

# Evaluation crops do not depend on the training seed: validation during
# training, evaluate.py and predict.py all cut the same crops, so runs with
# different seeds are compared on the same crops, and evaluate.py on a run's
# val images reproduces its val metrics.
EVAL_SEED = 0


@dataclass(frozen=True)
class PatchPlan:
    """Everything random about one pass over a set of images.

    Arrays are indexed by position in ``order`` (not by image index):
    ``tops[i, k]`` is the top offset of patch k of image ``order[i]``.
    """

    order: np.ndarray  # [N] int64, image indices into the sample list, decode order
    tops: np.ndarray  # [N, P] int64
    lefts: np.ndarray  # [N, P] int64
    flips: np.ndarray  # [N, P] bool, mirror horizontally
    window: int  # images whose patches are shuffled together
    window_perms: tuple[np.ndarray, ...]  # per window: permutation of its n*P patches
    patch_size: int

    @property
    def num_images(self) -> int:
        return len(self.order)

    @property
    def patches_per_image(self) -> int:
        return self.tops.shape[1]

    @property
    def num_patches(self) -> int:
        return self.tops.size

    def windows(self) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (rows of this window, permutation of its patches).

        The permutation indexes the window's patches laid out image-major:
        patch k of the window's j-th image is at ``j * P + k``.
        """
        for w, perm in enumerate(self.window_perms):
            start = w * self.window
            yield slice(start, min(start + self.window, self.num_images)), perm

    def shard(self, rank: int, world_size: int) -> PatchPlan:
        """The part of this plan that one of ``world_size`` ranks loads.

        Whole windows go round-robin to ranks, so each rank decodes only its
        own images and the ranks together cover the plan exactly once.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if world_size == 1:
            return self
        rows: list[np.ndarray] = []
        perms: list[np.ndarray] = []
        for w, (rows_slice, perm) in enumerate(self.windows()):
            if w % world_size == rank:
                rows.append(np.arange(self.num_images)[rows_slice])
                perms.append(perm)
        picked = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return PatchPlan(
            order=self.order[picked],
            tops=self.tops[picked],
            lefts=self.lefts[picked],
            flips=self.flips[picked],
            window=self.window,
            window_perms=tuple(perms),
            patch_size=self.patch_size,
        )


def _crop_offsets(
    rng: np.random.Generator, n: int, p: int, size: tuple[int, int], patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    if height < patch_size or width < patch_size:
        raise ValueError(f"resize {height}x{width} is smaller than patch_size {patch_size}")
    # Uniform integer offsets, inclusive of the last position that still fits.
    tops = rng.integers(0, height - patch_size + 1, size=(n, p), dtype=np.int64)
    lefts = rng.integers(0, width - patch_size + 1, size=(n, p), dtype=np.int64)
    return tops, lefts


def _window_perms(
    rng: np.random.Generator, n: int, p: int, window: int, shuffle: bool
) -> tuple[np.ndarray, ...]:
    perms = []
    for start in range(0, n, window):
        count = min(window, n - start) * p
        perms.append(rng.permutation(count) if shuffle else np.arange(count))
    return tuple(perms)


def train_plan(
    num_images: int,
    *,
    seed: int,
    epoch: int,
    patches_per_image: int,
    patch_size: int,
    resize: tuple[int, int],
    window: int,
) -> PatchPlan:
    """The training plan of one epoch: shuffled images, random crops, random flips."""
    if window < 1:
        raise ValueError("window must be >= 1")
    rng = np.random.default_rng([seed, _TRAIN_STREAM, epoch])
    order = rng.permutation(num_images).astype(np.int64)
    tops, lefts = _crop_offsets(rng, num_images, patches_per_image, resize, patch_size)
    flips = rng.random((num_images, patches_per_image)) < 0.5
    perms = _window_perms(rng, num_images, patches_per_image, window, shuffle=True)
    return PatchPlan(order, tops, lefts, flips, window, perms, patch_size)


def eval_plan(
    num_images: int,
    *,
    seed: int = EVAL_SEED,
    patches_per_image: int,
    patch_size: int,
    resize: tuple[int, int],
    window: int,
) -> PatchPlan:
    """The evaluation plan: images in order, no mirroring, no shuffling.

    It depends on the seed only, never on the epoch, so validation sees the
    same crops every epoch and the val curve measures the model, not the crops.
    Every image gets the same ``patches_per_image`` crop positions (all images
    have the same size after resizing), so an image's score depends on the
    image alone, not on which other images are scored with it.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    rng = np.random.default_rng([seed, _VAL_STREAM])
    order = np.arange(num_images, dtype=np.int64)
    tops, lefts = _crop_offsets(rng, 1, patches_per_image, resize, patch_size)
    tops = np.repeat(tops, num_images, axis=0)
    lefts = np.repeat(lefts, num_images, axis=0)
    flips = np.zeros((num_images, patches_per_image), dtype=bool)
    perms = _window_perms(rng, num_images, patches_per_image, window, shuffle=False)
    return PatchPlan(order, tops, lefts, flips, window, perms, patch_size)
