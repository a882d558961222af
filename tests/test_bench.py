"""bench/throughput.py on a tiny input: rows, JSON schema, ratios. No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import throughput
from bench.original_loader import PerPatchDataset
from bench.pillow_draft import load_resized_draft
from pipelines.factory import dali_available
from pipelines.pillow import load_resized
from tests.conftest import run_cli

ENV_KEYS = {
    "device",
    "device_name",
    "cpu_count",
    "torch",
    "torchvision",
    "dali",
    "amp",
    "batch_size",
    "patch_num",
    "num_workers",
    "python",
}

# Small generated JPEGs, 240x256 "training size" and one measured batch per row:
# the point is the harness, not the numbers.
TINY = [
    "--device", "cpu",
    "--images", "4",
    "--image_size", "240x256",
    "--resize", "240x256",
    "--batch_size", "4",
    "--patch_num", "2",
    "--seconds", "0.01",
    "--warmup", "0",
    "--epoch_images", "8",
    "--num_workers", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out.json"
    proc = run_cli(
        "bench/throughput.py", *TINY, "--data_dir", str(tmp / "data"), "--json", str(out)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_rows_present_and_measured(bench_run):
    data, stdout = bench_run
    rows = {r["name"]: r for r in data["results"]}
    expected = ["loader/original", "loader/pillow", "train/synthetic", "train/pillow"]
    if dali_available():
        expected += ["loader/dali-cpu", "train/dali-cpu"]
    for name in expected:
        assert name in rows, name
        row = rows[name]
        assert not row.get("error") and not row.get("skipped"), row
        assert row["patches_per_s"] > 0 and row["seconds"] > 0
        assert row["images_per_s"] == pytest.approx(row["patches_per_s"] / 2, rel=1e-3)
        assert name in stdout
    assert "loader/dali-gpu" not in rows and "train/dali-gpu" not in rows  # CUDA only
    assert rows["loader/original"]["decodes_by_construction"] == 2
    assert rows["loader/pillow"]["decodes_by_construction"] == 1


def test_json_schema(bench_run):
    data, _ = bench_run
    assert set(data["env"]) >= ENV_KEYS
    assert data["env"]["batch_size"] == 4 and data["env"]["patch_num"] == 2
    assert data["env"]["device"] == "cpu"
    for row in data["results"]:
        assert set(throughput.RESULT_KEYS) <= set(row), row["name"]
        if row["name"].startswith("train/") and not row.get("skipped"):
            assert row["data_wait_s"] is not None and row["compute_s"] is not None
        assert row["peak_gpu_mb"] is None  # CPU run


def test_ratios_consistent(bench_run):
    data, _ = bench_run
    rows = {r["name"]: r for r in data["results"]}
    for row in data["results"]:
        if row.get("skipped") or row.get("error"):
            continue
        ref = "train/synthetic" if row["name"].startswith("train/") else "loader/original"
        assert row["ratio_to"] == ref
        expected = row["patches_per_s"] / rows[ref]["patches_per_s"]
        assert row["ratio"] == pytest.approx(expected, rel=1e-3)
    assert rows["train/synthetic"]["ratio"] == 1.0
    assert rows["loader/original"]["ratio"] == 1.0


def test_koniq_estimate_for_train_rows(bench_run):
    data, _ = bench_run
    for row in data["results"]:
        if row["name"].startswith("train/") and not row.get("skipped"):
            pps = row["patches_per_s"]
            seconds = 16 * (7252 * 2 / pps + 806 * 2 / (3 * pps))
            assert row["est_koniq_16ep_h"] == pytest.approx(seconds / 3600, rel=1e-2)
        elif row["name"].startswith("loader/"):
            assert row["est_koniq_16ep_h"] is None


def test_missing_dali_skips_its_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(throughput, "dali_available", lambda: False)
    out = tmp_path / "out.json"
    args = [
        *TINY,
        "--data_dir",
        str(tmp_path / "data"),
        "--only",
        "loader/dali",
        "--json",
        str(out),
    ]
    assert throughput.main(args) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["name"] == "loader/dali-cpu"
    assert "DALI unavailable" in row["skipped"]
    assert row["patches_per_s"] is None and row["ratio"] is None
    assert "skipped" in capsys.readouterr().out


def test_original_dataset_one_decode_per_item(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(np.full((240, 256, 3), 60 * i, np.uint8)).save(path)
        paths.append(path)
    ds = PerPatchDataset(paths, [10.0, 20.0], patch_num=3, resize=(240, 256), patch_size=224)
    assert len(ds) == 6
    x, score = ds[4]  # item 4 = patch 1 of image 1
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert score == 20.0


def test_draft_decode_returns_the_training_size(tmp_path):
    y, x = np.mgrid[0:192, 0:256]
    waves = [128 + 100 * np.sin(x / 9.0 + c) * np.cos(y / 13.0 - c) for c in range(3)]
    big = Image.fromarray(np.stack(waves, axis=-1).astype(np.uint8))  # 2x the target size
    jpg, png = tmp_path / "a.jpg", tmp_path / "a.png"
    big.save(jpg, quality=90)
    big.save(png)
    for path in (jpg, png):
        out = load_resized_draft(path, (96, 128))
        assert out.shape == (96, 128, 3) and out.dtype == np.uint8
    # Not identical to a full decode + bilinear resize, but the same picture.
    diff = np.abs(load_resized_draft(jpg, (96, 128)).astype(int) - load_resized(jpg, (96, 128)))
    assert diff.mean() < 5


def test_quick_defaults_on_cpu(tmp_path):
    bench = throughput.setup(
        ["--device", "cpu", "--quick", "--images", "2", "--image_size", "240x256",
         "--data_dir", str(tmp_path)]
    )  # fmt: skip
    assert bench.batch_size == 16 and bench.seconds == 8.0
    assert len(bench.paths) == 7252 and bench.files == 2
    assert Path(bench.paths[3]) == Path(bench.paths[1])
