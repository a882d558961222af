"""predict.py: any size and format, deterministic, batch-friendly, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from hyperiqa.model import HyperNet
from tests.conftest import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pkl"
    torch.save(HyperNet(backbone="tiny").state_dict(), path)  # the scoring, not the architecture
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for name, size, mode in [
        ("large.jpg", (300, 420), "RGB"),
        ("small.png", (90, 70), "RGB"),  # smaller than the resize target
        ("gray.jpg", (250, 250), "L"),
        ("wide.png", (120, 500), "RGBA"),
    ]:
        shape = (*size, len(mode)) if mode != "L" else size
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        img.save(root / name)
        out.append(root / name)
    return out


def args(checkpoint: Path, images: list[Path], *extra: str) -> list[str]:
    return [
        "--checkpoint", str(checkpoint), "--device", "cpu", "--loader", "pillow",
        "--resize", "240x256", "--patch_num", "2", "--batch_size", "4",
        *extra, *map(str, images),
    ]  # fmt: skip


def test_scores_every_image_of_any_size_and_format(
    checkpoint: Path, images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    assert predict.main(args(checkpoint, images)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [str(p) for p in images]
    assert all(np.isfinite(float(ln.split("\t")[1])) for ln in lines)


def test_json_output_is_deterministic(
    checkpoint: Path, images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    results = []
    for _ in range(2):
        assert predict.main(args(checkpoint, images, "--json")) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    assert [r["image"] for r in results[0]] == [str(p) for p in images]
    assert all(set(r) == {"image", "score"} for r in results[0])


def test_batching_does_not_change_scores(
    checkpoint: Path, images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    assert predict.main(args(checkpoint, images, "--json")) == 0
    together = json.loads(capsys.readouterr().out)
    assert predict.main(args(checkpoint, images[:1], "--json", "--batch_size", "1")) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone[0]["score"] == pytest.approx(together[0]["score"], abs=1e-3)


@pytest.mark.slow
def test_missing_and_corrupt_images_are_named(
    checkpoint: Path, images: list[Path], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    missing = tmp_path / "missing.jpg"
    proc = run_cli("predict.py", *args(checkpoint, [images[0], corrupt, missing]))
    assert_clean_error(proc, "corrupt.jpg", "missing.jpg")


@pytest.mark.slow
def test_bad_checkpoint_is_named(images: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli("predict.py", *args(bad, images[:1]))
    assert_clean_error(proc, "bad.pkl")
