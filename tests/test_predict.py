"""predict.py: any size and format, deterministic, batch-friendly, clean errors; a
collection (folders, lists) streamed to a file, resumed after a kill, over ranks."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from hyperiqa.model import HyperNet
from hyperiqa.scorer import score_files
from pipelines.factory import dali_available
from tests.conftest import ROOT, assert_clean_error, make_dataset, run_cli


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


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
def test_missing_and_corrupt_images_are_named_and_the_rest_scored(
    checkpoint: Path, images: list[Path], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    missing = tmp_path / "missing.jpg"
    proc = run_cli("predict.py", *args(checkpoint, [images[0], corrupt, missing]))
    assert_clean_error(proc, "corrupt.jpg", "missing.jpg")
    assert proc.returncode == predict.EXIT_SOME_FAILED
    assert f"cannot score {missing}: file not found" in proc.stderr
    assert [ln.split("\t")[0] for ln in proc.stdout.splitlines()] == [str(images[0])]


@pytest.mark.slow
def test_bad_checkpoint_is_named(images: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli("predict.py", *args(bad, images[:1]))
    assert_clean_error(proc, "bad.pkl")


# -- collections: folders, lists, the output file ------------------------------------------


def flags(checkpoint: Path, *extra: str) -> list[str]:
    """One crop per image and batches of 2: rows windows of 2 images, fast on a CPU."""
    return [
        "--checkpoint", str(checkpoint), "--device", "cpu", "--loader", "pillow",
        "--resize", "240x256", "--patch_num", "1", "--batch_size", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight good JPEGs in nested folders, a broken JPEG, a text file named .jpg, notes."""
    root = tmp_path_factory.mktemp("collection")
    make_dataset(root / "src", 8, size=(240, 256))
    sources = sorted((root / "src" / "images").iterdir())
    for i, src in enumerate(sources):
        folder = root / "photos" / ("" if i < 3 else "2024" if i < 6 else "2024/june")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / f"p{i}.jpg")
    (root / "photos" / "2024" / "broken.jpg").write_bytes(sources[0].read_bytes()[:500])
    (root / "photos" / "2024" / "text.jpg").write_text("not an image")
    (root / "photos" / "README.txt").write_text("ignored: not an image extension")
    shutil.rmtree(root / "src")
    return root / "photos"


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_scores_are_today_s(checkpoint: Path, images: list[Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """The streamed scorer gives exactly the scores of score_files (evaluate.py's
    path, and predict.py's before collections): same crops, loader and batches."""
    listed = [*images, *images[:1]]
    expected = score_files(checkpoint, listed, device="cpu", loader="pillow", batch_size=4,
                           resize=(240, 256), patch_num=2, echo=lambda _: None)  # fmt: skip
    out = tmp_path / "scores.csv"
    assert predict.main(args(checkpoint, listed, "--output", str(out))) == 0
    assert [float(r["score"]) for r in csv_rows(out)] == list(expected)  # bit for bit
    capsys.readouterr()
    assert predict.main(args(checkpoint, listed)) == 0
    printed = [ln.split("\t")[1] for ln in capsys.readouterr().out.splitlines()]
    assert printed == [f"{s:.4f}" for s in expected]


def test_folders_and_lists_score_every_image_in_order(
    checkpoint: Path, collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    listed = tmp_path / "more.txt"
    photos = sorted(collection.glob("p*.jpg"))
    listed.write_text(f"{photos[0]}\n\n{collection / '2024' / 'june'}\r\n{tmp_path / 'gone.jpg'}\n")
    out = tmp_path / "out.jsonl"
    code = predict.main(flags(checkpoint, str(collection), "--list", str(listed),
                              "--output", str(out)))  # fmt: skip
    assert code == predict.EXIT_SOME_FAILED  # broken.jpg, text.jpg, gone.jpg
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = [os.path.relpath(r["image"], collection) for r in rows]
    assert names == [
        "2024/broken.jpg", "2024/june/p6.jpg", "2024/june/p7.jpg", "2024/p3.jpg",
        "2024/p4.jpg", "2024/p5.jpg", "2024/text.jpg", "p0.jpg", "p1.jpg", "p2.jpg",
        # then the list: a file, a folder (walked), a missing file
        "p0.jpg", "2024/june/p6.jpg", "2024/june/p7.jpg", os.path.relpath(tmp_path / "gone.jpg", collection),
    ]  # fmt: skip
    failed = {os.path.basename(r["image"]): r["error"] for r in rows if r["error"]}
    assert set(failed) == {"broken.jpg", "text.jpg", "gone.jpg"}
    assert "Truncated" in failed["broken.jpg"] and failed["gone.jpg"] == "file not found"
    assert all(r["score"] is None for r in rows if r["error"])
    assert all(np.isfinite(r["score"]) for r in rows if not r["error"])
    # The same file twice: the same score, up to float rounding of batches of other sizes.
    assert rows[7]["score"] == pytest.approx(rows[10]["score"], abs=1e-6)
    err = capsys.readouterr().err
    assert "11 images scored, 3 failed (their rows say why)" in err and str(out) in err


@pytest.mark.slow
def test_an_existing_output_is_never_overwritten_by_accident(
    checkpoint: Path, images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    out.write_text("precious\n")
    proc = run_cli("predict.py", *flags(checkpoint, str(images[0]), "--output", str(out)))
    assert_clean_error(proc, f"--output {out} exists", "--resume", "--overwrite")
    assert out.read_text() == "precious\n"
    proc = run_cli("predict.py", *flags(tmp_path / "missing.pkl", str(images[0]),
                                         "--output", str(out), "--overwrite"))  # fmt: skip
    assert_clean_error(proc, "missing.pkl")
    assert out.read_text() == "precious\n"  # a bad checkpoint fails before the output is touched
    fresh = tmp_path / "fresh.csv"
    proc = run_cli("predict.py", *flags(tmp_path / "missing.pkl", str(images[0]),
                                         "--output", str(fresh)))  # fmt: skip
    assert_clean_error(proc, "missing.pkl")
    assert not fresh.exists()  # made to test it can be written, removed as nothing was
    assert predict.main(flags(checkpoint, str(images[0]), "--output", str(out), "--overwrite")) == 0
    assert [r["image"] for r in csv_rows(out)] == [str(images[0])]
    for bad, needle in [(tmp_path, "is a directory"), (tmp_path / "x.txt", ".csv or .jsonl")]:
        assert_clean_error(run_cli("predict.py", *flags(checkpoint, str(images[0]),
                                                        "--output", str(bad))), needle)  # fmt: skip


def test_an_empty_path_is_refused(checkpoint: Path, images: list[Path]) -> None:
    """An unset shell variable ("$DIR") would otherwise be a row no --resume reads."""
    with pytest.raises(SystemExit) as stop:
        predict.parse_args(flags(checkpoint, str(images[0]), ""))
    assert stop.value.code == 2


def test_resume_with_other_crops_or_checkpoint_is_refused(
    checkpoint: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "scores.csv"
    assert predict.main(flags(checkpoint, *map(str, images[:2]), "--output", str(out))) == 0
    full = out.read_bytes()
    other = tmp_path / "other.pkl"
    torch.manual_seed(1)
    torch.save(HyperNet(backbone="tiny").state_dict(), other)
    capsys.readouterr()
    for argv, needle in [
        (flags(checkpoint, *map(str, images), "--patch_num", "2"), "patch_num 1, this run with 2"),
        (flags(other, *map(str, images)), "checkpoint_sha256"),
    ]:
        assert predict.main([*argv, "--output", str(out), "--resume"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1] and "Nothing was changed" in err[-1]
        assert out.read_bytes() == full
    # The same settings resume: the third image is added.
    assert predict.main(flags(checkpoint, *map(str, images), "--output", str(out), "--resume")) == 0
    assert [r["image"] for r in csv_rows(out)] == [str(p) for p in images]


def wait_for_rows(path: Path, rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= rows + 1:  # + the header
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {rows} rows")


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(
    checkpoint: Path, collection: Path, tmp_path: Path
) -> None:
    listed = tmp_path / "list.txt"
    paths = [str(p) for p in sorted(collection.rglob("*.jpg"))]
    listed.write_text("\n".join(paths) + "\n")
    whole = tmp_path / "whole.csv"
    common = ["--chunk_images", "2"]
    proc = run_cli(
        "predict.py", *flags(checkpoint, "--list", str(listed), "--output", str(whole), *common)
    )
    assert proc.returncode == predict.EXIT_SOME_FAILED, proc.stderr
    # The list comes through a pipe that stays open: after its first chunk the run
    # waits for more paths, so the kill lands mid-run, deterministically.
    out = tmp_path / "killed.csv"
    run = subprocess.Popen(
        [sys.executable, "predict.py", *flags(checkpoint, "--list", "-", "--output", str(out), *common)],
        cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    run.stdin.write(("\n".join(paths[:4]) + "\n").encode())
    run.stdin.flush()
    wait_for_rows(out, 2, run)
    run.kill()  # SIGKILL: no clean-up at all
    run.wait()
    kept = out.read_bytes()
    assert 0 < kept.count(b"\n") - 1 < len(paths)
    out.write_bytes(kept + b"/half/a/row.jp")  # and a torn last row, as a kill mid-write leaves
    proc = run_cli("predict.py", *flags(checkpoint, "--list", str(listed), "--output", str(out),
                                        "--resume", *common))  # fmt: skip
    assert proc.returncode == predict.EXIT_SOME_FAILED, proc.stderr
    assert "cut off a torn last row" in proc.stderr and "already in the output" in proc.stderr
    assert out.read_bytes() == whole.read_bytes()  # every image once, the same bytes
    proc = run_cli("predict.py", *flags(checkpoint, "--list", str(listed), "--output", str(out),
                                        "--resume", *common))  # fmt: skip
    assert out.read_bytes() == whole.read_bytes()  # resuming a finished run changes nothing


@pytest.mark.slow
def test_ctrl_c_stops_at_a_window_with_the_command_to_resume(
    checkpoint: Path, collection: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    argv = flags(checkpoint, str(collection), "--output", str(out), "--chunk_images", "2")
    # Started from another folder: the printed command must work from there.
    run = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), *argv], cwd=tmp_path,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_rows(out, 2, run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "interrupted after" in last and f"continue with: {sys.executable} {ROOT}" in last
    assert last.endswith("--resume")
    assert out.read_bytes().endswith(b"\n")  # stopped between windows: no torn row
    command = shlex.split(last.split("continue with: ")[1])
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == predict.EXIT_SOME_FAILED, proc.stderr
    names = [r["image"] for r in csv_rows(out)]
    assert len(names) == len(set(names)) == 10  # each image once


def pillow_and_dali_scores(
    checkpoint: Path, collection: Path, tmp_path: Path, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """The collection scored with each loader: the same rows (names, errors) in the
    same order; returns the 8 good images' scores, Pillow's and DALI's."""
    results = {}
    for loader in ("pillow", "dali"):
        out = tmp_path / f"{loader}.jsonl"
        argv = flags(checkpoint, str(collection), "--output", str(out))
        argv[argv.index("--loader") + 1] = loader
        argv[argv.index("--device") + 1] = device
        assert predict.main(argv) == predict.EXIT_SOME_FAILED
        results[loader] = [json.loads(line) for line in out.read_text().splitlines()]
    pillow, dali = results["pillow"], results["dali"]
    assert [(r["image"], r["error"]) for r in pillow] == [(r["image"], r["error"]) for r in dali]
    pairs = [(p["score"], d["score"]) for p, d in zip(pillow, dali, strict=True) if p["score"]]
    assert len(pairs) == 8
    pillow_scores, dali_scores = np.array(pairs).T
    return pillow_scores, dali_scores


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_dali_and_pillow_give_the_same_rows(
    checkpoint: Path, collection: Path, tmp_path: Path
) -> None:
    a, b = pillow_and_dali_scores(checkpoint, collection, tmp_path, "cpu")
    # The decoders and resizers differ by a fraction of a grey level (tests/test_dali.py):
    # the scores by much less than they differ between images.
    assert np.abs(a - b).max() < 0.1 * a.std()


@pytest.mark.slow
def test_torchrun_two_processes_write_one_ordered_file(
    checkpoint: Path, collection: Path, tmp_path: Path
) -> None:
    """Two CPU ranks (gloo) deal the chunks between them and rank 0 writes one file in
    input order, equal to one process with the same batch per process; a --resume of
    it under torchrun ends in the same file."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = tmp_path / "two.csv"
    argv = flags(checkpoint, str(collection), "--chunk_images", "2")
    argv[argv.index("--batch_size") + 1] = "4"  # 2 per rank
    proc = subprocess.run([*cmd, "predict.py", *argv, "--output", str(two)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.exists(), proc.stderr
    assert "10 images scored" not in proc.stderr  # 8 scored, 2 failed: rank 0 speaks once
    assert proc.stderr.count("8 images scored, 2 failed") == 1, proc.stderr
    # One process with the ranks' batch and threads (oneDNN's float rounding depends on both).
    one = tmp_path / "one.csv"
    argv_one = flags(checkpoint, str(collection), "--chunk_images", "2", "--output", str(one))
    proc = subprocess.run([sys.executable, "predict.py", *argv_one], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == predict.EXIT_SOME_FAILED, proc.stderr
    assert two.read_bytes() == one.read_bytes()
    cut = two.read_bytes()[: len(two.read_bytes()) // 2]
    two.write_bytes(cut)
    proc = subprocess.run([*cmd, "predict.py", *argv, "--output", str(two), "--resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "already in the output" in proc.stderr, proc.stderr
    assert two.read_bytes() == one.read_bytes()


@pytest.mark.slow
def test_a_closed_standard_output_stops_quietly(checkpoint: Path, images: list[Path]) -> None:
    """`predict.py ... | head -1`: no traceback when the reader goes away."""
    run = subprocess.Popen([sys.executable, "predict.py", *flags(checkpoint, *map(str, images * 3))],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert run.stdout.readline()
    run.stdout.close()
    _, err = run.communicate(timeout=300)
    assert run.returncode == predict.EXIT_BROKEN_PIPE, err
    assert b"Traceback" not in err and b"Exception ignored" not in err


@pytest.mark.slow
def test_rank_0_stopping_early_releases_the_other_ranks(
    checkpoint: Path, images: list[Path]
) -> None:
    """`torchrun ... predict.py ... | head -1`: rank 0 stops on the closed pipe; the other
    rank, waiting for its next chunk, ends with one line instead of a traceback."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    argv = flags(checkpoint, *map(str, images * 8), "--chunk_images", "2")
    argv[argv.index("--batch_size") + 1] = "4"  # 2 per rank
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([*cmd, "predict.py", *argv], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert run.stdout.readline()
    run.stdout.close()
    _, err = run.communicate(timeout=300)
    assert run.returncode != 0  # torchrun reports rank 0's exit code 141 as a failure
    assert b"rank 0 stopped; its message says why" in err
    assert b"[rank1]: Traceback" not in err and b"[rank0]: Traceback" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_gpu_dali_and_pillow_score_a_collection_alike(
    checkpoint: Path, collection: Path, tmp_path: Path
) -> None:
    """On CUDA (bf16): the mixed decoder and Pillow give the same rows and close scores."""
    a, b = pillow_and_dali_scores(checkpoint, collection, tmp_path, "cuda")
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() < 0.25 * a.std()  # bf16 and nvJPEG: looser than on the CPU
