"""Bad input ends in one clear line naming the culprit, with nothing already written lost.

A few cases run train.py as a real process (proving that no traceback reaches
the terminal); the rest call ``train.main`` in-process, which is much faster.
Odd but valid images (grayscale, CMYK, PNG, EXIF-rotated, tiny, MPO) must train.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import torch
from PIL import Image

import hyperiqa.run_folder
import hyperiqa.runtime
import train
from hyperiqa import check_data
from hyperiqa.demo_data import natural_image
from hyperiqa.run_folder import shell_path
from pipelines.images import load_rgb
from tests.conftest import (
    FINISHED_FILES,
    ROOT,
    assert_clean_error,
    dataset_fixtures,
    read_json,
    run_cli,
)
from tests.conftest import tiny_train_args as base_args

RESUME = "resume_state.pt"


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The in-process runs here are tiny; on a shared 2-core machine one thread
    # beats two spinning OpenMP threads by far.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


good, data = dataset_fixtures(4)


def tiny_args(data: Path, run: Path, *extra: str) -> list[str]:
    """One epoch, 2 train and 2 val images, one patch each."""
    args = base_args(data, run, *extra)
    for flag, value in [("--epochs", "1"), ("--val_split", "0.5"), ("--val_patch_num", "1")]:
        args[args.index(flag) + 1] = value
    return args


def images_of(data: Path) -> list[Path]:
    return [data / e["image"] for e in read_json(data / "demo.json")]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4000))  # no image signature at all


def edit_json(data: Path, change: Callable[[list[dict]], object]) -> None:
    entries = read_json(data / "demo.json")
    result = change(entries)  # edits in place, or returns a new list
    (data / "demo.json").write_text(json.dumps(result if isinstance(result, list) else entries))


# -- as a real process ------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_image_file_cli(data: Path, tmp_path: Path) -> None:
    gone = images_of(data)[1]
    gone.unlink()
    proc = run_cli("train.py", *tiny_args(data, tmp_path / "run"))
    assert_clean_error(proc, "not found", str(gone))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_truncated_jpeg_cli(data: Path, tmp_path: Path) -> None:
    bad = images_of(data)[2]
    truncate(bad)
    proc = run_cli("train.py", *tiny_args(data, tmp_path / "run"))
    assert_clean_error(proc, "1 of 4 images are unusable", str(bad), "truncated")


@pytest.mark.slow
def test_bad_flag_value_cli(data: Path, tmp_path: Path) -> None:
    proc = run_cli("train.py", *tiny_args(data, tmp_path / "run", "--val_split", "1.5"))
    assert proc.returncode == 2
    assert_clean_error(proc, "argument --val_split", "1.5")


@pytest.mark.slow
def test_unwritable_checkpoint_dir_cli(data: Path, tmp_path: Path) -> None:
    # chmod does not stop root; a folder under a regular file stops everyone.
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_cli("train.py", *tiny_args(data, blocker / "run"))
    assert_clean_error(proc, "cannot create run folder", str(blocker / "run"))


@pytest.mark.slow
def test_skip_check_skips_and_a_bad_file_still_fails_cleanly_in_a_worker(
    data: Path, tmp_path: Path
) -> None:
    bad = images_of(data)[0]
    corrupt(bad)
    args = tiny_args(data, tmp_path / "run", "--skip_check", "--num_workers", "1")
    proc = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Not the checker's report: the loader met the file in a decode worker.
    assert "images are unusable" not in proc.stderr
    assert_clean_error(proc, f"cannot decode {bad}", "python -m hyperiqa.check_data")


# -- in-process -------------------------------------------------------------------------------


def no_gpu(reason: str = "needs a machine without CUDA") -> pytest.MarkDecorator:
    return pytest.mark.skipif(torch.cuda.is_available(), reason=reason)


# (id, how to break the dataset, extra flags, what stderr must name)
BAD_DATA: list[tuple[str, Callable[[Path], None], tuple[str, ...], tuple[str, ...]]] = [
    ("corrupt bytes", lambda d: corrupt(images_of(d)[3]), (), ("unusable", "cannot decode")),
    ("empty file", lambda d: images_of(d)[3].write_bytes(b""), (), ("unusable", "cannot decode")),
    (
        "missing score",
        lambda d: edit_json(d, lambda e: e[1].pop("score")),
        (),
        ("entry 1", "missing 'score'"),
    ),
    (
        "NaN score",
        lambda d: (d / "demo.json").write_text(
            (d / "demo.json").read_text().replace('"score": ', '"score": NaN, "was": ', 1)
        ),
        (),
        ("entry 0", "not finite"),
    ),
    (
        "text score",
        lambda d: edit_json(d, lambda e: e[2].update(score="high")),
        (),
        ("entry 2", "'high' is not a number"),
    ),
    ("duplicate image", lambda d: edit_json(d, lambda e: [*e, e[0]]), (), ("entry 4", "duplicate")),
    ("empty list", lambda d: edit_json(d, lambda e: []), (), ("lists no images",)),
    (
        "malformed JSON",
        lambda d: (d / "demo.json").write_text('[{"image": "images/x.jpg", "score": 1.0'),
        (),
        ("malformed metadata JSON", "line 1"),
    ),
    ("missing JSON", lambda d: (d / "demo.json").unlink(), (), ("metadata JSON not found",)),
    ("no train images", lambda d: None, ("--val_split", "0.9"), ("leaves no training images",)),
    ("amp bf16 on CPU", lambda d: None, ("--amp", "bf16"), ("--amp bf16 needs CUDA",)),
    (
        "init checkpoint missing",
        lambda d: None,
        ("--init_checkpoint", "/nonexistent/koniq.pkl"),
        ("/nonexistent/koniq.pkl",),
    ),
]


@pytest.mark.parametrize(("damage", "extra", "needles"), [c[1:] for c in BAD_DATA],
                         ids=[c[0] for c in BAD_DATA])  # fmt: skip
def test_bad_input_is_one_clear_error(
    damage: Callable[[Path], None],
    extra: tuple[str, ...],
    needles: tuple[str, ...],
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    damage(data)
    run = tmp_path / "run"
    assert train.main(tiny_args(data, run, *extra)) == 1
    _out, err = capsys.readouterr()
    assert err.startswith("train.py: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not run.exists() or not any(run.iterdir())  # nothing written


@no_gpu()
def test_cuda_requested_without_a_gpu(data: Path, tmp_path: Path, capsys) -> None:
    assert train.main(tiny_args(data, tmp_path / "run", "--device", "cuda")) == 1
    assert "--device cuda: no CUDA device" in capsys.readouterr().err


def test_dali_not_installed(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hyperiqa.runtime, "dali_available", lambda: False)
    assert train.main(tiny_args(data, tmp_path / "run", "--loader", "dali")) == 1
    err = capsys.readouterr().err
    assert "--loader dali" in err and "pip install nvidia-dali" in err and "--loader pillow" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--batch_size", "0"), ("--resize", "12x"), ("--val_split", "-0.1"), ("--patch_size", "300"),
     ("--lr", "nan"), ("--loader", "opencv"), ("--epochs", "two")],
)  # fmt: skip
def test_bad_flag_value_names_the_flag(
    flag: str, value: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        train.main(tiny_args(data, tmp_path / "run", flag, value))
    assert exit_.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_every_bad_image_is_reported_at_once(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = images_of(data)
    truncate(paths[0])
    corrupt(paths[2])
    assert train.main(tiny_args(data, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "2 of 4 images are unusable" in err
    assert f"{paths[0]}: cannot decode" in err and f"{paths[2]}: cannot decode" in err
    assert str(paths[1]) not in err and str(paths[3]) not in err


# -- odd but valid images ---------------------------------------------------------------------


def write_odd_dataset(root: Path) -> dict[str, Path]:
    """Every kind of valid input the loaders must accept, with scores."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(7)
    files: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw: object) -> None:
        files[name] = root / "images" / name
        img.save(files[name], **kw)

    def base(h: int = 240, w: int = 256) -> Image.Image:
        return natural_image(rng, h, w)

    save("gray.jpg", base().convert("L"), quality=90)
    save("cmyk.jpg", base().convert("CMYK"), quality=90)
    save("rgba.png", base().convert("RGBA"))
    save("palette.png", base().convert("P"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 300x240 (WxH), shown rotated: 240x300
    save("exif_rotated.jpg", base(240, 300), exif=exif, quality=90)
    save("tiny.jpg", base(40, 48), quality=90)  # smaller than the resize target
    img = base()
    save("camera.jpg", img, format="MPO", save_all=True, append_images=[img.rotate(90)])
    entries = [{"image": f"images/{n}", "score": 10.0 + 10 * i} for i, n in enumerate(files)]
    (root / "odd.json").write_text(json.dumps(entries))
    return files


@pytest.mark.slow
def test_odd_but_valid_images_pass_the_check_and_train(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = write_odd_dataset(tmp_path / "odd")
    assert load_rgb(files["exif_rotated.jpg"]).size == (240, 300)  # upright
    json_path = str(tmp_path / "odd" / "odd.json")
    argv = ["--train_json", json_path, "--dataset_root", str(tmp_path / "odd")]
    assert check_data.main([*argv, "--workers", "0"]) == 0
    assert f"{len(files)} images OK" in capsys.readouterr().out

    run = tmp_path / "run"
    args = tiny_args(tmp_path / "odd", run, "--val_split", "0.3")
    args[args.index("--train_json") + 1] = json_path
    assert train.main(args) == 0
    metrics = read_json(run / "metrics.json")
    assert metrics["completed"] and metrics["epochs"][0]["train_patches"] == 5
    assert np.isfinite(metrics["epochs"][0]["train_loss"])


# -- the standalone checker -------------------------------------------------------------------


@pytest.mark.slow
def test_check_data_cli_reports_every_bad_file(data: Path, tmp_path: Path) -> None:
    paths = images_of(data)
    truncate(paths[0])
    corrupt(paths[1])
    paths[2].write_bytes(b"")
    gif = data / "images" / "anim.gif"
    Image.new("RGB", (300, 300)).save(gif)
    edit_json(data, lambda e: [*e, {"image": "images/anim.gif", "score": 5.0}])
    proc = run_cli("-m", "hyperiqa.check_data", "--train_json", str(data / "demo.json"),
                   "--dataset_root", str(data), "--workers", "2")  # fmt: skip
    assert_clean_error(proc, "4 of 5 images are unusable", "truncated", "unsupported format GIF")
    for bad in (paths[0], paths[1], paths[2], gif):
        assert str(bad) in proc.stderr
    assert str(paths[3]) not in proc.stderr


def test_check_data_cli_lists_missing_and_broken_files_in_one_pass(
    data: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = images_of(data)
    paths[0].unlink()
    paths[3].unlink()
    truncate(paths[1])
    paths[2].unlink()
    paths[2].mkdir()  # a folder where an image should be
    argv = ["--train_json", str(data / "demo.json"), "--dataset_root", str(data)]
    assert check_data.main(argv) == 1
    err = capsys.readouterr().err
    assert "4 of 4 images are unusable" in err
    assert f"{paths[0]}: file not found" in err and f"{paths[3]}: file not found" in err
    assert f"{paths[2]}: is a directory" in err and f"{paths[1]}: cannot decode" in err


def test_check_data_accepts_a_good_set(good: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--train_json", str(good / "demo.json"), "--dataset_root", str(good)]
    assert check_data.main(argv) == 0
    assert "4 images OK" in capsys.readouterr().out


# -- failed writes ----------------------------------------------------------------------------


class FillingDisk:
    """A file on a disk that fills up after ``room`` more bytes."""

    def __init__(self, f: IO[bytes], room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.f, name)

    def __enter__(self) -> FillingDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


@pytest.mark.parametrize("failure", ["disk fills mid-write", "rename fails"])
@pytest.mark.slow
def test_full_disk_in_epoch_2_keeps_epoch_1_and_resumes(
    failure: str,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    # No validation: best_model.pkl follows every epoch, so epoch 2 must write it.
    args = tiny_args(data, run, "--epochs", "2", "--val_split", "0")
    os_ = hyperiqa.run_folder.os
    real_fdopen, real_replace = os_.fdopen, os_.replace

    # Once epoch 1 is saved the disk is full: a write stops 1 MB into the file
    # (torch.save's zip writer is then mid-tensor), or the final rename fails.
    def fdopen(fd: int, *a: object, **kw: object) -> object:
        f = real_fdopen(fd, *a, **kw)
        return FillingDisk(f, room=2**20) if (run / RESUME).exists() else f

    def replace(src: object, dst: object) -> None:
        if (run / RESUME).exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    if failure == "disk fills mid-write":
        monkeypatch.setattr(os_, "fdopen", fdopen)
    else:
        monkeypatch.setattr(os_, "replace", replace)
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"could not write {run / 'best_model.pkl'}: No space left on device" in err
    assert f"resume with: {shell_path(Path(sys.executable))} train.py" in err

    # Epoch 1's files are whole: its metrics, and its weights as best model.
    assert [e["epoch"] for e in read_json(run / "metrics.json")["epochs"]] == [1]
    saved = torch.load(run / RESUME, weights_only=False)
    best = torch.load(run / "best_model.pkl", weights_only=True)
    assert saved["epoch"] == 1 and all(torch.equal(best[k], saved["model"][k]) for k in best)
    assert not list(run.glob(".*.tmp"))  # the failed write cleaned up after itself

    # Space is back: the printed advice works.
    monkeypatch.undo()
    assert train.main([*args, "--resume"]) == 0
    assert [e["epoch"] for e in read_json(run / "metrics.json")["epochs"]] == [1, 2]
    assert {p.name for p in run.iterdir()} == FINISHED_FILES


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_for_the_log_is_a_clean_error(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").symlink_to("/dev/full")  # every write: ENOSPC
    assert train.main(tiny_args(data, run)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    assert f"could not write {run / 'train.log'}: No space left on device" in err
