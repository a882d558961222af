"""Tests for hyperiqa.run_folder (and the atomic writes it uses): refusing to
overwrite a run, clearing an old run, recording epochs, and the run logger."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from hyperiqa import atomic as rd
from hyperiqa.atomic import WriteError, save_torch_atomic, write_json_atomic, write_json_output
from hyperiqa.errors import UserError
from hyperiqa.history import EpochRecord
from hyperiqa.run_folder import RunFolder, Start, epoch_checkpoint, run_logger

TIMESTAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"


def _listing(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# -- atomic writes --------------------------------------------------------------------------


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    obj = {"epochs": [{"epoch": 1, "val_srcc": 0.9, "val_plcc": None}]}
    write_json_atomic(path, obj)
    assert json.loads(path.read_text()) == obj
    assert path.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_json_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_write_json_output_creates_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "scores.json"
    write_json_output(path, {"srcc": 0.9}, "--output")
    assert json.loads(path.read_text()) == {"srcc": 0.9}


def test_write_json_output_names_the_flag_when_its_folder_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError, match=r"^cannot create the folder of --json .*a_file/x\.json: "):
        write_json_output(blocker / "x.json", {}, "--json")
    assert blocker.read_text() == "not a folder"


def test_write_json_rejects_nan_and_keeps_old(tmp_path: Path) -> None:
    # NaN is not JSON: it must not reach the file (null stands for "undefined").
    path = tmp_path / "m.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_failed_replace_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"epoch": 1})
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rd.os, "replace", boom)
    with pytest.raises(WriteError) as exc:
        write_json_atomic(path, {"epoch": 2})
    assert isinstance(exc.value, UserError)
    assert str(path) in str(exc.value)
    assert "No space left on device" in str(exc.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # temp file cleaned up


def test_failed_write_midway_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "best_model.pkl"
    save_torch_atomic(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(WriteError, match=r"best_model\.pkl"):
        save_torch_atomic(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pkl"]


def test_failed_fsync_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "args.json"
    write_json_atomic(path, {"lr": 2e-5})
    before = path.read_bytes()

    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(rd.os, "fsync", fail)
    with pytest.raises(WriteError, match=r"args\.json"):
        write_json_atomic(path, {"lr": 1e-4})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["args.json"]


def test_write_into_missing_folder_is_a_write_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "m.json"
    with pytest.raises(WriteError) as exc:
        write_json_atomic(path, {})
    assert str(path) in str(exc.value)


def test_save_torch_atomic_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "best_model.pkl"
    state = {"a.weight": torch.randn(4, 3), "b.bias": torch.arange(5), "step": 7}
    save_torch_atomic(path, state)
    back = torch.load(path, weights_only=True)
    assert back.keys() == state.keys()
    assert torch.equal(back["a.weight"], state["a.weight"])
    assert torch.equal(back["b.bias"], state["b.bias"])
    assert back["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pkl"]


# -- RunFolder ------------------------------------------------------------------------------------


def _fill_run(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("args.json", "metrics.json"):
        (folder / name).write_text("{}\n")
    for name in ("best_model.pkl", "resume_state.pt", "epoch_1.pkl", "epoch_12.pkl"):
        (folder / name).write_bytes(b"weights")
    (folder / "train.log").write_text("2024-01-01 00:00:00 hello\n")


def folder_of(path: Path, epochs: int = 3, **kw: bool) -> RunFolder:
    return RunFolder(path, epochs=epochs, **kw)


def open_new(path: Path, overwrite: bool = False) -> RunFolder:
    run = folder_of(path)
    assert run.open({}, {}, [], resume=False, overwrite=overwrite) is Start.NEW
    return run


def test_holds_run(tmp_path: Path) -> None:
    run = folder_of(tmp_path / "run")
    assert not run.holds_run()  # folder missing
    run.path.mkdir()
    assert not run.holds_run()
    (run.path / "train.log").write_text("x")
    (run.path / "notes.txt").write_text("x")
    assert not run.holds_run()  # a log alone is no run
    for marker in ("args.json", "metrics.json", "best_model.pkl", "resume_state.pt"):
        other = folder_of(tmp_path / marker)
        other.path.mkdir()
        (other.path / marker).write_text("x")
        assert other.holds_run(), marker


def test_refuse_existing_names_both_flags_and_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _fill_run(folder)
    (folder / "notes.txt").write_text("mine")
    before = _listing(folder)
    with pytest.raises(UserError) as exc:
        open_new(folder)
    message = str(exc.value)
    assert "--resume" in message and "--overwrite" in message
    assert str(folder) in message
    assert _listing(folder) == before


def test_refuse_existing_does_not_offer_resume_for_a_finished_run(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"completed": True, "epochs": [{}]}))
    with pytest.raises(UserError) as exc:
        open_new(folder)
    message = str(exc.value)
    assert "holds a finished run" in message and "--overwrite" in message
    assert "--resume" not in message  # it would only answer "already complete"


def test_refuse_existing_passes_on_empty_or_missing(tmp_path: Path) -> None:
    open_new(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    open_new(tmp_path / "empty")


def test_clear_previous_run_removes_only_run_files(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _fill_run(folder)
    keep = {
        "notes.txt": b"mine",
        "epoch_notes.txt": b"not a checkpoint",
        "best_model.pkl.bak": b"backup",
        "my_epoch_1.pkl": b"other",
    }
    for name, data in keep.items():
        (folder / name).write_bytes(data)
    (folder / "plots").mkdir()
    (folder / "plots" / "args.json").write_text("{}")
    run = open_new(folder, overwrite=True)
    run.begin(Start.NEW, {"lr": 1}, {}, None)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*keep, "plots", "args.json", "data.json"]
    )
    for name, data in keep.items():
        assert (folder / name).read_bytes() == data
    assert (folder / "plots" / "args.json").exists()


def test_claim_creates_the_folder_and_removes_it_after_a_failed_start(tmp_path: Path) -> None:
    run = folder_of(tmp_path / "a" / "b" / "run")
    with run.claim():
        assert run.path.is_dir()
    with run.claim():  # existing folder: fine
        pass
    other = folder_of(tmp_path / "c")
    with pytest.raises(UserError), other.claim():
        raise UserError("a bad image")
    assert not other.path.exists()  # a failed start leaves nothing


def test_claim_under_a_file_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    run = folder_of(tmp_path / "afile" / "run")
    with pytest.raises(WriteError) as exc, run.claim():
        pass
    assert str(run.path) in str(exc.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_check_writable_read_only_parent(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(WriteError), folder_of(parent / "run").claim():
            pass
    finally:
        parent.chmod(0o700)


def test_run_dir_json_and_save(tmp_path: Path) -> None:
    run = folder_of(tmp_path)
    run.write_json("metrics.json", {"epochs": []})
    assert run.read_json("metrics.json") == {"epochs": []}
    run.save(epoch_checkpoint(3), {"x": torch.ones(1)})
    assert (tmp_path / "epoch_3.pkl").is_file()


def _record(epoch: int, val_srcc: float | None = 0.5) -> EpochRecord:
    return EpochRecord(
        epoch=epoch, train_loss=1.0, train_srcc=0.1, lr_backbone=1e-4, lr_hypernet=1e-3,
        train_patches=4, train_seconds=1.0, train_patches_per_s=4.0, val_srcc=val_srcc,
        val_plcc=val_srcc, epoch_seconds=1.5,
    )  # fmt: skip


def _states(weight: float) -> dict:
    return {
        "model": {"w": torch.full((2,), weight)},
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
        "torch_rng": torch.get_rng_state(),
    }


def test_record_writes_best_epoch_files_and_a_resume_state_but_after_the_last(
    tmp_path: Path,
) -> None:
    run = folder_of(tmp_path, epochs=2, save_all_epochs=True)
    run.record(_record(1), is_best=True, states=lambda: _states(1.0))
    assert torch.load(tmp_path / "best_model.pkl")["w"].tolist() == [1.0, 1.0]
    assert (tmp_path / "epoch_1.pkl").is_file() and (tmp_path / "resume_state.pt").is_file()
    saved = torch.load(tmp_path / "resume_state.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["best"]["epoch"] == 1 and len(saved["epochs"]) == 1
    run.record(_record(2, val_srcc=0.1), is_best=False, states=lambda: _states(2.0))
    assert torch.load(tmp_path / "best_model.pkl")["w"].tolist() == [1.0, 1.0]  # not better
    assert torch.load(tmp_path / "epoch_2.pkl")["w"].tolist() == [2.0, 2.0]
    # The last epoch writes no resume state: it would outlive the run.
    assert torch.load(tmp_path / "resume_state.pt", weights_only=True)["epoch"] == 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and metrics["completed"] is False
    run.finish({})
    assert not (tmp_path / "resume_state.pt").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["completed"] is True


def test_a_rank_that_does_not_write_keeps_the_history_only(tmp_path: Path) -> None:
    run = folder_of(tmp_path / "r", epochs=2, writes=False)
    with run.claim():
        run.begin(Start.NEW, {}, {}, None)
        run.record(_record(1), is_best=True, states=lambda: pytest.fail("states asked for"))
        run.finish({})
    assert run.history.epoch == 1 and run.history.completed
    assert not (tmp_path / "r").exists()


def test_read_json_errors(tmp_path: Path) -> None:
    run = folder_of(tmp_path)
    with pytest.raises(UserError, match="missing"):
        run.read_json("args.json")
    (tmp_path / "args.json").write_text("{broken")
    with pytest.raises(UserError) as exc:
        run.read_json("args.json")
    assert str(tmp_path / "args.json") in str(exc.value)


def test_epoch_checkpoint_name() -> None:
    assert epoch_checkpoint(1) == "epoch_1.pkl"
    assert epoch_checkpoint(16) == "epoch_16.pkl"


# -- logger -------------------------------------------------------------------------------------


def test_run_logger_writes_and_echoes(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    echoed: list[str] = []
    with run_logger(log, echo=echoed.append) as logger:
        logger.info("epoch 1 started")
        logger.info("epoch 1 srcc %.4f", 0.91234)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and echoed == lines
    assert re.fullmatch(TIMESTAMP + r" epoch 1 started", lines[0])
    assert re.fullmatch(TIMESTAMP + r" epoch 1 srcc 0\.9123", lines[1])
    assert not logger.handlers  # closed and detached on exit


def test_run_logger_appends(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    with run_logger(log, echo=lambda _: None) as logger:
        logger.info("first run")
    with run_logger(log, echo=lambda _: None) as logger:
        logger.info("resumed")
    text = log.read_text()
    assert "first run" in text and "resumed" in text


def test_run_logger_without_file_echoes(capsys: pytest.CaptureFixture[str]) -> None:
    with run_logger(None) as logger:
        logger.info("console only")
    out = capsys.readouterr().out
    assert re.fullmatch(TIMESTAMP + r" console only\n", out)


def test_run_logger_does_not_leak_between_runs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    with run_logger(a, echo=lambda _: None) as la:
        la.info("to a")
    with run_logger(b, echo=lambda _: None) as lb:
        lb.info("to b")
    assert "to b" not in a.read_text()
    assert "to a" not in b.read_text()


def test_run_logger_unwritable_path_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "train.log"
    with pytest.raises(WriteError) as exc, run_logger(bad, echo=lambda _: None):
        pass
    assert str(bad) in str(exc.value)


def test_run_logger_failed_open_leaves_no_handler(tmp_path: Path) -> None:
    import logging

    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "train.log"
    with pytest.raises(WriteError), run_logger(bad, echo=lambda _: None):
        pass
    name = f"hyperiqa.run.{id(bad)}"
    assert not logging.getLogger(name).handlers


def test_atomic_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "metrics.json", {})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = (tmp_path / "metrics.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644


def test_a_folder_that_cannot_be_opened_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writable but not readable (mode 0300; root ignores modes, so the open is made to fail)."""
    run = folder_of(tmp_path / "run")
    (tmp_path / "run").mkdir()
    real_open = os.open

    def refuse_directories(path, flags, *args):
        if flags & os.O_DIRECTORY:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_directories)
    with (
        pytest.raises(WriteError, match=r"cannot use run folder .*run: Permission denied"),
        run.claim(),
    ):
        pass
