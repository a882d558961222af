"""Tests for scripts/make_demo_dataset.py (CPU, small sizes)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from scripts.make_demo_dataset import (
    DISTORTION_KINDS,
    distort,
    natural_image,
    write_demo_dataset,
    write_koniq_like_jpegs,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "make_demo_dataset.py"

# Small but with enough images to cover every (kind, level) pair: 5 levels per
# base image, kinds rotate over 3 consecutive bases.
DEMO_KW = {"num_images": 20, "height": 48, "width": 64, "seed": 3}


def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mse(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return float(np.mean((x - y) ** 2))


@pytest.fixture(scope="module")
def base_image() -> Image.Image:
    return natural_image(np.random.default_rng(7), 96, 128)


# --------------------------------------------------------------------------- #
# natural_image
# --------------------------------------------------------------------------- #


def test_natural_image_shape_mode_and_determinism() -> None:
    a = natural_image(np.random.default_rng(1), 40, 56)
    b = natural_image(np.random.default_rng(1), 40, 56)
    c = natural_image(np.random.default_rng(2), 40, 56)
    assert a.mode == "RGB"
    assert a.size == (56, 40)  # PIL size is (width, height)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_natural_image_has_structure_and_colour() -> None:
    arr = np.asarray(natural_image(np.random.default_rng(5), 96, 128), dtype=np.float64)
    # Not flat, not saturated: a usable range of grey levels.
    assert arr.std() > 10.0
    assert 20.0 < arr.mean() < 235.0
    # Colour: channels are correlated (like photographs) but not identical.
    assert not np.array_equal(arr[..., 0], arr[..., 1])


def test_natural_image_spectrum_falls_like_a_photograph() -> None:
    # Natural images have amplitude ~ 1/f^a with a roughly in [0.8, 1.6]; check
    # the slope of the radially averaged luminance spectrum is in that region.
    lum = np.asarray(natural_image(np.random.default_rng(11), 256, 256).convert("L"), np.float64)
    amp = np.abs(np.fft.fftshift(np.fft.fft2(lum - lum.mean())))
    yy, xx = np.indices(amp.shape)
    radius = np.hypot(yy - 128, xx - 128).astype(int)
    radial = np.bincount(radius.ravel(), amp.ravel()) / np.bincount(radius.ravel())
    freqs = np.arange(4, 100)
    slope = np.polyfit(np.log(freqs), np.log(radial[freqs]), 1)[0]
    assert -1.8 < slope < -0.6, slope


def test_natural_image_rejects_tiny_size() -> None:
    with pytest.raises(ValueError, match="8x8"):
        natural_image(np.random.default_rng(0), 4, 64)


# --------------------------------------------------------------------------- #
# distort
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", DISTORTION_KINDS)
def test_distortion_grows_with_level(base_image: Image.Image, kind: str) -> None:
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    out = [distort(base_image, kind, lv, np.random.default_rng(0)) for lv in levels]
    for img in out:
        assert img.mode == "RGB"
        assert img.size == base_image.size
    errors = [_mse(base_image, img) for img in out]
    assert errors[0] == 0.0  # level 0 leaves the image untouched
    assert all(a < b for a, b in itertools.pairwise(errors)), errors


def test_distort_level_zero_is_a_copy(base_image: Image.Image) -> None:
    out = distort(base_image, "blur", 0.0, np.random.default_rng(0))
    assert out is not base_image
    assert np.array_equal(np.asarray(out), np.asarray(base_image))


def test_noise_distortion_is_reproducible(base_image: Image.Image) -> None:
    a = distort(base_image, "noise", 0.5, np.random.default_rng(9))
    b = distort(base_image, "noise", 0.5, np.random.default_rng(9))
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(("kind", "level"), [("sharpen", 0.5), ("blur", -0.1), ("noise", 1.5)])
def test_distort_rejects_bad_arguments(base_image: Image.Image, kind: str, level: float) -> None:
    with pytest.raises(ValueError):
        distort(base_image, kind, level, np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# write_demo_dataset
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, **DEMO_KW)
    return root


def test_demo_json_schema_and_files(demo_root: Path) -> None:
    json_path = demo_root / "demo.json"
    entries = json.loads(json_path.read_text())
    assert isinstance(entries, list)
    assert len(entries) == DEMO_KW["num_images"]
    names = [e["image"] for e in entries]
    assert len(set(names)) == len(names)
    for e in entries:
        assert isinstance(e["image"], str)
        assert e["image"].startswith("images/") and e["image"].endswith(".jpg")
        assert not Path(e["image"]).is_absolute()
        assert isinstance(e["score"], float)
        assert math.isfinite(e["score"]) and 0.0 <= e["score"] <= 100.0
        path = demo_root / e["image"]
        assert path.is_file()
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (DEMO_KW["width"], DEMO_KW["height"])
    # No temp files left behind.
    assert not [p for p in demo_root.rglob("*.tmp")]


def test_demo_covers_every_kind_and_level(demo_root: Path) -> None:
    entries = json.loads((demo_root / "demo.json").read_text())
    pairs = {(e["distortion"], e["level"]) for e in entries}
    for kind in DISTORTION_KINDS:
        for level in (0.25, 0.5, 0.75, 1.0):
            assert (kind, level) in pairs
    assert {e["distortion"] for e in entries if e["level"] == 0.0} == {"none"}


def test_demo_scores_fall_with_distortion_level(demo_root: Path) -> None:
    entries = json.loads((demo_root / "demo.json").read_text())
    levels = [e["level"] for e in entries]
    scores = [e["score"] for e in entries]
    rho = spearmanr(levels, scores).statistic
    assert rho < -0.9, rho
    # Pristine images score near the top of the scale, the worst near the bottom.
    assert min(s for s, lv in zip(scores, levels, strict=True) if lv == 0.0) > 70.0
    assert max(s for s, lv in zip(scores, levels, strict=True) if lv == 1.0) < 30.0


def test_demo_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    kw = {**DEMO_KW, "num_images": 7}
    ja = write_demo_dataset(a, **kw)
    jb = write_demo_dataset(b, **kw)
    write_demo_dataset(c, **{**kw, "seed": kw["seed"] + 1})
    assert ja == a / "demo.json" and jb == b / "demo.json"
    files_a, files_b = _folder_bytes(a), _folder_bytes(b)
    assert files_a == files_b
    assert files_a != _folder_bytes(c)


def test_demo_rewrite_replaces_json_atomically(tmp_path: Path) -> None:
    # A second run into the same folder ends with a JSON that lists exactly the
    # new images (the old JSON is never left vouching for a half-written run).
    write_demo_dataset(tmp_path, **{**DEMO_KW, "num_images": 6})
    json_path = write_demo_dataset(tmp_path, **{**DEMO_KW, "num_images": 3})
    entries = json.loads(json_path.read_text())
    assert len(entries) == 3
    assert all((tmp_path / e["image"]).is_file() for e in entries)


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path, num_images=0)
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path, height=4, width=64)
    assert not (tmp_path / "demo.json").exists()


# --------------------------------------------------------------------------- #
# write_koniq_like_jpegs
# --------------------------------------------------------------------------- #


def test_koniq_like_jpegs_size_and_bytes(tmp_path: Path) -> None:
    paths = write_koniq_like_jpegs(tmp_path, count=2, seed=0)
    assert len(paths) == 2 and len(set(paths)) == 2
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (1024, 768)
            assert not img.info.get("progressive")  # baseline, as nvJPEG's HW decoder wants
        # KonIQ-10k's 1024x768 JPEGs are mostly 150-450 KB.
        assert 150_000 < path.stat().st_size < 450_000, path.stat().st_size


def test_koniq_like_jpegs_are_reused(tmp_path: Path) -> None:
    first = write_koniq_like_jpegs(tmp_path, count=1, seed=4, height=48, width=64)
    stamp = first[0].stat().st_mtime_ns
    content = first[0].read_bytes()
    second = write_koniq_like_jpegs(tmp_path, count=2, seed=4, height=48, width=64)
    assert second[0] == first[0]
    assert second[0].stat().st_mtime_ns == stamp  # not rewritten
    # The second file of a larger request is generated, and the first file is
    # what a fresh folder would get too (names fully determine content).
    fresh = write_koniq_like_jpegs(tmp_path / "fresh", count=2, seed=4, height=48, width=64)
    assert [p.read_bytes() for p in fresh] == [content, second[1].read_bytes()]


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_dataset(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _run_cli(
        "--out", str(out), "--num_images", "4", "--size", "40x56", "--seed", "1", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out / "demo.json") in proc.stdout
    entries = json.loads((out / "demo.json").read_text())
    assert len(entries) == 4
    with Image.open(out / entries[0]["image"]) as img:
        assert img.size == (56, 40)
    # Same output as the library call with the same arguments.
    lib = tmp_path / "lib"
    write_demo_dataset(lib, num_images=4, height=40, width=56, seed=1)
    assert _folder_bytes(out) == _folder_bytes(lib)


def test_cli_runs_from_repo_root(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/make_demo_dataset.py",
            "--out",
            str(tmp_path / "d"),
            "--num_images",
            "1",
            "--size",
            "16x16",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "d" / "demo.json").is_file()


@pytest.mark.parametrize("size", ["384", "384x", "x512", "abcxdef", "384x512x3", "4x4", "-384x512"])
def test_cli_rejects_bad_size(tmp_path: Path, size: str) -> None:
    proc = _run_cli("--out", str(tmp_path / "d"), f"--size={size}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--size" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_cli_rejects_bad_num_images(tmp_path: Path) -> None:
    proc = _run_cli("--out", str(tmp_path / "d"), "--num_images", "0", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--num_images" in proc.stderr
