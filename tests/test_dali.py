"""The DALI loader against the Pillow loader, and its batching contract.

Everything except the ``gpu`` tests runs on DALI's CPU backend. Most images are
tiny and the resize/patch sizes small (96x128, 64) so the file stays fast; a few
tests run training's 384x512 / 25 x 224 and an odd 331x479, whose crop offsets
are not powers of two.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

import pipelines.dali as dali_module
import pipelines.loader as loader_module
from hyperiqa.demo_data import write_koniq_like_jpegs
from hyperiqa.run_folder import run_logger
from pipelines.dali import DaliLoader, _FileReads
from pipelines.errors import LoaderError
from pipelines.factory import make_loader
from pipelines.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoaderSettings,
    PatchBatch,
    plan_indices,
    shuffle_into_batches,
)
from pipelines.patches import PatchPlan, eval_plan, train_plan
from scripts.gpu_smoke import MAX_LIMIT as SMOKE_MAX_LIMIT
from scripts.gpu_smoke import PATCH_MEAN_LIMIT as SMOKE_PATCH_MEAN_LIMIT

RESIZE = (96, 128)  # (H, W)
PATCH = 64
P = 6
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Measured DALI-CPU vs Pillow on these images (DALI 2.4, Pillow 13), de-normalised
# patches in grey levels: mean abs diff 0.142 (train plan and eval plan), per image
# 0.11-0.19 (0 for the image already at the target size), max 2 (train) / 1 (eval).
# Decoding is bit-identical; the difference is the resampler's rounding. A crop
# one pixel off or a missing mirror gives a mean of 10+ on these textured images.
CPU_MEAN_TOL = 0.3
CPU_PER_IMAGE_MEAN_TOL = 0.4
CPU_MAX_TOL = 5.0
# nvJPEG (even with fancy upsampling) vs libjpeg-turbo: IDCT and colour-conversion rounding.
GPU_MEAN_TOL = 1.5


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour waves plus noise: crops at different offsets look clearly different."""
    y, x = np.mgrid[0:h, 0:w]
    waves = np.stack(
        [128 + 100 * np.sin(x / 13.0 + c) * np.cos(y / 19.0 - c) for c in range(3)], axis=-1
    )
    return np.clip(waves + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight images covering what a dataset may hold: modes, formats, sizes, EXIF rotation."""
    root = tmp_path_factory.mktemp("dali_images")
    rng = np.random.default_rng(1234)
    paths = []

    def save(name: str, img: Image.Image, **kw) -> None:
        path = root / name
        img.save(path, **kw)
        paths.append(path)

    save("rgb.jpg", Image.fromarray(_texture(rng, 150, 200)), quality=90)
    save("large.jpg", Image.fromarray(_texture(rng, 300, 260)), quality=90)
    save("gray.jpg", Image.fromarray(_texture(rng, 120, 160)[..., 0]), quality=90)
    save("cmyk.jpg", Image.fromarray(_texture(rng, 200, 230)).convert("CMYK"), quality=90)
    save("lossless.png", Image.fromarray(_texture(rng, 110, 170)))
    save("small.jpg", Image.fromarray(_texture(rng, 60, 70)), quality=90)  # upscaled
    rotated = Image.fromarray(_texture(rng, 140, 190))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif6.jpg", rotated, quality=90, exif=exif)
    save("exact.jpg", Image.fromarray(_texture(rng, *RESIZE)), quality=90)  # no resize needed
    return paths


def _settings(device: torch.device = CPU, **kw) -> LoaderSettings:
    base = {"resize": RESIZE, "batch_size": 7, "device": device, "dali_threads": 2}
    return LoaderSettings(**(base | kw))


def _train(n: int, window: int = 3, epoch: int = 0) -> PatchPlan:
    return train_plan(
        n, seed=5, epoch=epoch, patches_per_image=P, patch_size=PATCH, resize=RESIZE, window=window
    )


def _eval(n: int, window: int = 3) -> PatchPlan:
    return eval_plan(n, seed=5, patches_per_image=P, patch_size=PATCH, resize=RESIZE, window=window)


def _grey_levels(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: back to 0-255 (float, on the CPU)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.detach().float().cpu() * std + mean) * 255.0


def _stream(batches: list[PatchBatch]) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of an epoch joined: (grey-level patches, image_idx), on the CPU."""
    return (
        torch.cat([_grey_levels(b.images) for b in batches]),
        torch.cat([b.image_idx.cpu() for b in batches]),
    )


def _run(loader, plan: PatchPlan) -> list[PatchBatch]:
    return list(loader.batches(plan))


@pytest.fixture(scope="module")
def cpu_loader(images: list[Path]):
    loader = DaliLoader(images, _settings())
    yield loader
    loader.close()


@pytest.fixture(scope="module")
def pillow_loader(images: list[Path]):
    loader = make_loader("pillow", images, _settings())
    yield loader
    loader.close()


# -- same patches as the Pillow loader -----------------------------------------------------


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_cpu_patches_match_pillow(kind, images, cpu_loader, pillow_loader):
    n = len(images)
    plan = _train(n) if kind == "train" else _eval(n)
    if kind == "train":
        assert plan.flips.any() and not plan.flips.all()  # both mirrored and plain patches
    dali_x, dali_idx = _stream(_run(cpu_loader, plan))
    ref_x, ref_idx = _stream(_run(pillow_loader, plan))

    assert torch.equal(dali_idx, ref_idx)  # same shuffle: patch i is the same planned patch
    diff = (dali_x - ref_x).abs()
    assert diff.mean() < CPU_MEAN_TOL, f"mean abs diff {diff.mean():.3f} grey levels"
    assert diff.max() < CPU_MAX_TOL, f"max abs diff {diff.max():.3f} grey levels"
    for i, path in enumerate(images):
        per_image = diff[dali_idx == i].mean()
        assert per_image < CPU_PER_IMAGE_MEAN_TOL, f"{path.name}: {per_image:.3f}"
    # The image already at the target size goes through no resampling in either loader.
    exact = images.index(next(p for p in images if p.name == "exact.jpg"))
    assert diff[dali_idx == exact].max() < 1e-3


# -- training's geometry and an odd one ----------------------------------------------------
#
# DALI places a crop at round(pos * (size - S)) from the normalised position the
# loader feeds it (top / (size - S)); with H - S and W - S powers of two (96x128,
# 64 above) that division is exact and the rounding never matters. Training's
# 384x512 / 224 (160 and 288) and an odd 331x479 (107 and 255) exercise it.

GEOMETRIES = {"384x512": (384, 512), "331x479": (331, 479)}
BIG_PATCH = 224
BIG_P = 25
# Measured DALI-CPU vs Pillow at both geometries (DALI 2.4, Pillow 13): mean
# 0.16-0.18 grey levels, worst patch 0.20, max 1-3. A crop one pixel off moves a
# patch's mean by 3.9 or more on these images.
CPU_PATCH_MEAN_TOL = 0.6


def _geometry_settings(resize: tuple[int, int], device: torch.device = CPU, **kw) -> LoaderSettings:
    return _settings(device, resize=resize, batch_size=40, **kw)


def _geometry_plan(n: int, resize: tuple[int, int], window: int = 2) -> PatchPlan:
    return train_plan(
        n, seed=7, epoch=0, patches_per_image=BIG_P, patch_size=BIG_PATCH, resize=resize,
        window=window,
    )  # fmt: skip


@pytest.fixture(scope="module")
def big_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """KonIQ-sized and smaller photographs-like JPEGs, one grayscale, one upscaled."""
    root = tmp_path_factory.mktemp("dali_big")
    paths = write_koniq_like_jpegs(root, 2, seed=11, height=768, width=1024)
    rng = np.random.default_rng(99)
    gray, small = root / "gray.jpg", root / "small.jpg"
    Image.fromarray(_texture(rng, 500, 420)[..., 0]).save(gray, quality=90)
    Image.fromarray(_texture(rng, 250, 300)).save(small, quality=90)
    return [*paths, gray, small]


def _patch_differences(a, b, plan, first=None) -> tuple[torch.Tensor, torch.Tensor]:
    """|a - b| per pixel (grey levels) and its mean per patch, two loaders cutting
    one plan (``first``: a's batches when already taken). Closes both."""
    try:
        a_x, a_idx = _stream(first if first is not None else _run(a, plan))
        b_x, b_idx = _stream(_run(b, plan))
    finally:
        a.close()
        b.close()
    assert torch.equal(a_idx, b_idx)
    diff = (a_x - b_x).abs()
    return diff, diff.flatten(1).mean(1)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_cpu_patches_match_pillow_at_training_and_odd_geometry(geometry, big_images):
    resize = GEOMETRIES[geometry]
    plan = _geometry_plan(len(big_images), resize)
    assert plan.flips.any() and not plan.flips.all()
    dali = DaliLoader(big_images, _geometry_settings(resize))
    pillow = make_loader("pillow", big_images, _geometry_settings(resize))
    diff, per_patch = _patch_differences(dali, pillow, plan)
    assert diff.mean() < CPU_MEAN_TOL, f"mean abs diff {diff.mean():.3f} grey levels"
    assert diff.max() < CPU_MAX_TOL, f"max abs diff {diff.max():.3f} grey levels"
    assert per_patch.max() < CPU_PATCH_MEAN_TOL, f"worst patch {per_patch.max():.3f}"


def _coordinate_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A lossless picture whose every pixel spells its own (x, y): R = x % 256,
    G = y % 256, B = 100 * (x // 256) + 50 * (y // 256)."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    rgb = np.stack([x % 256, y % 256, 100 * (x // 256) + 50 * (y // 256)], axis=-1)
    rgb = rgb.astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _planned_corners(plan: PatchPlan) -> tuple[np.ndarray, np.ndarray]:
    """Per delivered patch (window shuffles applied): the planned (x, y) of its
    top-left output pixel, which is the crop's right edge when mirrored."""
    s = plan.patch_size
    xs, ys = [], []
    for rows, perm in plan.windows():
        lefts, tops, flips = (
            a[rows].reshape(-1)[perm] for a in (plan.lefts, plan.tops, plan.flips)
        )
        xs.append(np.where(flips, lefts + s - 1, lefts))
        ys.append(tops)
    return np.concatenate(xs), np.concatenate(ys)


def _check_exact_crops(loader, plan: PatchPlan, rgb: np.ndarray) -> None:
    x, idx = _stream(_run(loader, plan))
    values = x.round()
    assert (x - values).abs().max() < 0.05  # no resampling: whole grey levels
    r, g, b = (values[:, c, 0, 0].long().numpy() for c in range(3))
    want_x, want_y = _planned_corners(plan)
    np.testing.assert_array_equal(r + 256 * (b // 100), want_x)
    np.testing.assert_array_equal(g + 256 * (b % 100 // 50), want_y)
    # And every pixel of every patch is the planned crop (mirrored where planned).
    assert torch.equal(values, torch.from_numpy(_expected_crops(plan, rgb)))
    assert idx.shape[0] == plan.num_patches


def _expected_crops(plan: PatchPlan, rgb: np.ndarray) -> np.ndarray:
    """The planned patches of ``rgb`` in delivery order, as float grey levels [N, 3, S, S]."""
    s = plan.patch_size
    out = []
    for rows, perm in plan.windows():
        patches = []
        for r in range(rows.start, rows.stop):
            for top, left, flip in zip(plan.tops[r], plan.lefts[r], plan.flips[r], strict=True):
                crop = rgb[top : top + s, left : left + s]
                patches.append((crop[:, ::-1] if flip else crop).transpose(2, 0, 1))
        out.append(np.stack(patches)[perm])
    return np.concatenate(out).astype(np.float32)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("kind", ["dali", "pillow"])
def test_crop_positions_are_exact_at_non_power_of_two_sizes(kind, geometry, tmp_path):
    """Every patch starts exactly at its planned pixel: on an image already at the
    target size nothing is resampled, so any rounding of the crop position shows."""
    resize = GEOMETRIES[geometry]
    rgb = _coordinate_image(tmp_path / "coords.png", resize)
    plan = _geometry_plan(3, resize)  # the same file three times: windows of 2 and 1
    loader = make_loader(kind, [tmp_path / "coords.png"] * 3, _geometry_settings(resize))
    try:
        _check_exact_crops(loader, plan, rgb)
    finally:
        loader.close()


# -- the batching contract -----------------------------------------------------------------


def test_batches_shapes_and_coverage(images, cpu_loader):
    n = len(images)
    plan = _train(n, window=3)  # windows of 3, 3, 2 images: the last one is smaller
    assert [len(p) for p in plan.window_perms] == [3 * P, 3 * P, 2 * P]
    batches = _run(cpu_loader, plan)

    sizes = [b.images.shape[0] for b in batches]
    batch_size = cpu_loader.settings.batch_size
    # 7 does not divide a window's 18 patches: batches straddle windows.
    assert sizes == [batch_size] * (n * P // batch_size) + [n * P % batch_size]
    for b in batches:
        assert b.images.shape[1:] == (3, PATCH, PATCH)
        assert b.images.dtype == torch.float32 and b.images.device.type == "cpu"
        assert b.image_idx.dtype == torch.int64
        assert b.image_idx.shape == (b.images.shape[0],)
    counts = torch.bincount(torch.cat([b.image_idx for b in batches]), minlength=n)
    assert counts.tolist() == [P] * n  # every image's P patches, each delivered once

    # Exactly the planned patches: image-major within each window, then the window's shuffle.
    expected_idx = np.concatenate(
        [np.repeat(plan.order[rows], P)[perm] for rows, perm in plan.windows()]
    )
    assert torch.equal(torch.cat([b.image_idx for b in batches]), torch.from_numpy(expected_idx))
    # No patch is delivered twice: all patches differ from each other.
    flat = torch.cat([b.images for b in batches]).flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == n * P


def test_window_larger_than_dataset_and_single_image_windows(images):
    n = len(images)
    loader = DaliLoader(images, _settings(batch_size=5))
    try:
        for window in (16, 1):  # one short window; then n one-image windows
            batches = _run(loader, _eval(n, window=window))
            idx = torch.cat([b.image_idx for b in batches])
            assert torch.equal(idx, torch.arange(n).repeat_interleave(P))
        assert len(loader._pipelines) == 2  # one pipeline per window size
    finally:
        loader.close()


def test_float16_output(images, cpu_loader):
    n = len(images)
    loader = DaliLoader(images, _settings(dtype=torch.float16))
    try:
        plan = _eval(n)
        half = _run(loader, plan)
        assert all(b.images.dtype == torch.float16 for b in half)
        full = torch.cat([b.images for b in _run(cpu_loader, plan)])
        # float16 keeps ~3 significant digits of values within about +-2.7.
        assert (torch.cat([b.images for b in half]).float() - full).abs().max() < 5e-3
    finally:
        loader.close()


def test_bfloat16_is_cast_on_the_torch_side(images):
    loader = DaliLoader(images[:3], _settings(dtype=torch.bfloat16))
    try:
        batches = _run(loader, _eval(3))
        assert all(b.images.dtype == torch.bfloat16 for b in batches)
    finally:
        loader.close()


# -- determinism and reuse -----------------------------------------------------------------


def test_two_epochs_same_plan_identical_and_pipeline_reused(images):
    n = len(images)
    loader = DaliLoader(images, _settings())
    try:
        plan = _train(n)
        first = _run(loader, plan)
        (pipe,) = loader._pipelines.values()
        second = _run(loader, plan)
        assert len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a.images, b.images)
            assert torch.equal(a.image_idx, b.image_idx)
        # A new epoch's plan (new order, crops, flips) runs on the same built pipeline.
        other = _run(loader, _train(n, epoch=1))
        assert sum(b.images.shape[0] for b in other) == n * P
        assert list(loader._pipelines.values()) == [pipe]
    finally:
        loader.close()


def test_abandoned_epoch_leaves_no_stale_windows(images, cpu_loader):
    n = len(images)
    plan = _train(n, window=2)  # 4 windows: several are decoded ahead when we stop
    reference = _stream(_run(cpu_loader, plan))
    for stop_after in (1, 4):
        it = cpu_loader.batches(plan)
        for _ in range(stop_after):
            next(it)
        it.close()  # what a `break` out of the training loop does
        again = _stream(_run(cpu_loader, plan))
        assert torch.equal(again[0], reference[0]) and torch.equal(again[1], reference[1])


def test_close_in_the_middle_of_an_epoch(images):
    loader = DaliLoader(images, _settings())
    it = loader.batches(_train(len(images), window=2))
    next(it)
    loader.close()
    it.close()  # the suspended epoch finds its pipeline gone and ends quietly
    assert loader._pipelines == {}


def test_factory_builds_dali_loader(images):
    loader = make_loader("dali", images[:2], _settings())
    try:
        assert isinstance(loader, DaliLoader) and loader.name == "dali"
    finally:
        loader.close()


# -- no stalls: file reads ahead, one upload per plan ----------------------------------------


def _per_image_reference(loader: DaliLoader, plan: PatchPlan) -> torch.Tensor:
    """The stream ``plan`` must deliver, rebuilt from each image decoded alone.

    The same crops, one image per window and no shuffle (another pipeline, another
    windowing, other read-ahead), then the plan's window shuffles applied here.
    """
    single = PatchPlan(
        plan.order,
        plan.tops,
        plan.lefts,
        plan.flips,
        window=1,
        window_perms=tuple(np.arange(P) for _ in range(plan.num_images)),
        patch_size=plan.patch_size,
    )
    per_image = torch.cat([b.images for b in _run(loader, single)])  # image-major, plan order
    return torch.cat(
        [
            per_image[rows.start * P : rows.stop * P][torch.from_numpy(perm)]
            for rows, perm in plan.windows()
        ]
    )


@pytest.mark.parametrize("prefetch", [1, 3])
def test_windows_are_bit_identical_to_images_decoded_alone(images, prefetch):
    """Reads ahead, prefetch depth and the one-upload shuffle change nothing delivered."""
    n = len(images)
    loader = DaliLoader(images, _settings(dali_prefetch=prefetch))
    try:
        for plan in (_train(n, window=3), _train(n, window=2, epoch=1), _eval(n, window=5)):
            got = torch.cat([b.images for b in _run(loader, plan)])
            assert torch.equal(got, _per_image_reference(loader, plan))
    finally:
        loader.close()


def test_the_training_thread_never_reads_a_file(images, monkeypatch):
    readers: list[str] = []
    real_read = dali_module._read_bytes

    def spy(path: Path) -> np.ndarray:
        readers.append(threading.current_thread().name)
        return real_read(path)

    monkeypatch.setattr(dali_module, "_read_bytes", spy)
    loader = DaliLoader(images, _settings())
    try:
        plan = _train(len(images), window=2)
        assert sum(b.images.shape[0] for b in _run(loader, plan)) == len(images) * P
    finally:
        loader.close()
    assert len(readers) == len(images)  # every file once, none twice
    assert threading.main_thread().name not in readers


def test_file_reads_are_submitted_ahead_in_plan_order(images):
    plan = _train(len(images), window=2)  # 4 windows
    with dali_module.ThreadPoolExecutor(max_workers=2) as reader:
        reads = _FileReads(plan, images, reader)
        reads.submit(range(1))
        assert sorted(reads._pending) == [0]
        data = reads.take(0)
        # Taking window 0 queued the next READ_AHEAD windows, not more.
        assert sorted(reads._pending) == list(range(1, 1 + dali_module.READ_AHEAD))
        want = [np.fromfile(images[i], dtype=np.uint8) for i in plan.order[0:2]]
        assert all(np.array_equal(a, b) for a, b in zip(data, want, strict=True))
        reads.take(3)  # any window can be taken, read ahead or not
        reads.cancel()
        assert reads._pending == {}


def test_the_plan_reaches_the_device_in_one_upload(images, monkeypatch):
    uploads: list[tuple[int, ...]] = []
    real_upload = loader_module.upload

    def spy(array: np.ndarray, device: torch.device) -> torch.Tensor:
        uploads.append(array.shape)
        return real_upload(array, device)

    monkeypatch.setattr(loader_module, "upload", spy)
    n = len(images)
    loader = DaliLoader(images, _settings())
    try:
        plan = _train(n, window=2)  # 4 windows, one upload
        _run(loader, plan)
        assert uploads == [(2, n * P)]
        _run(loader, _train(n, window=3, epoch=1))  # the next plan: one more
        assert uploads == [(2, n * P), (2, n * P)]
    finally:
        loader.close()


def test_plan_indices_are_the_window_perms_and_their_images():
    plan = _train(8, window=3)
    perms, image_idx = plan_indices(plan)
    assert np.array_equal(perms, np.concatenate(plan.window_perms))
    expected = [np.repeat(plan.order[rows], P)[perm] for rows, perm in plan.windows()]
    assert np.array_equal(image_idx, np.concatenate(expected))
    empty = _train(0, window=3)
    assert plan_indices(empty).shape == (2, 0)
    assert list(shuffle_into_batches(empty, [], 4)) == []


# -- bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_corrupt_file_raises_user_error_naming_it(damage, images, tmp_path):
    good = images[0].read_bytes()
    bad = tmp_path / f"{damage}.jpg"
    bad.write_bytes(good[:1500] if damage == "truncated" else b"definitely not a JPEG " * 20)
    paths = [*images[:4], bad, *images[4:6]]
    loader = DaliLoader(paths, _settings())
    try:
        with pytest.raises(LoaderError, match=re.escape(bad.name)):
            _run(loader, _eval(len(paths), window=2))
        # The dead pipeline is replaced: a plan without the bad image works again.
        fine = _run(loader, _eval(4, window=2))
        assert sum(b.images.shape[0] for b in fine) == 4 * P
    finally:
        loader.close()


def _abandon_before_a_bad_window(images: list[Path], tmp_path: Path) -> DaliLoader:
    """Take one window, then stop while a corrupt window is already decoding ahead."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(images[0].read_bytes()[:1500])
    paths = [*images[:2], bad, *images[2:4]]
    loader = DaliLoader(paths, _settings(batch_size=P))  # one batch per one-image window
    it = loader.batches(_eval(len(paths), window=1))
    next(it)  # window 0; windows 1 and 2 (the bad one) are queued
    it.close()  # the drain meets the bad window: swallowed, the pipeline marked broken
    return loader


def test_a_failure_while_ending_an_epoch_is_logged_in_one_line(images, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.dali"):
        loader = _abandon_before_a_bad_window(images, tmp_path)
    try:
        (record,) = [r for r in caplog.records if r.name == "pipelines.dali"]
        message = record.getMessage()
        assert message.startswith("DALI loader: ending an epoch early failed (RuntimeError: ")
        assert "decoders.image" in message  # what failed, not DALI's boilerplate
        assert "Critical error" not in message and "File " not in message
        assert "\n" not in message and record.exc_info is None  # one line, no traceback
        (pipe,) = loader._pipelines.values()
        assert pipe.broken
        # The next epoch gets a fresh pipeline and works (the bad file is not in its plan).
        assert sum(b.images.shape[0] for b in _run(loader, _eval(2))) == 2 * P
    finally:
        loader.close()


def test_the_swallowed_failure_reaches_the_run_log(images, tmp_path):
    log_path = tmp_path / "train.log"
    shown: list[str] = []
    with run_logger(log_path, echo=shown.append):
        _abandon_before_a_bad_window(images, tmp_path).close()
    (line,) = [x for x in log_path.read_text().splitlines() if "DALI loader" in x]
    assert "ending an epoch early failed" in line
    assert any("ending an epoch early failed" in x for x in shown)  # and on the console
    # Outside a run the loader's logger has no handlers of ours left.
    assert logging.getLogger("pipelines").handlers == []


def test_missing_file_raises_user_error(images, tmp_path):
    paths = [*images[:2], tmp_path / "gone.jpg"]
    loader = DaliLoader(paths, _settings())
    try:
        with pytest.raises(LoaderError, match=re.escape("gone.jpg")):
            _run(loader, _eval(3))
    finally:
        loader.close()


def test_plan_for_another_resize_is_rejected(images, cpu_loader):
    plan = train_plan(
        2, seed=0, epoch=0, patches_per_image=P, patch_size=PATCH, resize=(200, 200), window=2
    )
    plan = PatchPlan(
        plan.order,
        plan.tops + 100,  # certainly outside a 96-high image
        plan.lefts,
        plan.flips,
        plan.window,
        plan.window_perms,
        PATCH,
    )
    with pytest.raises(ValueError, match="outside"):
        _run(cpu_loader, plan)


# -- GPU (mixed decoder) -------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_gpu_batches_on_cuda(images):
    n = len(images)
    cuda = torch.device("cuda")
    loader = DaliLoader(images, _settings(cuda, dtype=torch.float16))
    try:
        batches = _run(loader, _train(n))
        for b in batches:
            assert b.images.device.type == b.image_idx.device.type == "cuda"
            assert b.images.dtype == torch.float16
        assert sum(b.images.shape[0] for b in batches) == n * P
    finally:
        loader.close()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["train", "eval"])
def test_gpu_patches_match_cpu(kind, images, cpu_loader):
    n = len(images)
    plan = _train(n) if kind == "train" else _eval(n)
    loader = DaliLoader(images, _settings(torch.device("cuda")))
    try:
        gpu_x, gpu_idx = _stream(_run(loader, plan))
        # Twice, to check determinism and pipeline reuse on the GPU too.
        again_x, _ = _stream(_run(loader, plan))
    finally:
        loader.close()
    cpu_x, cpu_idx = _stream(_run(cpu_loader, plan))
    assert torch.equal(gpu_idx, cpu_idx)
    diff = (gpu_x - cpu_x).abs()
    assert diff.mean() < GPU_MEAN_TOL, f"mean abs diff {diff.mean():.3f} grey levels"
    for i, path in enumerate(images):
        assert diff[gpu_idx == i].mean() < 2 * GPU_MEAN_TOL, path.name
    assert torch.equal(gpu_x, again_x)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_low_precision_patches_match_cpu_at_training_geometry(dtype, big_images):
    """What training receives under autocast (fp16; bf16 cast on the torch side) at
    384x512 / 25 x 224, patch by patch against the CPU backend in fp32, within the
    smoke step's limits (scripts/gpu_smoke.py)."""
    resize = GEOMETRIES["384x512"]
    plan = _geometry_plan(len(big_images), resize)
    gpu = DaliLoader(big_images, _geometry_settings(resize, torch.device("cuda"), dtype=dtype))
    cpu = DaliLoader(big_images, _geometry_settings(resize))
    delivered = _run(gpu, plan)
    assert all(b.images.dtype == dtype and b.images.is_cuda for b in delivered)
    diff, per_patch = _patch_differences(gpu, cpu, plan, first=delivered)
    assert per_patch.max() < SMOKE_PATCH_MEAN_LIMIT, f"worst patch {per_patch.max():.3f}"
    assert diff.max() < SMOKE_MAX_LIMIT, f"max {diff.max():.2f} grey levels"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_gpu_crop_positions_are_exact_at_non_power_of_two_sizes(geometry, tmp_path):
    resize = GEOMETRIES[geometry]
    rgb = _coordinate_image(tmp_path / "coords.png", resize)
    plan = _geometry_plan(3, resize)
    settings = _geometry_settings(resize, torch.device("cuda"))
    loader = DaliLoader([tmp_path / "coords.png"] * 3, settings)
    try:
        _check_exact_crops(loader, plan, rgb)
    finally:
        loader.close()


# -- GPU: the handover waits on streams, never on the host ---------------------------------


@functools.cache
def _gpu_cycles_per_ms() -> float:
    """Clock cycles of ``torch.cuda._sleep`` per millisecond, measured once."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    return 1_000_000 / max(start.elapsed_time(end), 1e-3)


def _queue_gpu_work(seconds: float) -> None:
    """Queue about ``seconds`` of GPU time on the current stream (a one-thread spin)."""
    torch.cuda._sleep(int(seconds * 1000 * _gpu_cycles_per_ms()))


@pytest.mark.gpu
@needs_cuda
def test_gpu_window_handover_does_not_wait_for_queued_training_work(images):
    """A window reaches the consumer while the consumer's stream is still busy.

    The old loader uploaded each window's permutation with a pageable ``.to(device)``,
    which waits for the stream to drain: here that would take the 2 s queued below.
    """
    n, window = len(images), 2
    loader = DaliLoader(images, _settings(torch.device("cuda"), batch_size=window * P))
    try:
        it = loader.batches(_train(n, window=window))  # one batch per window
        first = next(it)
        _gpu_cycles_per_ms()
        time.sleep(0.5)  # let DALI finish the windows it decodes ahead
        torch.cuda.synchronize()
        _queue_gpu_work(2.0)
        t0 = time.perf_counter()
        second = next(it)  # window 1, while the stream still has ~2 s of work queued
        took = time.perf_counter() - t0
        rest = list(it)
        torch.cuda.synchronize()
    finally:
        loader.close()
    assert took < 1.0, f"the window handover waited {took:.2f} s for the GPU"
    assert sum(b.images.shape[0] for b in [first, second, *rest]) == n * P


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("side_stream", [False, True], ids=["current-stream", "side-stream"])
def test_gpu_windows_survive_a_lagging_consumer(images, side_stream):
    """The consumer's stream lags behind DALI, which decodes, frees and reuses buffers
    ahead: each window's copy is queued behind busy work. A copy that DALI's buffer did
    not wait for, or a tensor used on a stream it was not made for, reads garbage."""
    n = len(images)
    plan = _train(n, window=1, epoch=2)  # 8 windows of one image: 8 handovers
    loader = DaliLoader(images, _settings(torch.device("cuda"), batch_size=P))
    try:
        reference = _stream(_run(loader, plan))
        _gpu_cycles_per_ms()
        stream = torch.cuda.Stream() if side_stream else torch.cuda.current_stream()
        kept = []
        with torch.cuda.stream(stream):
            for batch in loader.batches(plan):
                kept.append(batch)
                _queue_gpu_work(0.05)
        stream.synchronize()
        got = _stream(kept)
    finally:
        loader.close()
    assert torch.equal(got[1], reference[1])
    assert torch.equal(got[0], reference[0])


@pytest.mark.gpu
@needs_cuda
def test_gpu_shuffle_never_synchronises():
    """PyTorch's sync debug mode turns any synchronising call in the shuffle into an error."""
    plan = _train(8, window=3)
    windows = [torch.randn(len(perm), 3, 4, 4, device="cuda") for _, perm in plan.windows()]
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(shuffle_into_batches(plan, windows, 5))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert sum(b.images.shape[0] for b in batches) == 8 * P
    assert all(b.image_idx.device.type == "cuda" for b in batches)
