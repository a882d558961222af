"""Tests for pipelines.loader and pipelines.pillow (no model): the Pillow loader
delivers exactly the planned patches, deterministically, whatever the inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.loader as loader_module
from pipelines.errors import LoaderError
from pipelines.images import load_resized, load_rgb
from pipelines.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoaderSettings,
    PatchBatch,
    normalize_uint8,
    shuffle_into_batches,
)
from pipelines.patches import PatchPlan, eval_plan, train_plan
from pipelines.pillow import PillowLoader, cut_patches

RESIZE = (64, 80)
S = 32
P = 3
WINDOW = 3
BATCH = 4
CPU = torch.device("cpu")


def _gradient(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth, asymmetric RGB picture (so that flips and crops are visible)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    a, b, c = rng.uniform(0.5, 3.0, size=3)
    img = np.stack(
        [
            255 * x / max(width - 1, 1),
            255 * y / max(height - 1, 1),
            127 + 120 * np.sin(a * x / width * 6 + b * y / height * 4 + c),
        ],
        axis=-1,
    )
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imgs")
    paths: dict[str, Path] = {}

    def rgb(name: str, w: int, h: int, seed: int) -> Image.Image:
        paths[name] = root / name
        return Image.fromarray(_gradient(w, h, seed), "RGB")

    rgb("small.jpg", 40, 50, 0).save(paths["small.jpg"], quality=95)
    rgb("large.jpg", 120, 90, 1).save(paths["large.jpg"], quality=95)
    rgb("exact.jpg", 80, 64, 2).save(paths["exact.jpg"], quality=95)  # already (64, 80)
    rgb("gray.jpg", 70, 60, 3).convert("L").save(paths["gray.jpg"], quality=95)
    rgb("cmyk.jpg", 64, 50, 4).convert("CMYK").save(paths["cmyk.jpg"], quality=95)
    rgb("alpha.png", 90, 70, 5).convert("RGBA").save(paths["alpha.png"])
    # Stored 100 wide x 60 high, with a red block in the stored top-left corner;
    # orientation 6 says "rotate 90 degrees clockwise to display".
    img = Image.new("RGB", (100, 60), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 25, 25))
    exif = Image.Exif()
    exif[0x0112] = 6
    paths["exif6.jpg"] = root / "exif6.jpg"
    img.save(paths["exif6.jpg"], exif=exif, quality=95)
    return paths


@pytest.fixture(scope="module")
def dataset(images: dict[str, Path]) -> tuple[list[Path]]:
    return (list(images.values()),)


def _settings(batch_size: int = BATCH, num_workers: int = 0) -> LoaderSettings:
    return LoaderSettings(resize=RESIZE, batch_size=batch_size, device=CPU, num_workers=num_workers)


def _loader(dataset, num_workers: int = 0, batch_size: int = BATCH) -> PillowLoader:
    return PillowLoader(dataset[0], _settings(batch_size, num_workers))


def _train_plan(n: int, epoch: int = 1, seed: int = 0) -> PatchPlan:
    return train_plan(
        n,
        seed=seed,
        epoch=epoch,
        patches_per_image=P,
        patch_size=S,
        resize=RESIZE,
        window=WINDOW,
    )


def _eval_plan(n: int, seed: int = 0) -> PatchPlan:
    return eval_plan(n, seed=seed, patches_per_image=P, patch_size=S, resize=RESIZE, window=WINDOW)


def _collect(batches) -> tuple[torch.Tensor, torch.Tensor, list[PatchBatch]]:
    got = list(batches)
    return torch.cat([b.images for b in got]), torch.cat([b.image_idx for b in got]), got


def _expected_stream(plan: PatchPlan, paths: list[Path]) -> tuple[torch.Tensor, np.ndarray]:
    """The patches of a plan rebuilt from its arrays: window by window, shuffled by its perm."""
    xs, idxs = [], []
    for rows, perm in plan.windows():
        window = []
        for row in range(rows.start, rows.stop):
            image = load_resized(paths[plan.order[row]], RESIZE)
            window.append(cut_patches(image, plan.tops[row], plan.lefts[row], plan.flips[row], S))
        x = normalize_uint8(torch.from_numpy(np.concatenate(window)))
        xs.append(x[torch.from_numpy(perm)])
        idxs.append(np.repeat(plan.order[rows], plan.patches_per_image)[perm])
    return torch.cat(xs), np.concatenate(idxs)


# -- decoding -----------------------------------------------------------------------------


def test_exif_orientation_is_applied(images: dict[str, Path]) -> None:
    path = images["exif6.jpg"]
    with Image.open(path) as raw:
        assert raw.size == (100, 60)
    upright = load_rgb(path)
    assert upright.mode == "RGB"
    assert upright.size == (60, 100)  # width and height swapped
    # Rotated 90 degrees clockwise: the stored top-left block is now top-right.
    arr = np.asarray(upright).astype(int)
    assert arr[5, 55, 0] > 200 and arr[5, 55, 2] < 60  # red
    assert arr[5, 5, 0] < 60 and arr[5, 5, 2] > 200  # blue
    resized = load_resized(path, RESIZE)
    assert resized.shape == (*RESIZE, 3)


@pytest.mark.parametrize("name", ["gray.jpg", "cmyk.jpg", "alpha.png", "small.jpg"])
def test_any_mode_decodes_to_rgb(images: dict[str, Path], name: str) -> None:
    img = load_rgb(images[name])
    assert img.mode == "RGB"
    arr = load_resized(images[name], RESIZE)
    assert arr.dtype == np.uint8
    assert arr.shape == (64, 80, 3)


def test_grayscale_has_equal_channels(images: dict[str, Path]) -> None:
    arr = load_resized(images["gray.jpg"], RESIZE)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_cmyk_colours_survive(images: dict[str, Path]) -> None:
    # The picture's red channel rises left to right: a CMYK decode that forgot to
    # invert or convert would break that.
    arr = load_resized(images["cmyk.jpg"], RESIZE).astype(int)
    assert arr[:, -4:, 0].mean() - arr[:, :4, 0].mean() > 150


def test_load_resized_exact_size_is_unchanged(images: dict[str, Path]) -> None:
    arr = load_resized(images["exact.jpg"], RESIZE)
    np.testing.assert_array_equal(arr, np.asarray(load_rgb(images["exact.jpg"])))


def test_load_resized_is_bilinear_resize(images: dict[str, Path]) -> None:
    arr = load_resized(images["large.jpg"], RESIZE)
    expected = load_rgb(images["large.jpg"]).resize((80, 64), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(arr, np.asarray(expected))


# -- cropping and normalisation -----------------------------------------------------------


def test_cut_patches_crops_and_mirrors() -> None:
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    tops, lefts = np.array([0, 2, 2]), np.array([0, 5, 5])
    flips = np.array([False, False, True])
    out = cut_patches(image, tops, lefts, flips, 4)
    assert out.shape == (3, 3, 4, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], image[0:4, 0:4].transpose(2, 0, 1))
    np.testing.assert_array_equal(out[1], image[2:6, 5:9].transpose(2, 0, 1))
    np.testing.assert_array_equal(out[2], out[1][:, :, ::-1])


def test_normalize_uint8_matches_formula() -> None:
    x = torch.randint(
        0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    got = normalize_uint8(x)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_normalize_uint8_dtype() -> None:
    x = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    out = normalize_uint8(x, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), normalize_uint8(x), rtol=1e-2, atol=1e-2)


def test_normalize_uint8_makes_its_constants_once_per_device() -> None:
    """Made per batch, the mean/std tensors would cost a blocking host-to-device copy
    per batch on CUDA: they are made once per device and reused."""
    loader_module._normalize_affine.cache_clear()
    x = torch.full((2, 3, 4, 4), 7, dtype=torch.uint8)
    first = [normalize_uint8(x) for _ in range(3)]
    info = loader_module._normalize_affine.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    assert all(torch.equal(f, first[0]) for f in first)


@pytest.mark.gpu
def test_normalize_uint8_never_synchronises_on_cuda() -> None:
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, device="cuda")
    want = normalize_uint8(x.cpu())
    normalize_uint8(x)  # the first call on a device makes its constants
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        got = normalize_uint8(x, torch.float16)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.testing.assert_close(got.float().cpu(), want, rtol=0, atol=5e-3)


# -- the loader -----------------------------------------------------------------------------


def test_train_batches_deliver_every_planned_patch_once(dataset) -> None:
    (paths,) = dataset
    n = len(paths)
    plan = _train_plan(n)
    _, idx, got = _collect(_loader(dataset).batches(plan))
    assert n * P == 21
    # 21 patches in batches of 4: five full, one short.
    assert [b.images.shape[0] for b in got] == [4, 4, 4, 4, 4, 1]
    for b in got:
        assert b.images.shape[1:] == (3, S, S)
        assert b.images.dtype == torch.float32
        assert b.image_idx.dtype == torch.int64
    assert torch.bincount(idx, minlength=n).tolist() == [P] * n


def test_batches_mix_images(dataset) -> None:
    plan = _train_plan(len(dataset[0]))
    _, _, got = _collect(_loader(dataset).batches(plan))
    assert any(len(set(b.image_idx.tolist())) > 1 for b in got)


def test_delivered_patches_are_the_planned_crops(dataset) -> None:
    (paths,) = dataset
    plan = _train_plan(len(paths), epoch=3)
    x, idx, _ = _collect(_loader(dataset).batches(plan))
    expected_x, expected_idx = _expected_stream(plan, paths)
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    torch.testing.assert_close(x, expected_x, rtol=0, atol=0)


def test_flipped_patch_is_a_mirrored_crop(dataset) -> None:
    """Independently of cut_patches: find each delivered patch in the resized image."""
    (paths,) = dataset
    plan = _train_plan(len(paths), epoch=2)
    assert plan.flips.any() and not plan.flips.all()
    x, idx, _ = _collect(_loader(dataset).batches(plan))
    row_of = {int(image): row for row, image in enumerate(plan.order)}
    for image in range(len(paths)):
        resized = load_resized(paths[image], RESIZE)
        delivered = x[idx == image]
        row = row_of[image]
        for k in range(P):
            top, left = plan.tops[row, k], plan.lefts[row, k]
            crop = resized[top : top + S, left : left + S].copy()
            if plan.flips[row, k]:
                crop = crop[:, ::-1].copy()
            want = normalize_uint8(torch.from_numpy(crop).permute(2, 0, 1)[None])
            matches = [(d - want[0]).abs().max().item() == 0 for d in delivered]
            assert any(matches), (image, k)
            if plan.flips[row, k]:
                # The unflipped crop is a different picture (the test images are asymmetric).
                plain = resized[top : top + S, left : left + S].copy()
                plain_t = normalize_uint8(torch.from_numpy(plain).permute(2, 0, 1)[None])
                assert not torch.equal(plain_t[0], want[0])


def test_loader_is_deterministic(dataset) -> None:
    plan = _train_plan(len(dataset[0]))
    loader = _loader(dataset)
    a = _collect(loader.batches(plan))
    b = _collect(loader.batches(plan))
    for ta, tb in zip(a[:2], b[:2], strict=True):
        assert torch.equal(ta, tb)


def test_epochs_give_different_batches(dataset) -> None:
    loader = _loader(dataset)
    a = _collect(loader.batches(_train_plan(len(dataset[0]), epoch=1)))
    b = _collect(loader.batches(_train_plan(len(dataset[0]), epoch=2)))
    assert not torch.equal(a[0], b[0])


def test_workers_give_identical_tensors(dataset) -> None:
    plan = _train_plan(len(dataset[0]), epoch=5)
    a = _collect(_loader(dataset, num_workers=0).batches(plan))
    b = _collect(_loader(dataset, num_workers=2).batches(plan))
    for ta, tb in zip(a[:2], b[:2], strict=True):
        assert torch.equal(ta, tb)


def test_val_batches_identical_across_epochs(dataset) -> None:
    (paths,) = dataset
    loader = _loader(dataset)
    epoch1 = _collect(loader.batches(_eval_plan(len(paths))))
    epoch2 = _collect(loader.batches(_eval_plan(len(paths))))
    for ta, tb in zip(epoch1[:2], epoch2[:2], strict=True):
        assert torch.equal(ta, tb)
    # Eval order: image-major, no shuffle.
    assert epoch1[1].tolist() == np.repeat(np.arange(len(paths)), P).tolist()
    expected_x, _ = _expected_stream(_eval_plan(len(paths)), paths)
    assert torch.equal(epoch1[0], expected_x)


def test_subset_plan_uses_image_indices(dataset) -> None:
    """A plan over fewer images than the loader holds indexes the first ones."""
    plan = _train_plan(4)
    _, idx, _ = _collect(_loader(dataset).batches(plan))
    assert sorted(set(idx.tolist())) == [0, 1, 2, 3]


def test_batch_size_larger_than_plan(dataset) -> None:
    plan = _train_plan(len(dataset[0]))
    _, _, got = _collect(_loader(dataset, batch_size=100).batches(plan))
    assert [b.images.shape[0] for b in got] == [21]


def test_batch_size_dividing_plan_has_no_short_batch(dataset) -> None:
    plan = _train_plan(len(dataset[0]))
    _, _, got = _collect(_loader(dataset, batch_size=7).batches(plan))
    assert [b.images.shape[0] for b in got] == [7, 7, 7]


def test_missing_file_raises(tmp_path: Path) -> None:
    loader = PillowLoader([tmp_path / "gone.jpg"], _settings())
    with pytest.raises(LoaderError, match=r"gone\.jpg"):
        list(loader.batches(_train_plan(1)))


# -- shuffle_into_batches without images -------------------------------------------------------


def _tagged_windows(plan: PatchPlan) -> list[torch.Tensor]:
    """Per window, image-major 'patches' whose single value encodes (image, k)."""
    out = []
    for rows, _ in plan.windows():
        tags = [
            int(plan.order[row]) * 100 + k for row in range(rows.start, rows.stop) for k in range(P)
        ]
        out.append(torch.tensor(tags, dtype=torch.int64).view(-1, 1, 1, 1))
    return out


@pytest.mark.parametrize("batch_size", [1, 4, 5, 21, 50])
def test_shuffle_into_batches_bookkeeping(batch_size: int) -> None:
    n = 7
    plan = _train_plan(n, epoch=4)
    got = list(shuffle_into_batches(plan, _tagged_windows(plan), batch_size))
    sizes = [b.images.shape[0] for b in got]
    assert sum(sizes) == n * P
    assert all(sz == batch_size for sz in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    tags = torch.cat([b.images for b in got]).view(-1)
    idx = torch.cat([b.image_idx for b in got])
    # Every (image, k) exactly once, and image_idx agrees with the patch it labels.
    assert sorted(tags.tolist()) == sorted(i * 100 + k for i in range(n) for k in range(P))
    assert torch.equal(tags // 100, idx)


def test_shuffle_into_batches_finish_runs_per_batch() -> None:
    plan = _train_plan(5)
    seen = []

    def finish(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x * 2

    got = list(shuffle_into_batches(plan, _tagged_windows(plan), 4, finish=finish))
    assert seen == [b.images.shape[0] for b in got]
    assert all((b.images % 2 == 0).all() for b in got)


def test_shuffle_into_batches_rejects_wrong_patch_count() -> None:
    plan = _train_plan(5)
    windows = _tagged_windows(plan)
    windows[1] = windows[1][:-1]
    with pytest.raises(RuntimeError, match="patches"):
        list(shuffle_into_batches(plan, windows, 4))


def test_shuffle_into_batches_rejects_missing_window() -> None:
    plan = _train_plan(7)
    windows = _tagged_windows(plan)[:-1]
    with pytest.raises(ValueError):
        list(shuffle_into_batches(plan, windows, 4))
