"""Tests for hyperiqa/demo_data.py (the generator) and scripts/make_demo_dataset.py
(its CLI), on the CPU at small sizes.

The script is loaded from its path with ``importlib``, as a script is run:
the tests do not depend on how ``scripts/`` is imported.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from hyperiqa import demo_data as mdd

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "make_demo_dataset.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_demo_dataset", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_script()

LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]
# Enough images to meet every (kind, level) pair: one copy per level per base
# image, kinds rotating with the base.
DEMO_KW = {"num_images": 15, "height": 48, "width": 64, "seed": 3}


def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mse(a: Image.Image, b: Image.Image) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


@pytest.fixture(scope="module")
def base_image() -> Image.Image:
    return mdd.natural_image(np.random.default_rng(7), 96, 128)


# --------------------------------------------------------------------------- #
# natural_image
# --------------------------------------------------------------------------- #


def test_natural_image_shape_mode_and_determinism() -> None:
    a = mdd.natural_image(np.random.default_rng(1), 40, 56)
    b = mdd.natural_image(np.random.default_rng(1), 40, 56)
    c = mdd.natural_image(np.random.default_rng(2), 40, 56)
    assert a.mode == "RGB"
    assert a.size == (56, 40)  # PIL size is (width, height)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_natural_image_has_structure_and_colour() -> None:
    arr = np.asarray(mdd.natural_image(np.random.default_rng(5), 96, 128), dtype=np.float64)
    assert arr.std() > 10.0  # not flat
    assert 20.0 < arr.mean() < 235.0  # not saturated
    assert not np.array_equal(arr[..., 0], arr[..., 1])  # colour, not grey


def test_natural_image_spectrum_falls_like_a_photograph() -> None:
    # Photographs have amplitude ~ 1/f^a with a roughly in [0.8, 1.6].
    img = mdd.natural_image(np.random.default_rng(11), 256, 256).convert("L")
    lum = np.asarray(img, np.float64)
    amp = np.abs(np.fft.fftshift(np.fft.fft2(lum - lum.mean())))
    yy, xx = np.indices(amp.shape)
    radius = np.hypot(yy - 128, xx - 128).astype(int)
    radial = np.bincount(radius.ravel(), amp.ravel()) / np.bincount(radius.ravel())
    freqs = np.arange(4, 100)
    slope = np.polyfit(np.log(freqs), np.log(radial[freqs]), 1)[0]
    assert -1.8 < slope < -0.6, slope


def test_natural_image_rejects_tiny_size() -> None:
    with pytest.raises(ValueError, match="8x8"):
        mdd.natural_image(np.random.default_rng(0), 4, 64)


def test_noise_scene_shape_mode_and_determinism() -> None:
    a = mdd.noise_scene(np.random.default_rng(1), 40, 56)
    b = mdd.noise_scene(np.random.default_rng(1), 40, 56)
    c = mdd.noise_scene(np.random.default_rng(2), 40, 56)
    assert a.mode == "RGB" and a.size == (56, 40)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_noise_scene_is_textured_everywhere() -> None:
    # What the demo relies on: no flat region, so every crop shows how sharp
    # and clean the image is (natural_image has blocks with std ~4).
    lum = np.asarray(mdd.noise_scene(np.random.default_rng(3), 128, 160).convert("L"), np.float64)
    blocks = lum.reshape(4, 32, 5, 32).transpose(0, 2, 1, 3).reshape(20, -1)
    assert blocks.std(axis=1).min() > 12.0


def test_noise_scene_rejects_tiny_size() -> None:
    with pytest.raises(ValueError, match="8x8"):
        mdd.noise_scene(np.random.default_rng(0), 64, 4)


# --------------------------------------------------------------------------- #
# distort
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", mdd.DISTORTION_KINDS)
def test_distortion_grows_with_level(base_image: Image.Image, kind: str) -> None:
    out = [mdd.distort(base_image, kind, lv, np.random.default_rng(0)) for lv in LEVELS]
    assert all(img.mode == "RGB" and img.size == base_image.size for img in out)
    errors = [_mse(base_image, img) for img in out]
    assert errors[0] == 0.0  # level 0 leaves the image untouched
    assert all(a < b for a, b in itertools.pairwise(errors)), errors


@pytest.mark.parametrize("kind", mdd.DISTORTION_KINDS)
def test_level_one_is_strong(base_image: Image.Image, kind: str) -> None:
    # The demo relies on level 1 being plainly visible: RMS error of at least
    # ~10 grey levels on a textured image, for every kind.
    worst = mdd.distort(base_image, kind, 1.0, np.random.default_rng(0))
    assert math.sqrt(_mse(base_image, worst)) > 10.0


def test_distort_level_zero_is_a_copy(base_image: Image.Image) -> None:
    out = mdd.distort(base_image, "blur", 0.0, np.random.default_rng(0))
    assert out is not base_image
    assert np.array_equal(np.asarray(out), np.asarray(base_image))


def test_noise_distortion_is_reproducible(base_image: Image.Image) -> None:
    a = mdd.distort(base_image, "noise", 0.5, np.random.default_rng(9))
    b = mdd.distort(base_image, "noise", 0.5, np.random.default_rng(9))
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(("kind", "level"), [("sharpen", 0.5), ("blur", -0.1), ("noise", 1.5)])
def test_distort_rejects_bad_arguments(base_image: Image.Image, kind: str, level: float) -> None:
    with pytest.raises(ValueError):
        mdd.distort(base_image, kind, level, np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# write_demo_dataset
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    mdd.write_demo_dataset(root, **DEMO_KW)
    return root


@pytest.fixture(scope="module")
def demo_entries(demo_root: Path) -> list[dict]:
    return json.loads((demo_root / "demo.json").read_text())


def test_demo_json_schema_and_files_decode(demo_root: Path, demo_entries: list[dict]) -> None:
    assert len(demo_entries) == DEMO_KW["num_images"]
    names = [e["image"] for e in demo_entries]
    assert len(set(names)) == len(names)
    for e in demo_entries:
        assert e["image"].startswith("images/") and e["image"].endswith(".jpg")
        assert isinstance(e["score"], float)
        assert math.isfinite(e["score"]) and 0.0 <= e["score"] <= 100.0
        with Image.open(demo_root / e["image"]) as img:
            assert img.format == "JPEG"
            assert img.size == (DEMO_KW["width"], DEMO_KW["height"])
            img.load()  # decodes completely
            assert img.mode == "RGB"
    assert not list(demo_root.rglob("*.tmp"))  # no temp files left behind


def test_demo_covers_every_kind_and_level(demo_entries: list[dict]) -> None:
    pairs = {(e["distortion"], e["level"]) for e in demo_entries}
    assert {(k, lv) for k in mdd.DISTORTION_KINDS for lv in LEVELS[1:]} <= pairs
    assert {e["distortion"] for e in demo_entries} == {*mdd.DISTORTION_KINDS, "none"}
    assert {e["distortion"] for e in demo_entries if e["level"] == 0.0} == {"none"}


def test_demo_scores_fall_with_distortion_level(demo_entries: list[dict]) -> None:
    levels = [e["level"] for e in demo_entries]
    scores = [e["score"] for e in demo_entries]
    assert spearmanr(levels, scores).statistic < -0.95
    # Within each base image (same content), score falls strictly with the level.
    for _, group in itertools.groupby(demo_entries, key=lambda e: e["base"]):
        ordered = [e["score"] for e in sorted(group, key=lambda e: e["level"])]
        assert all(a > b for a, b in itertools.pairwise(ordered)), ordered
    assert min(s for s, lv in zip(scores, levels, strict=True) if lv == 0.0) > 75.0
    assert max(s for s, lv in zip(scores, levels, strict=True) if lv == 1.0) < 25.0


def test_demo_is_deterministic_from_its_seed(tmp_path: Path) -> None:
    kw = {**DEMO_KW, "num_images": 7}
    ja = mdd.write_demo_dataset(tmp_path / "a", **kw)
    mdd.write_demo_dataset(tmp_path / "b", **kw)
    mdd.write_demo_dataset(tmp_path / "c", **{**kw, "seed": kw["seed"] + 1})
    assert ja == tmp_path / "a" / "demo.json"
    files_a = _folder_bytes(tmp_path / "a")
    assert files_a == _folder_bytes(tmp_path / "b")
    assert files_a != _folder_bytes(tmp_path / "c")


def test_demo_rewrite_replaces_json(tmp_path: Path) -> None:
    mdd.write_demo_dataset(tmp_path, **{**DEMO_KW, "num_images": 6})
    json_path = mdd.write_demo_dataset(tmp_path, **{**DEMO_KW, "num_images": 3})
    entries = json.loads(json_path.read_text())
    assert len(entries) == 3
    assert all((tmp_path / e["image"]).is_file() for e in entries)


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        mdd.write_demo_dataset(tmp_path, num_images=0)
    with pytest.raises(ValueError):
        mdd.write_demo_dataset(tmp_path, height=4, width=64)
    assert not (tmp_path / "demo.json").exists()


# --------------------------------------------------------------------------- #
# write_koniq_like_jpegs
# --------------------------------------------------------------------------- #


def test_koniq_like_jpegs_size_and_bytes(tmp_path: Path) -> None:
    paths = mdd.write_koniq_like_jpegs(tmp_path, count=2, seed=0)
    assert len(set(paths)) == 2
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.size == (1024, 768)
            assert not img.info.get("progressive")  # baseline, as nvJPEG's HW decoder wants
        # KonIQ-10k's 1024x768 JPEGs are mostly 150-450 KB.
        assert 150_000 < path.stat().st_size < 450_000, path.stat().st_size


def test_koniq_like_jpegs_are_reused(tmp_path: Path) -> None:
    first = mdd.write_koniq_like_jpegs(tmp_path, count=1, seed=4, height=48, width=64)
    stamp, content = first[0].stat().st_mtime_ns, first[0].read_bytes()
    second = mdd.write_koniq_like_jpegs(tmp_path, count=2, seed=4, height=48, width=64)
    assert second[0] == first[0]
    assert second[0].stat().st_mtime_ns == stamp  # not rewritten
    fresh = mdd.write_koniq_like_jpegs(tmp_path / "fresh", count=2, seed=4, height=48, width=64)
    assert [p.read_bytes() for p in fresh] == [content, second[1].read_bytes()]


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # hyperiqa (for atomic writes) comes from the install, or here from the checkout.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_the_library_dataset(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _run_cli(
        "--out", str(out), "--num_images", "4", "--size", "40x56", "--seed", "1", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out / "demo.json") in proc.stdout
    lib = tmp_path / "lib"
    mdd.write_demo_dataset(lib, num_images=4, height=40, width=56, seed=1)
    assert _folder_bytes(out) == _folder_bytes(lib)


def test_cli_koniq_like_writes_jpegs_of_the_requested_size(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = _run_cli(
        "--koniq_like", "--out", str(out), "--num_images", "2", "--size", "48x80", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("koniq_like_*.jpg"))
    assert len(files) == 2
    assert not (out / "demo.json").exists()
    for path in files:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.size == (80, 48)


def test_cli_koniq_like_defaults_to_koniq_size(tmp_path: Path) -> None:
    proc = _run_cli("--koniq_like", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("koniq_like_*.jpg")
    with Image.open(path) as img:
        assert img.size == (1024, 768)


@pytest.mark.parametrize("size", ["384", "384x", "x512", "abcxdef", "384x512x3", "4x4", "-384x512"])
def test_cli_rejects_bad_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", str(tmp_path / "d"), f"--size={size}"])
    assert exc.value.code != 0
    assert "--size" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_cli_rejects_bad_num_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", str(tmp_path / "d"), "--num_images", "0"])
    assert exc.value.code != 0
    assert "--num_images" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_cli_errors_and_ctrl_c_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["--out", str(blocker / "d"), "--num_images", "2", "--size", "40x56"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"make_demo_dataset.py: error: cannot write to {blocker / 'd'}: ")
    assert len(err.splitlines()) == 1

    def ctrl_c(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_demo_dataset", ctrl_c)
    assert cli.main(["--out", str(tmp_path / "d")]) == 130
    assert capsys.readouterr().err == (
        "make_demo_dataset.py: interrupted; run it again to write the whole set\n"
    )


def test_an_interrupted_demo_is_rewritten_but_foreign_files_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    mdd.write_demo_dataset(root, num_images=4, height=40, width=56)
    (root / "demo.json").unlink()  # as a Ctrl-C before the JSON leaves it
    (root / "images" / ".0003_b000_noise_l075.jpg.x1y2.tmp").write_bytes(b"half")
    assert mdd.foreign_files(root / "images") == []
    (root / "images" / "5999_b1199_noise_l100.jpg").write_bytes(b"")  # a large demo's name
    assert mdd.foreign_files(root / "images") == []
    mdd.write_demo_dataset(root, num_images=4, height=40, width=56)
    assert (root / "demo.json").is_file()
    (root / "images" / "mine.png").write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match=r"holds files the demo did not write \(mine\.png"):
        mdd.write_demo_dataset(root, num_images=4, height=40, width=56)
    assert (root / "demo.json").is_file()  # refused before anything changed
