"""bench/throughput.py on a tiny input: rows, JSON schema, ratios. No timing assertions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import measure
import throughput
from original_loader import OriginalSchemeLoader
from pipelines.factory import dali_available, make_loader
from pipelines.loader import LoaderSettings
from pipelines.patches import train_plan
from tests.conftest import make_dataset, run_cli

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


@pytest.mark.slow
def test_rows_present_and_measured(bench_run):
    data, stdout = bench_run
    rows = {r["name"]: r for r in data["results"]}
    expected = ["loader/original", "loader/pillow", "train/synthetic", "train/pillow"]
    expected += ["score/synthetic", "score/pillow"]
    if dali_available():
        expected += ["loader/dali-cpu", "train/dali-cpu", "score/dali-cpu"]
    for name in expected:
        assert name in rows, name
        row = rows[name]
        assert not row.get("error") and not row.get("skipped"), row
        assert row["patches_per_s"] > 0 and row["seconds"] > 0
        assert row["images_per_s"] == pytest.approx(row["patches_per_s"] / 2, rel=1e-3)
        assert name in stdout
    assert not {"loader/dali-gpu", "train/dali-gpu", "score/dali-gpu"} & set(rows)  # CUDA only
    assert rows["loader/original"]["decodes_by_construction"] == 2
    assert rows["loader/pillow"]["decodes_by_construction"] == 1


@pytest.mark.slow
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


@pytest.mark.slow
def test_ratios_consistent(bench_run):
    data, _ = bench_run
    rows = {r["name"]: r for r in data["results"]}
    for row in data["results"]:
        if row.get("skipped") or row.get("error"):
            continue
        kind = row["name"].split("/")[0]
        ref = {"train": "train/synthetic", "score": "score/synthetic"}.get(kind, "loader/original")
        assert row["ratio_to"] == ref
        expected = row["patches_per_s"] / rows[ref]["patches_per_s"]
        assert row["ratio"] == pytest.approx(expected, rel=1e-3)
    assert rows["train/synthetic"]["ratio"] == 1.0
    assert rows["loader/original"]["ratio"] == 1.0
    assert rows["score/synthetic"]["ratio"] == 1.0


@pytest.mark.slow
def test_the_score_rows_run_predict_s_scorer_and_say_their_ratio(bench_run):
    data, stdout = bench_run
    rows = {r["name"]: r for r in data["results"]}
    pillow = rows["score/pillow"]
    assert pillow["images_per_s"] > 0 and pillow["batches"] >= 1
    # The image check and the decode each read the file once.
    assert pillow["decodes_per_image"] == 2
    assert rows["score/synthetic"]["decodes_per_image"] == 0
    want = pillow["images_per_s"] / rows["score/synthetic"]["images_per_s"]
    line = next(
        ln for ln in data["score_ratios"] if ln.startswith(("score/pillow", "WARN score/pillow"))
    )
    assert f"{want:.3f}" in line and "goal >= 0.8" in line
    assert line in stdout.splitlines()


@pytest.mark.slow
def test_the_loader_ratio_is_printed_and_in_the_json(bench_run):
    data, stdout = bench_run
    if not dali_available():
        pytest.skip("DALI not installed: no train/dali-cpu row")
    rows = {r["name"]: r for r in data["results"]}
    ratio = data["loader_ratio"]
    assert ratio["rows"] == "train/dali-cpu ÷ train/synthetic"
    want = rows["train/dali-cpu"]["patches_per_s"] / rows["train/synthetic"]["patches_per_s"]
    assert ratio["ratio"] == pytest.approx(want, rel=1e-3)
    assert ratio["warn"] is (want < 0.9)
    assert ratio["line"] in stdout.splitlines()


def _row(name: str, pps: float | None, **extra) -> dict:
    return {"name": name, "patches_per_s": pps, **extra}


@pytest.mark.parametrize(
    ("fed", "warn"), [(95.0, False), (90.0, False), (89.96, True), (30.0, True)]
)
def test_loader_ratio_warns_under_0_9(fed, warn):
    results = [
        _row("train/synthetic", 100.0),
        _row("train/dali-gpu", fed),
        _row("train/dali-cpu", 1.0),
    ]
    got = throughput.loader_ratio(results)
    assert got["rows"] == "train/dali-gpu ÷ train/synthetic"  # the GPU row when there is one
    assert got["ratio"] == pytest.approx(fed / 100.0) and got["warn"] is warn
    assert got["line"].startswith("WARN ") is warn
    assert f"{fed / 100:.3f} (goal >= 0.95)" in got["line"]


def test_loader_ratio_says_why_it_is_missing():
    results = [_row("train/synthetic", 100.0), _row("train/dali-gpu", None, error="Boom: x")]
    got = throughput.loader_ratio(results)
    assert got["ratio"] is None and not got["warn"]
    assert got["line"] == "train/dali-gpu ÷ train/synthetic: not measured (train/dali-gpu Boom: x)"
    only_loader_rows = throughput.loader_ratio([_row("loader/dali-cpu", 5.0)])
    assert (
        "train/dali-cpu not in this run; train/synthetic not in this run"
        in (only_loader_rows["line"])
    )


def test_a_failing_close_is_logged_in_one_line(tmp_path, monkeypatch, caplog):
    real_endless = measure.endless

    def endless(setup, loader, device):
        try:
            yield from real_endless(setup, loader, device)
        finally:
            raise RuntimeError("the stream would not close\nsecond line")

    monkeypatch.setattr(measure, "endless", endless)
    args = [*TINY, "--data_dir", str(tmp_path / "data"), "--only", "loader/pillow"]
    with caplog.at_level("WARNING", logger="measure"):
        assert throughput.main(args) == 0  # the row's numbers stand
    (record,) = [r for r in caplog.records if r.name == "measure"]
    assert record.getMessage() == (
        "bench: loader/pillow: closing its batch stream failed "
        "(RuntimeError: the stream would not close); ignored"
    )
    assert record.exc_info is None


@pytest.mark.slow
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
    monkeypatch.setattr(measure, "dali_available", lambda: False)
    out = tmp_path / "out.json"
    args = [*TINY, "--data_dir", str(tmp_path / "data"), "--only", "loader/dali"]
    assert throughput.main([*args, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["name"] == "loader/dali-cpu"
    assert "DALI unavailable" in row["skipped"]
    assert row["patches_per_s"] is None and row["ratio"] is None
    assert "skipped" in capsys.readouterr().out


def test_a_failing_row_fails_the_bench_after_the_others_ran(tmp_path, monkeypatch, capsys):
    real_measure = measure.measure

    def broken_pillow_row(setup, row, consumer):
        if row.name == "loader/pillow":
            raise RuntimeError("boom")
        return real_measure(setup, row, consumer)

    monkeypatch.setattr(measure, "measure", broken_pillow_row)
    out = tmp_path / "out.json"
    args = [*TINY, "--data_dir", str(tmp_path / "data"), "--only", "loader/"]
    assert throughput.main([*args, "--json", str(out)]) == 1
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["loader/pillow"]["error"] == "RuntimeError: boom"
    assert rows["loader/original"]["patches_per_s"] > 0  # the other rows were measured
    captured = capsys.readouterr()
    assert re.search(r"^loader/pillow\s+FAILED: RuntimeError: boom$", captured.out, re.M)
    assert captured.err.strip().endswith(
        "bench/throughput.py: error: 1 rows failed (traceback above): loader/pillow"
    )


@pytest.mark.slow
def test_bench_json_never_replaces_an_image_it_reads(tmp_path):
    data = tmp_path / "data"
    run_cli("bench/throughput.py", *TINY, "--data_dir", str(data), "--only", "loader/pillow")
    (image, *_) = sorted(data.glob("*/*.jpg"))
    before = image.read_bytes()
    proc = run_cli("bench/throughput.py", *TINY, "--data_dir", str(data), "--json", str(image))
    assert proc.returncode == 1 and "would overwrite the input image" in proc.stderr
    assert image.read_bytes() == before
    image.write_bytes(before[:500])  # a damaged file in the reused cache is named
    proc = run_cli("bench/throughput.py", *TINY, "--data_dir", str(data), "--only", "loader/pillow")
    assert proc.returncode == 1 and image.name in proc.stderr and "Traceback" not in proc.stderr


SMALL = LoaderSettings(resize=(48, 64), batch_size=4, device=torch.device("cpu"))


def _jpegs_and_plan(tmp_path: Path, n: int, patches: int) -> tuple[list[Path], object]:
    """n small random JPEGs and a training plan over them (32-pixel crops of 48x64)."""
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    plan = train_plan(
        n, seed=1, epoch=2, patches_per_image=patches, patch_size=32, resize=(48, 64), window=2
    )
    return paths, plan


def test_original_scheme_cuts_the_same_patches_as_pillow(tmp_path):
    """Same plan, same patches: the original scheme differs only in decoding per patch."""
    paths, plan = _jpegs_and_plan(tmp_path, 3, patches=3)
    settings = SMALL
    ours = list(make_loader("pillow", paths, settings).batches(plan))
    original = list(OriginalSchemeLoader(paths, settings).batches(plan))
    assert [b.images.shape[0] for b in original] == [b.images.shape[0] for b in ours]
    for a, b in zip(ours, original, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.image_idx, b.image_idx)


def test_synthetic_loader_follows_the_plan(tmp_path):
    paths, plan = _jpegs_and_plan(tmp_path, 5, patches=2)
    settings = SMALL
    synthetic = list(make_loader("synthetic", paths, settings).batches(plan))
    pillow = list(make_loader("pillow", paths, settings).batches(plan))
    assert [b.images.shape for b in synthetic] == [b.images.shape for b in pillow]
    assert torch.equal(
        torch.cat([b.image_idx for b in synthetic]), torch.cat([b.image_idx for b in pillow])
    )


def test_quick_defaults_on_cpu(tmp_path):
    args = throughput.build_parser().parse_args(
        ["--device", "cpu", "--quick", "--images", "2", "--image_size", "240x256",
         "--data_dir", str(tmp_path)]
    )  # fmt: skip
    setup = throughput.setup(args)
    assert setup.batch_size == 16 and setup.seconds == 8.0
    assert len(setup.paths) == 7252 and setup.files == 2
    assert Path(setup.paths[3]) == Path(setup.paths[1])


@pytest.mark.slow
def test_bad_bench_flags_are_one_line(tmp_path):
    base = [*TINY, "--data_dir", str(tmp_path / "data")]
    proc = run_cli("bench/throughput.py", *base, "--only", "nonsense/")
    assert proc.returncode == 1 and "--only 'nonsense/' matches no row" in proc.stderr
    assert "Traceback" not in proc.stderr
    for flag, value in [("--worker_sweep", "a,b"), ("--seconds", "-5")]:
        proc = run_cli("bench/throughput.py", *base, flag, value)
        assert proc.returncode == 2 and f"argument {flag}" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_bench_json_never_replaces_its_data_json(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[]")
    proc = run_cli("bench/throughput.py", *TINY, "--data_json", str(data), "--json", str(data))
    assert proc.returncode == 1 and "would overwrite the input --data_json" in proc.stderr
    assert data.read_text() == "[]"


@pytest.mark.slow
def test_bench_reads_a_metadata_json_relative_to_dataset_root(tmp_path):
    """Paths in a prepared JSON are relative to --dataset_root, as for train.py."""
    root = tmp_path / "datasets"
    make_dataset(root, 4, size=(240, 256))
    metas = tmp_path / "metas"
    metas.mkdir()
    shutil.move(root / "demo.json", metas / "demo.json")  # the JSON lives apart from the images
    proc = run_cli("bench/throughput.py", *TINY, "--only", "loader/pillow",
                   "--data_json", str(metas / "demo.json"), "--dataset_root", str(root))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "loader/pillow" in proc.stdout


@pytest.mark.slow
def test_bench_refuses_an_unwritable_json_before_measuring(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("bench/throughput.py", *TINY, "--json", str(blocker / "out.json"))
    assert proc.returncode == 1
    assert f"cannot write --json {blocker / 'out.json'}: {blocker} is not a folder" in proc.stderr
    assert "loader/" not in proc.stdout  # nothing was measured first
