"""Atomic file writes, shared by everything that writes a file users keep.

A file is written to a temporary name in its folder, flushed to disk and
renamed over the target: a crash, a Ctrl-C or a full disk leaves the previous
version (or nothing), never half a file. write_all_or_nothing extends this to
a group of files that belong together (the splits of one dataset);
overwritten_input and check_output_path refuse a write before any work is
done. Torch-free,
so the light scripts (the dataset preparers, plot_metrics) use it without
importing torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from hyperiqa.errors import UserError

TEMP_SUFFIX = ".tmp"


def umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore
    os.umask(mask)
    return mask


def temp_name_of(name: str) -> str | None:
    """The target's name if ``name`` is one of our temp files (``.NAME.xxxx.tmp``), else None."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    return name[1:].rsplit(".", 2)[0]  # drop the random part and ".tmp"


def check_size(f: IO[bytes], size: int | None) -> None:
    """OSError unless the flushed file ``f`` holds ``size`` bytes (None: not checked).

    A write that stops short without an error (a C library writing straight to
    the descriptor, on a nearly full disk) would otherwise be renamed into place.
    """
    if size is None:
        return
    written = os.fstat(f.fileno()).st_size
    if written != size:
        raise OSError(errno.EIO, f"short write: {written} of {size} bytes reached the file")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], size: int | None = None) -> None:
    """Write ``path`` through ``write(file)``, atomically; with ``size``, only if the
    file then holds that many bytes. Raises OSError on failure."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp makes the file private (0600); these files should be as
        # readable as any other the user writes (a shared group reads them).
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            check_size(f, size)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` afterwards, or its old content (OSError), never part of it."""
    write_atomic(path, lambda f: f.write(data), size=len(data))


class WriteError(UserError):
    """A file the user keeps could not be written (full disk, permissions)."""


def _write_or_say(path: Path, write: Callable[[IO[bytes]], None], size: int | None = None) -> None:
    try:
        write_atomic(path, write, size)
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}") from None


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON; NaN is refused (ValueError): null stands for "undefined"."""
    data = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()
    _write_or_say(path, lambda f: f.write(data), size=len(data))


def write_json_output(path: Path, obj: Any, flag: str) -> None:
    """Write a tool's JSON output (``flag`` names the option that chose ``path``),
    creating its folder; a folder that can't be made is one line naming the flag."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the folder of {flag} {path}: {e.strerror or e}") from None
    write_json_atomic(path, obj)


def _torch_save(obj: Any, f: IO[bytes]) -> None:
    import torch  # here, not at the top: the light tools import this module

    try:
        torch.save(obj, f)
    except RuntimeError as e:
        # On a full disk the file's write raises OSError, and torch's zip writer,
        # closing on the way out, buries it under a RuntimeError ("unexpected
        # pos ..."). The OSError is the one that says what happened.
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def save_torch_atomic(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path``, atomically."""
    _write_or_say(path, lambda f: _torch_save(obj, f))


class GroupWriteError(OSError):
    """A group of files could not be written; the message says what was kept.

    ``path`` is the file that failed. ``left_new`` lists targets that hold the
    new content although the group failed (empty unless a rollback itself
    failed, which needs a second failure in the same folder).
    """

    def __init__(self, message: str, path: Path, left_new: list[Path]) -> None:
        super().__init__(message)
        self.path = path
        self.left_new = left_new


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a durable temp file beside ``path``, named like write_atomic's."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            check_size(f, len(data))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return Path(tmp_name)


def _keep_old(path: Path) -> Path | None:
    """A second name for the current ``path`` (a hard link, so ``path`` itself
    never disappears), or None when there is no old file to restore."""
    if not os.path.lexists(path) or (path.is_dir() and not path.is_symlink()):
        return None  # nothing to keep; a rename onto a real folder fails anyway
    fd, backup = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.unlink(backup)  # mkstemp reserved a fresh name; link needs it free
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError:  # a file system without hard links: a copy restores it just as well
        try:
            shutil.copy2(path, backup, follow_symlinks=False)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(backup)  # no half copy left behind
            raise
    return Path(backup)


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (best effort: not every OS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_all_or_nothing(files: Mapping[Path, bytes]) -> None:
    """Replace every file of ``files`` ({path: content}) or none of them.

    Files that belong together (a train/val/test split) must never mix
    versions: a new train split beside an old test split leaks test images
    into training. Every file is first written in full to a temp file in its
    own folder (fsynced); only when all are written are they renamed into
    place. If a rename fails (say a directory squats on a target name), the
    files renamed so far get their old content back, so every old file is left
    as it was. The temp files are removed on any failure, Ctrl-C included.

    Raises GroupWriteError, whose message ends by saying that nothing was
    replaced, or (when a restore failed too) which files hold the new version;
    ValueError when one file is listed twice. A crash (power loss, SIGKILL) between two renames can still
    leave a mix; the window is a few system calls long.
    """
    paths = [Path(p) for p in files]
    if len({os.path.abspath(p) for p in paths}) != len(paths):
        raise ValueError("write_all_or_nothing: the same file is listed twice")
    names = ", ".join(p.name for p in paths)
    temps: dict[Path, Path] = {}
    backups: dict[Path, Path | None] = {}
    renamed: list[Path] = []
    failed = paths[0] if paths else Path()
    try:
        for path, data in zip(paths, files.values(), strict=True):
            failed = path
            temps[path] = _write_temp(path, data)
        for path in paths:
            failed = path
            backups[path] = _keep_old(path)
            # Listed before the rename, so a Ctrl-C landing just after it still
            # undoes it (a signal is handled between bytecodes, never inside the call).
            renamed.append(path)
            try:
                os.replace(temps[path], path)
            except OSError:
                renamed.pop()  # it did not happen: nothing to undo
                raise
            del temps[path]
    except BaseException as exc:
        # A stop between listing a path and renaming it: its temp is still there,
        # so the rename did not happen and there is nothing to undo.
        renamed = [p for p in renamed if p not in temps or not os.path.lexists(temps[p])]
        left_new = _roll_back(renamed, backups)
        # A backup whose restore failed is the only copy of the old version: kept.
        spare = [b for p, b in backups.items() if b is not None and p not in left_new]
        for temp in [*temps.values(), *spare]:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C: the old files are back; let the interrupt through
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if left_new:
            kept = f"could not restore {', '.join(map(str, left_new))}: they hold the new version"
        else:
            kept = f"nothing was replaced ({names} left as they were)"
        raise GroupWriteError(f"cannot write {failed}: {reason}; {kept}", failed, left_new) from exc
    for backup in backups.values():
        if backup is not None:
            with contextlib.suppress(OSError):
                os.unlink(backup)
    for folder in {p.parent for p in paths}:
        _fsync_dir(folder)


def _roll_back(renamed: list[Path], backups: dict[Path, Path | None]) -> list[Path]:
    """Put the old version of every renamed file back; returns those that failed."""
    failed = []
    for path in reversed(renamed):
        backup = backups.get(path)
        try:
            if backup is None:
                os.unlink(path)  # there was no old file
            else:
                os.replace(backup, path)
                backups[path] = None
        except OSError:
            failed.append(path)
    return failed


def overwritten_input(output: Path, inputs: Sequence[Path]) -> Path | None:
    """The input that writing ``output`` would replace (the same path, or the
    same file through a symlink or a hard link), or None. No tool writes over
    what it reads."""
    # The output's side once: evaluate.py checks it against every image it reads.
    real_output, output_exists = os.path.realpath(output), Path(output).exists()
    for source in inputs:
        source = Path(source)
        same = real_output == os.path.realpath(source)
        if not same and output_exists and source.exists():
            same = os.path.samefile(output, source)
        if same:
            return source
    return None


def check_output_path(path: Path, flag: str) -> None:
    """Before the work: can ``path`` be written? (Not a folder; its nearest
    existing ancestor a writable folder.) So a long evaluation or benchmark does
    not end in "cannot write"."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {flag} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {flag} {path}: {ancestor} is not writable")
