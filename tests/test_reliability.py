"""Reliability, round 2: a run folder that can't be lost or mixed, loaders that
agree on every image the check accepts, no code run from a pickle, and one
clear line (never a traceback) for every hostile input below."""

from __future__ import annotations

import json
import os
import re
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

import evaluate
import predict
import train
from hyperiqa import fit as trainer_module
from hyperiqa.data import load_samples
from hyperiqa.errors import UserError
from pipelines.images import check_image
from tests.conftest import (
    ROOT,
    assert_clean_error,
    dataset_fixtures,
    read_json,
    run_cli,
    tiny_train_args,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


good, data = dataset_fixtures(6)


def args_for(data: Path, run: Path, *extra: str, epochs: int = 2) -> list[str]:
    args = tiny_train_args(data, run, *extra)
    args[args.index("--epochs") + 1] = str(epochs)
    return args


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def unfinished(good: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 3-epoch run stopped after epoch 2 (as Ctrl-C leaves it): resumable."""
    run = tmp_path_factory.mktemp("unfinished") / "run"
    asked = iter([False, True])  # the stop is agreed on after epoch 1 no, after epoch 2 yes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module.Trainer, "stop_agreed", lambda _self: next(asked))
        assert train.main(args_for(good, run, epochs=3)) == 130
    assert (run / "resume_state.pt").is_file()
    assert [e["epoch"] for e in read_json(run / "metrics.json")["epochs"]] == [1, 2]
    return run


def test_best_model_deleted_during_the_run_is_one_line_and_keeps_the_rest(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = read_json(data / "demo.json")
    (data / "demo.json").write_text(json.dumps(entries[:4]))
    (data / "test.json").write_text(json.dumps(entries[4:]))
    run = tmp_path / "run"
    real_record = train.RunFolder.record

    def record_then_delete(self, record, is_best, states) -> None:
        real_record(self, record, is_best, states)
        if record.epoch == 2:  # someone cleans up while the test set is about to be scored
            (run / "best_model.pkl").unlink()

    monkeypatch.setattr(train.RunFolder, "record", record_then_delete)
    args = args_for(data, run, "--test_json", str(data / "test.json"), "--val_split", "0.5")
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "best_model.pkl not found" in err and "other files" in err and "intact" in err
    assert [e["epoch"] for e in read_json(run / "metrics.json")["epochs"]] == [1, 2]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda s: s.update(torch_rng=torch.zeros(3)), "RNG state must be a torch.ByteTensor"),
        (lambda s: s["model"].popitem(), "Missing key(s) in state_dict"),
        (lambda s: s["optimizer"].update(param_groups=[]), "different number of parameter groups"),
    ],
)
def test_a_resume_state_that_does_not_fit_is_one_line(
    tamper, reason: str, good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    state = torch.load(run / "resume_state.pt", weights_only=True)
    tamper(state)
    torch.save(state, run / "resume_state.pt")
    before = snapshot(run)
    assert train.main([*args_of(run, good), "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "resume_state.pt does not fit this run" in err and reason in err
    assert snapshot(run) == before  # refused before the folder changed


def args_of(run: Path, data: Path, *extra: str) -> list[str]:
    """The flags of the unfinished run (3 epochs), on ``data``, in ``run``."""
    return args_for(data, run, *extra, epochs=3)


# -- 1. --resume never wipes a run --------------------------------------------------------------


@pytest.mark.parametrize("lost", ["resume_state.pt", "metrics.json"])
@pytest.mark.slow
def test_resume_without_its_state_is_refused_and_deletes_nothing(
    lost: str, good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    if lost == "metrics.json":  # a finished run whose metrics.json the user deleted
        (run / "resume_state.pt").unlink()
    (run / lost).unlink(missing_ok=True)
    before = snapshot(run)
    assert train.main(args_of(run, good, "--resume")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be resumed; nothing was changed" in err, err
    assert "--overwrite" in err
    assert snapshot(run) == before


def test_resume_without_best_model_is_refused(
    good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    (run / "best_model.pkl").unlink()
    before = snapshot(run)
    assert train.main(args_of(run, good, "--resume")) == 1
    assert re.search(r"best_model.pkl \(epoch \d\) is missing", capsys.readouterr().err)
    assert snapshot(run) == before


def test_a_planted_resume_state_runs_no_code(
    good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    torch.save({"epoch": 1, "payload": Payload()}, run / "resume_state.pt")
    assert train.main(args_of(run, good, "--resume")) == 1
    err = capsys.readouterr().err
    assert "is not a resume state written by train.py (it holds pickled objects" in err
    assert "weights_only" not in err  # no advice to load it unsafely
    assert not marker.exists()


# -- 2. one process per run folder ----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused_at_once(good: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "train.py", *args_for(good, run, epochs=30)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "args.json").exists():  # the first run is under way
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        start = time.monotonic()
        second = run_cli("train.py", *args_for(good, run, "--lr", "1e-4", "--overwrite"))
        assert time.monotonic() - start < 30  # refused at once, not after a training run
        assert_clean_error(second, f"{run} is in use by another run (process {first.pid})")
        assert read_json(run / "args.json")["lr"] == 2e-5  # the first run's folder, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The OS released the dead process's lock: the folder can be taken over.
    proc = run_cli("train.py", *args_for(good, run, "--overwrite", epochs=1))
    assert proc.returncode == 0, proc.stderr


# -- 3. resume on other data --------------------------------------------------------------------


def test_resume_on_changed_data_is_refused_naming_the_set(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert train.main(args_for(data, run, epochs=1)) == 0
    state = {"epoch": 1, "best": None, "epochs": []}
    torch.save(state, run / "resume_state.pt")
    metrics = read_json(run / "metrics.json") | {"completed": False}
    (run / "metrics.json").write_text(json.dumps(metrics))
    entries = read_json(data / "demo.json")
    (data / "demo.json").write_text(json.dumps(entries + entries[:0] + [
        {"image": entries[0]["image"].replace(".jpg", "_copy.jpg"), "score": 1.0}
    ]))  # fmt: skip
    shutil.copy(data / entries[0]["image"], data / entries[0]["image"].replace(".jpg", "_copy.jpg"))
    before = snapshot(run)
    assert train.main(args_for(data, run, "--resume", epochs=1)) == 1
    err = capsys.readouterr().err
    assert "--resume: the data differs from the run's" in err and "images" in err, err
    assert snapshot(run) == before


def test_resume_with_a_changed_score_is_refused(
    data: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    args = read_json(run / "args.json")  # the same run, on a copy of its dataset
    args.update(dataset_root=str(data), train_json=str(data / "demo.json"))
    (run / "args.json").write_text(json.dumps(args))
    entries = read_json(data / "demo.json")
    entries[0]["score"] += 1
    (data / "demo.json").write_text(json.dumps(entries))
    assert train.main(args_of(run, data, "--resume")) == 1
    assert "names, scores or file sizes differ" in capsys.readouterr().err


# -- 4. best_model.pkl is never missing or stale without a word ---------------------------------


def test_a_validation_set_that_cannot_rank_is_refused_before_training(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    entries = read_json(data / "demo.json")
    (data / "demo.json").write_text(json.dumps([e | {"score": 50.0} for e in entries]))
    assert train.main(args_for(data, tmp_path / "run")) == 1
    assert "cannot rank images, so it cannot choose best_model.pkl" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_undefined_val_srcc_every_epoch_is_said(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(trainer_module, "srcc", lambda *_args: None)  # constant predictions
    run = tmp_path / "run"
    assert train.main(args_for(good, run)) == 0
    assert "val SRCC was undefined in every epoch" in (run / "train.log").read_text()
    assert read_json(run / "metrics.json")["best"]["epoch"] == 1
    assert (run / "best_model.pkl").is_file()


# -- 5. no tool writes over its own inputs -------------------------------------------------------


@pytest.mark.parametrize("target", ["checkpoint", "test_json", "image"])
def test_evaluate_refuses_to_write_over_its_inputs(
    target: str, good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "best.pkl"
    shutil.copy(unfinished / "best_model.pkl", ckpt)
    test_json = tmp_path / "test.json"
    shutil.copy(good / "demo.json", test_json)
    image = good / read_json(test_json)[0]["image"]
    inputs = {"checkpoint": ckpt, "test_json": test_json, "image": image}
    before = {k: p.read_bytes() for k, p in inputs.items()}
    argv = ["--checkpoint", str(ckpt), "--test_json", str(test_json), "--dataset_root", str(good),
            "--resize", "240x256", "--device", "cpu", "--output", str(inputs[target])]  # fmt: skip
    assert evaluate.main(argv) == 1
    assert f"would overwrite the input {inputs[target]}" in capsys.readouterr().err
    assert {k: p.read_bytes() for k, p in inputs.items()} == before


# -- 7. every image the check accepts, both loaders see alike -----------------------------------


def _png16(path: Path, rgb: np.ndarray) -> None:
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        (
            "grey16.png",
            lambda p, a: Image.fromarray(a).save(p),
            "more than 8-bit image (mode I;16)",
        ),
        (
            "grey16.tif",
            lambda p, a: Image.fromarray(a).save(p),
            "more than 8-bit image (mode I;16)",
        ),
        ("float.tif", lambda p, a: Image.fromarray(a / 65535.0).save(p), "floating-point image"),
        ("int32.tif", lambda p, a: Image.fromarray(a.astype(np.int32)).save(p), "mode I)"),
    ],
)
def test_high_bit_depth_grey_and_float_images_are_rejected(
    name: str, make, reason: str, tmp_path: Path
) -> None:
    a16 = (np.random.default_rng(0).random((60, 70)) * 65535).astype(np.uint16)
    path = tmp_path / name
    make(path, a16.astype(np.float32) if name == "float.tif" else a16)
    assert reason in check_image(path)
    assert "convert it to 8 bits per channel" in check_image(path)


def test_a_48_bit_png_is_rejected_too(tmp_path: Path) -> None:
    """Pillow opens it as 8-bit RGB keeping the high byte, DALI rounds: 0.3 grey
    levels apart on average, the edge of the loaders' tolerance. Rejected like
    the other deep images, with the same advice."""
    path = tmp_path / "rgb48.png"
    y, x = np.mgrid[0:60, 0:70]
    waves = [0.5 + 0.45 * np.sin(x / (5 + c) + c) * np.cos(y / (7 + c)) for c in range(3)]
    _png16(path, (np.stack(waves, axis=-1) * 65535).astype(np.uint16))
    assert Image.open(path).mode == "RGB"  # what Pillow claims
    assert check_image(path) == "16-bit-per-channel PNG; convert it to 8 bits per channel"


# -- 8. one image, two spellings ------------------------------------------------------------------


def test_one_file_under_two_names_is_a_duplicate(data: Path) -> None:
    entries = read_json(data / "demo.json")
    first = entries[0]["image"]  # images/xxx.jpg
    (data / "link.jpg").symlink_to(data / first)
    for spelling in (f"./{first}", f"images/../{first}", "link.jpg"):
        (data / "dup.json").write_text(json.dumps([*entries, {"image": spelling, "score": 1.0}]))
        with pytest.raises(UserError, match=rf"duplicate of entry 0 \({first}\), the same file"):
            load_samples(data / "dup.json", data)


def test_a_val_json_image_spelled_otherwise_is_a_leak(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    entries = read_json(data / "demo.json")
    (data / "val.json").write_text(json.dumps([
        {"image": f"./{entries[0]['image']}", "score": 1.0},
        {"image": entries[1]["image"].replace("images/", "images/../images/"), "score": 2.0},
    ]))  # fmt: skip
    (data / "train.json").write_text(json.dumps(entries))
    args = args_for(data, tmp_path / "run")
    i = args.index("--val_split")
    del args[i : i + 2]
    args[args.index("--train_json") + 1] = str(data / "train.json")
    assert train.main([*args, "--val_json", str(data / "val.json")]) == 1
    assert "2 images of the val set are also in the train set" in capsys.readouterr().err


# -- 11, 12. hostile inputs: one line each --------------------------------------------------------


def _cli_error(*argv: str) -> str:
    """stderr of a command that must fail cleanly: one line, or the image check's list."""
    proc = run_cli(*argv)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or "usage:" in proc.stderr or "images are unusable:" in lines[0], lines
    return proc.stderr


@pytest.mark.slow
def test_hostile_flags_and_files_are_one_line_each(good: Path, tmp_path: Path) -> None:
    long = "x" * 300
    base = args_for(good, tmp_path / "run")
    cases = {
        "name too long": ("train.py", *base[:-1], "--checkpoint_dir", str(tmp_path / long)),
        "seed": ("train.py", *base, "--seed", str(2**64)),
        "resize": ("train.py", *base, "--resize", "30000x30000"),
    }
    assert "File name too long" in _cli_error(*cases["name too long"])
    assert "--seed: must be at most 2**64 - 1" in _cli_error(*cases["seed"])
    assert "--resize: sides must be at most 4096" in _cli_error(*cases["resize"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"image": "a.jpg", "score": ' + "9" * 400 + "}]", "is too large"),
        ('[{"image": "a.jpg", "score": ' + "9" * 5000 + "}]", "malformed metadata JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('[{"image": "' + "y" * 300 + '.jpg", "score": 1}]', "File name too long"),
    ],
)
@pytest.mark.slow
def test_hostile_metadata_is_one_line(
    content: str, message: str, good: Path, tmp_path: Path
) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(content)
    args = args_for(good, tmp_path / "run")
    args[args.index("--train_json") + 1] = str(meta)
    args[args.index("--val_split") + 1] = "0"  # one image: nothing to hold out
    assert message in _cli_error("train.py", *args)


@pytest.mark.slow
def test_a_directory_instead_of_an_image_or_a_json(data: Path, tmp_path: Path) -> None:
    image = data / read_json(data / "demo.json")[0]["image"]
    image.unlink()
    image.mkdir()
    err = _cli_error("-m", "hyperiqa.check_data", "--train_json", str(data / "demo.json"),
                     "--dataset_root", str(data))  # fmt: skip
    assert f"{image}: is a directory" in err
    args = args_for(data, tmp_path / "run")
    args[args.index("--train_json") + 1] = str(data)
    assert f"metadata JSON {data} is a directory" in _cli_error("train.py", *args)


@pytest.mark.slow
def test_wrong_files_given_as_checkpoints_say_what_they_are(
    good: Path, unfinished: Path, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    image = good / read_json(good / "demo.json")[0]["image"]
    err = _cli_error("predict.py", "--checkpoint", str(text), "--device", "cpu", str(image))
    assert f"checkpoint {text} is not a PyTorch file" in err
    err = _cli_error("predict.py", "--checkpoint", str(tmp_path / "gone.pkl"), str(image))
    assert f"checkpoint not found: {tmp_path / 'gone.pkl'}" in err and "init" not in err
    args = args_for(
        good, tmp_path / "run", "--init_checkpoint", str(unfinished / "resume_state.pt")
    )
    err = _cli_error("train.py", *args)
    assert "is a training run's resume state, not a model" in err and "best_model.pkl" in err


@pytest.mark.parametrize("tool", [evaluate, predict])
def test_ctrl_c_in_evaluate_and_predict_is_one_line(
    tool, good: Path, unfinished: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    # predict.py scores through score_collection: interrupted before it began writing.
    monkeypatch.setattr(
        tool, "score_files" if tool is evaluate else "score_collection", interrupted
    )
    image = good / read_json(good / "demo.json")[0]["image"]
    argv = ["--checkpoint", str(unfinished / "best_model.pkl"), "--device", "cpu"]
    argv += (
        ["--test_json", str(good / "demo.json"), "--dataset_root", str(good)]
        if tool is evaluate
        else [str(image)]
    )
    assert tool.main(argv) == 130
    err = capsys.readouterr().err
    assert err.endswith("interrupted; nothing was written\n") and "Traceback" not in err


def test_evaluate_checks_every_image_first(data: Path, unfinished: Path, capsys) -> None:
    images = [data / e["image"] for e in read_json(data / "demo.json")]
    images[0].unlink()
    deep = Image.fromarray((np.arange(60 * 70, dtype=np.uint16) * 9).reshape(60, 70))
    deep.save(images[1], format="PNG")  # a 16-bit PNG under a .jpg name
    argv = ["--checkpoint", str(unfinished / "best_model.pkl"), "--device", "cpu",
            "--test_json", str(data / "demo.json"), "--dataset_root", str(data)]  # fmt: skip
    assert evaluate.main(argv) == 1
    err = capsys.readouterr().err
    assert "2 of 6 images are unusable" in err and "file not found" in err
    assert "more than 8-bit image (mode I;16)" in err


# -- hostile inputs beyond the first list --------------------------------------------------------------


@pytest.mark.slow
def test_a_run_killed_while_saving_epoch_1_resumes_from_the_start(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No resume state yet: epoch 1's files are recomputed identically, not refused."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert train.main(args_for(good, reference)) == 0
    assert train.main(args_for(good, run)) == 0
    metrics = read_json(run / "metrics.json")  # the state a kill before resume_state.pt leaves
    metrics.update(
        completed=False, epochs=metrics["epochs"][:1], best=metrics["epochs"][0] and metrics["best"]
    )
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / ".resume_state.pt.x1y2.tmp").write_bytes(b"half a file")
    capsys.readouterr()
    assert train.main(args_for(good, run, "--resume")) == 0
    assert "from the start: it stopped before or while saving epoch 1" in capsys.readouterr().out
    strip = {"epoch_seconds", "train_seconds", "train_patches_per_s"}
    rows = [[{k: v for k, v in e.items() if k not in strip} for e in read_json(r / "metrics.json")["epochs"]] for r in (run, reference)]  # fmt: skip
    assert rows[0] == rows[1]
    assert not list(run.glob(".*.tmp"))


def test_ctrl_c_during_the_image_check_is_a_stop_not_a_bad_image(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import pipelines.images

    opened = pipelines.images.Image.open

    def open_then_ctrl_c(*args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGINT)  # arrives inside check_image's broad except
        return opened(*args, **kwargs)

    monkeypatch.setattr(pipelines.images.Image, "open", open_then_ctrl_c)
    assert train.main(args_for(good, tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert "interrupted during setup" in err and "cannot decode" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["data.json", "val_images.json"])
def test_an_input_inside_the_run_folder_is_never_written_over(
    name: str, good: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(good / "demo.json", run / name)
    args = args_for(good, run, "--overwrite")
    args[args.index("--train_json") + 1] = str(run / name)
    assert train.main(args) == 1
    assert f"{run / name} is an input of this run" in capsys.readouterr().err
    assert (run / name).read_bytes() == (good / "demo.json").read_bytes()


def test_init_checkpoint_inside_the_run_folder_is_not_cleared_away(
    good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    args = args_of(run, good, "--overwrite", "--init_checkpoint", str(run / "best_model.pkl"))
    assert train.main(args) == 1
    assert "is an input of this run" in capsys.readouterr().err
    assert (run / "best_model.pkl").is_file()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("args.json", "[]"),
        ("data.json", "[]"),
        ("metrics.json", '{"epochs": 5}'),
        ("data.json", '{"train": null, "val": 5}'),
    ],
)
def test_run_files_of_the_wrong_shape_are_one_line(
    name: str, content: str, good: Path, unfinished: Path, tmp_path: Path, capsys
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    (run / name).write_text(content)
    before = snapshot(run)
    assert train.main(args_of(run, good, "--resume")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and name in err, err
    assert snapshot(run) == before


@pytest.mark.parametrize("state", [[1, 2, 3], {"res.conv1.weight": torch.zeros(1)}])
def test_a_resume_state_of_the_wrong_shape_is_refused_before_anything_changes(
    state: object, good: Path, unfinished: Path, tmp_path: Path, capsys
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    torch.save(state, run / "resume_state.pt")
    before = snapshot(run)
    assert train.main(args_of(run, good, "--resume")) == 1
    assert "is not a resume state written by train.py" in capsys.readouterr().err
    assert snapshot(run) == before


def test_without_data_json_a_resume_is_refused(
    good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    (run / "data.json").unlink()
    assert train.main(args_of(run, good, "--resume")) == 1
    assert "data.json is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_odd_file_names_and_kinds_in_the_metadata(data: Path, tmp_path: Path) -> None:
    entries = read_json(data / "demo.json")
    os.mkfifo(data / "images" / "fifo.jpg")  # opening it would wait forever
    (data / "images" / "loop.jpg").symlink_to(data / "images" / "loop.jpg")
    (data / "demo.json").write_text(json.dumps([
        *entries, {"image": "images/fifo.jpg", "score": 1}, {"image": "images/loop.jpg", "score": 2}
    ]))  # fmt: skip
    err = _cli_error("-m", "hyperiqa.check_data", "--train_json", str(data / "demo.json"),
                     "--dataset_root", str(data))  # fmt: skip
    assert "fifo.jpg: not a regular file" in err and "loop.jpg: Too many levels" in err
    (data / "nul.json").write_text(json.dumps([{"image": "a\u0000b.jpg", "score": 1}]))
    with pytest.raises(UserError, match="contains a NUL character"):
        load_samples(data / "nul.json", data)


def test_a_val_split_that_holds_out_nothing_is_refused(good: Path, tmp_path: Path, capsys) -> None:
    args = args_for(good, tmp_path / "run")
    args[args.index("--val_split") + 1] = "0.01"
    assert train.main(args) == 1
    assert "val_split 0.01 of 6 images holds out no image" in capsys.readouterr().err


def test_evaluate_refuses_to_write_over_the_run_args_beside_the_checkpoint(
    good: Path, unfinished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    before = (run / "args.json").read_bytes()
    argv = ["--checkpoint", str(run / "best_model.pkl"), "--test_json", str(good / "demo.json"),
            "--dataset_root", str(good), "--device", "cpu", "--output", str(run / "args.json")]  # fmt: skip
    assert evaluate.main(argv) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert (run / "args.json").read_bytes() == before


@pytest.mark.parametrize(
    ("args_json", "note"),
    [
        ("[1]", "not a run's args.json"),
        ("{", "ignoring"),
        ('{"resize": "abc"}', "resize 'abc'"),
        ('{"resize": "10x10"}', "smaller than the 224-pixel crops"),
        ('{"val_patch_num": -3}', "val_patch_num -3"),
        # The values of a run's file pass the checks of the flags they stand for:
        # 100000000 crops would ask for 13.7 TiB (the flag's cap is 250).
        ('{"val_patch_num": 100000000}', "must be at most 250"),
        ('{"val_patch_num": 25.0}', "val_patch_num 25.0"),
        ('{"val_patch_num": true}', "val_patch_num True"),
        ('{"resize": "384x999999"}', "sides must be at most 4096"),
        ('{"resize": [384, 512]}', "resize [384, 512]"),
    ],
)
def test_odd_args_json_beside_a_checkpoint_is_noted_and_ignored(
    args_json: str, note: str, unfinished: Path, tmp_path: Path
) -> None:
    from hyperiqa.scorer import crop_settings

    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(unfinished / "best_model.pkl", folder)
    (folder / "args.json").write_text(args_json)
    notes: list[str] = []
    assert crop_settings(folder / "best_model.pkl", echo=notes.append) == ((384, 512), 25)
    assert any(note in n for n in notes), notes
