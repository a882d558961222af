"""hyperiqa.atomic.write_all_or_nothing: a group of files replaced together or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyperiqa import atomic
from hyperiqa.atomic import GroupWriteError, write_all_or_nothing


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


# ---------------------------------------------------------------- write_all_or_nothing


@pytest.fixture
def old_group(tmp_path: Path) -> dict[Path, bytes]:
    """Three files of an old split in tmp_path/out, and their new contents."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_train.json").write_bytes(b"old train")
    (out / "a_test.json").write_bytes(b"old test")
    # a_val.json does not exist yet: a failed write must not leave one behind
    return {
        out / "a_train.json": b"new train",
        out / "a_val.json": b"new val",
        out / "a_test.json": b"new test",
    }


def test_group_write_replaces_every_file(old_group: dict[Path, bytes]) -> None:
    write_all_or_nothing(old_group)
    for path, data in old_group.items():
        assert path.read_bytes() == data
    out = next(iter(old_group)).parent
    assert sorted(os.listdir(out)) == ["a_test.json", "a_train.json", "a_val.json"]


def test_group_write_failing_on_the_second_file_replaces_nothing(
    old_group: dict[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = next(iter(old_group)).parent
    before = folder_state(out)
    real_write_temp = atomic._write_temp
    calls = []

    def disk_full_on_second(path: Path, data: bytes) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write_temp(path, data)

    monkeypatch.setattr(atomic, "_write_temp", disk_full_on_second)
    with pytest.raises(GroupWriteError) as info:
        write_all_or_nothing(old_group)
    message = str(info.value)
    assert "a_val.json" in message and "No space left on device" in message
    assert "nothing was replaced" in message
    assert folder_state(out) == before  # old files byte-identical, no temp file left


def test_group_write_failing_rename_rolls_back(
    old_group: dict[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first two renames succeed, the third fails: the first two are undone."""
    out = next(iter(old_group)).parent
    before = folder_state(out)
    real_replace = os.replace
    targets = []

    def failing_third_rename(src, dst) -> None:
        if Path(dst).name.startswith("a_") and Path(dst).name.endswith(".json"):
            targets.append(dst)
            if len(targets) == 3:
                raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_third_rename)
    with pytest.raises(GroupWriteError, match="nothing was replaced") as info:
        write_all_or_nothing(old_group)
    assert info.value.left_new == []
    monkeypatch.undo()
    assert folder_state(out) == before
    assert not (out / "a_val.json").exists()


def test_group_write_interrupted_keeps_old_files(
    old_group: dict[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = next(iter(old_group)).parent
    before = folder_state(out)
    real_write_temp = atomic._write_temp

    def interrupted_on_last(path: Path, data: bytes) -> Path:
        if path.name == "a_test.json":
            raise KeyboardInterrupt
        return real_write_temp(path, data)

    monkeypatch.setattr(atomic, "_write_temp", interrupted_on_last)
    with pytest.raises(KeyboardInterrupt):
        write_all_or_nothing(old_group)
    assert folder_state(out) == before
