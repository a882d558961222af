"""predict.py's output file: rows ``image, score, error`` appended as windows finish.

The file is also the run's record for ``--resume``:

- Formats, chosen by the extension: ``.csv`` (a header ``image,score,error``,
  then one row per image; the score as Python writes a float, exactly; an empty
  score and the reason on a failed row) and ``.jsonl`` (one
  ``{"image", "score", "error"}`` object per line, null where absent). Parquet is
  not offered: it cannot be appended a window at a time and read back after a
  kill, which is what makes the file a resume record.
- Writes: a window's rows are encoded first and handed to the OS in one
  ``os.write`` (no Python buffer that a kill would lose), in input order. A kill
  can still cut that write anywhere, so the file is always some complete rows
  followed by at most one *torn* row.
- A torn row is recognised without guessing: every row we write ends with a
  newline outside any quoted field, and only there, so a row is complete exactly
  when its last byte is that newline. The last row of the file lacking it (or
  ending inside an open quote: a name with a newline, cut) is torn, and
  ``--resume`` cuts the file back to the row before it; that image is scored
  again. A bad row anywhere else is not a torn write but another file, or a
  damaged one: ``--resume`` refuses it and names the line, and changes nothing.
- The done set for ``--resume`` counts each image name's rows (a Counter): an
  input that is listed twice is scored twice, and a resumed run skips as many of
  its occurrences as the file already holds, so it ends with the rows of an
  uninterrupted run. Failed rows count as done (their reason is in the file).
- One writer at a time: the file is locked (``flock``) while a run has it open.
- What the rows were scored with (the checkpoint's hash, the crops, the loader)
  is kept beside the file (``scores.csv.settings.json``, written before the first
  row): ``--resume`` with other settings is refused, so one file never mixes two.
- Names that are not UTF-8 (bytes a file system allows) round-trip: CSV keeps
  their raw bytes, JSONL writes them as ``\\udcXX`` escapes (valid JSON either way).

Torch-free.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from hyperiqa.atomic import WriteError, check_output_path, overwritten_input, write_json_atomic
from hyperiqa.errors import UserError

CSV_HEADER = ("image", "score", "error")
FORMATS = (".csv", ".jsonl")
SETTINGS_SUFFIX = ".settings.json"


def settings_record(output: Path) -> Path:
    """Where an output's scoring settings are kept: scores.csv -> scores.csv.settings.json."""
    return output.with_name(output.name + SETTINGS_SUFFIX)


class ScoreRow(NamedTuple):
    """One image's result: a score, or the reason it has none."""

    image: str
    score: float | None
    error: str | None


class BadRow(ValueError):
    """A row of an existing output that predict.py did not write."""


# -- formats ---------------------------------------------------------------------------


def encode_csv(rows: Sequence[ScoreRow]) -> bytes:
    # The writer quotes a field holding a character of its line terminator: with
    # "\r\n", a name with a bare "\r" is quoted too (with "\n" it was written bare,
    # and read back as a broken row). Each row then ends in "\n" alone.
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    lines = []
    for row in rows:
        score = "" if row.score is None else repr(float(row.score))
        writer.writerow([row.image, score, row.error or ""])
        lines.append(buf.getvalue()[:-2] + "\n")
        buf.seek(0)
        buf.truncate()
    return "".join(lines).encode("utf-8", "surrogateescape")


def encode_jsonl(rows: Sequence[ScoreRow]) -> bytes:
    lines = [
        json.dumps(
            {
                "image": r.image,
                "score": None if r.score is None else float(r.score),
                "error": r.error,
            }
        )
        + "\n"
        for r in rows
    ]
    return "".join(lines).encode("ascii")  # ensure_ascii: escapes, never raw bytes


def _check_row(image: object, score: object, error: object) -> tuple[str, bool]:
    """(image name, failed) of a valid row; BadRow otherwise."""
    if not isinstance(image, str) or not image:
        raise BadRow("no image name")
    if (score is None) == (error is None):
        raise BadRow("a row holds either a score or an error")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    ):
        raise BadRow(f"score {score!r} is not a number")
    if error is not None and (not isinstance(error, str) or not error):
        raise BadRow("empty error")
    return image, error is not None


def _csv_row(fields: list[str]) -> tuple[str, bool]:
    if len(fields) != 3:
        raise BadRow(f"{len(fields)} fields, not 3 (image,score,error)")
    image, score, error = fields
    try:
        value = float(score) if score else None
    except ValueError:
        raise BadRow(f"score {score!r} is not a number") from None
    return _check_row(image, value, error or None)


def _jsonl_row(line: str) -> tuple[str, bool]:
    try:
        obj = json.loads(line)
    except ValueError as e:  # JSONDecodeError, or a number too long
        raise BadRow(f"not JSON ({e})") from None
    if not isinstance(obj, dict) or set(obj) != set(CSV_HEADER):
        raise BadRow('not an {"image", "score", "error"} object')
    return _check_row(obj["image"], obj["score"], obj["error"])


# -- reading an output back (--resume) ---------------------------------------------------


class Done(NamedTuple):
    """What an output already holds: rows per image name, and how many failed."""

    names: Counter
    failed: int = 0


class ReadBack(NamedTuple):
    done: Counter  # image name -> rows kept for it
    failed: int  # rows kept that hold an error
    keep: int  # bytes to keep: the end of the last row kept (or of the header)
    torn: bool  # a torn last row followed the rows
    dropped: int  # whole rows after ``keep``: the part of a window a kill cut short
    header: bool  # the file holds the CSV header (always True for JSONL)


class _Lines:
    """A binary file's lines (each with its b"\n", the last maybe without), and the
    offset just past the line most recently handed out."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.end, self.number = f, 0, 0
        self.last_complete = True

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            self.end += len(raw)
            self.number += 1
            self.last_complete = raw.endswith(b"\n")
            yield raw.decode("utf-8", "surrogateescape")


def read_back(f: BinaryIO, suffix: str, name: str, window: int = 1) -> ReadBack:
    """Read an existing output (from the start of ``f``); UserError when it is not one
    predict.py wrote (a torn last row is not an error: see the module docstring).

    ``window``: rows are written a whole window at a time, and a window's scores
    depend on its batches. A kill that cut a window's write short can leave some
    of its rows complete; those are dropped too (``dropped``), so the resumed run
    starts at a window boundary, cuts the same batches and writes the same bytes
    as an uninterrupted run. (Counted from the file's first row: every run writes
    whole windows, but for the stream's last; a resumed finished run, or one with
    other flags, may drop and score again up to ``window - 1`` rows, nothing worse.)
    """
    state = {"torn": False, "header": suffix != ".csv", "end": 0}
    rows = _csv_rows(f, name, state) if suffix == ".csv" else _jsonl_rows(f, name, state)
    done: Counter = Counter()
    recent: deque[tuple[str, int, bool]] = deque(maxlen=max(window, 1))
    count = failed = 0
    for image, row_start, row_failed in rows:
        done[image] += 1
        failed += row_failed
        recent.append((image, row_start, row_failed))
        count += 1
    keep = state["end"]
    dropped = count % window if window > 1 else 0
    if dropped:
        tail = list(recent)[-dropped:]
        keep = tail[0][1]
        for image, _, row_failed in tail:
            failed -= row_failed
            done[image] -= 1
            if not done[image]:
                del done[image]
    return ReadBack(done, failed, keep, state["torn"], dropped, state["header"])


def _jsonl_rows(f: BinaryIO, name: str, state: dict) -> Iterator[tuple[str, int, bool]]:
    lines = _Lines(f)
    for line in lines:
        start = state["end"]
        if not lines.last_complete:  # the last line, cut by a kill
            state["torn"] = True
            return
        try:
            image, failed = _jsonl_row(line)
            yield image, start, failed
        except BadRow as e:
            raise _not_ours(name, lines.number, e) from None
        state["end"] = lines.end


def _csv_rows(f: BinaryIO, name: str, state: dict) -> Iterator[tuple[str, int, bool]]:
    lines = _Lines(f)
    reader = csv.reader(lines, strict=True)
    first_line = 1
    while True:
        start = state["end"]
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # The data ended inside a quoted name: only a kill cuts a row there.
            if "unexpected end of data" in str(e):
                state["torn"] = True
                return
            raise _not_ours(name, first_line, BadRow(str(e))) from None
        if not lines.last_complete:  # a row without its newline can only be the torn last one
            state["torn"] = True
            return
        try:
            if not state["header"]:
                if tuple(fields) != CSV_HEADER:
                    raise BadRow(f"the first line is not the header {','.join(CSV_HEADER)}")
                state["header"] = True
            else:
                image, failed = _csv_row(fields)
                yield image, start, failed
        except BadRow as e:
            raise _not_ours(name, first_line, e) from None
        state["end"], first_line = lines.end, lines.number + 1


def _not_ours(name: str, line: int, e: BadRow) -> UserError:
    return UserError(
        f"--output {name} line {line} is not a row predict.py writes ({e}); "
        "not resuming: it may be another file. Nothing was changed"
    )


# -- the output file ----------------------------------------------------------------------


class OutputFile:
    """The run's output: checked and read back before any work (``prepare``), then
    cut back or emptied and written a window at a time (``begin``, ``write``)."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self.suffix = self.path.suffix.lower()
        self.encode = encode_csv if self.suffix == ".csv" else encode_jsonl
        self.fd: int | None = None
        self.created = False  # made by prepare(), not yet begun: close() removes it
        self.back = ReadBack(Counter(), 0, 0, torn=False, dropped=0, header=False)
        self.had_rows = False  # on --resume: the file held rows (their settings must match)

    def prepare(self, inputs: Sequence[Path] = (), window: int = 1) -> Done:
        """Refuse an output that cannot or must not be written, before any work; on
        --resume read the rows already there: the done set (rows per name).
        ``inputs``: files the run reads, which the output must not replace;
        ``window``: rows per write (see ``read_back``)."""
        path, flag = self.path, "--output"
        if path.is_dir():
            raise UserError(f"--output {path} is a directory")
        if self.suffix not in FORMATS:
            raise UserError(
                f"--output {path}: the extension chooses the format: .csv or .jsonl "
                "(or no --output: tab-separated lines on standard output)"
            )
        source = overwritten_input(path, inputs)
        if source is not None:
            raise UserError(f"--output {path} would overwrite the input {source}")
        if not os.path.lexists(path):
            check_output_path(path, flag)
            if path.parent.is_dir():
                # Made now, empty: the surest test that it can be written (a read-only
                # mount, /proc). Removed again if the run ends before writing (close).
                self.fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
                self.created = True
            return Done(Counter())
        if not (self.resume or self.overwrite):
            raise UserError(
                f"--output {path} exists; add --resume to continue it (skipping the images "
                "it holds) or --overwrite to start it again"
            )
        self.fd = self._open(os.O_RDWR)
        if self.overwrite:
            return Done(Counter())
        try:
            with open(os.dup(self.fd), "rb") as f:
                self.back = read_back(f, self.suffix, str(path), window)
        except OSError as e:
            self.close()
            raise UserError(f"cannot read --output {path}: {e.strerror or e}") from None
        except UserError:
            self.close()
            raise
        # Handed over, not copied (it can hold millions of names); begin() needs only
        # to know whether the file held rows.
        done, self.back = self.back.done, self.back._replace(done=Counter())
        self.had_rows = bool(done)
        return Done(done, self.back.failed)

    def _open(self, flags: int) -> int:
        try:
            fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise UserError(f"cannot open --output {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"--output {self.path} is being written by another run (it holds the file's lock)"
            ) from None
        except OSError:
            pass  # a file system without locks: carry on unlocked
        return fd

    def begin(self, settings: Callable[[], Mapping[str, object]]) -> str | None:
        """After the model loaded: start writing. On --resume the rows there must have
        been scored with ``settings()`` (else refused, the file unchanged); then a torn
        last row is cut off, an --overwrite'd file emptied, a new file made (with its
        folder), and the settings recorded. Returns a line saying what was repaired, or None."""
        scored_with = dict(settings())
        if self.had_rows:
            self._check_settings(scored_with)
        said = None
        try:
            if self.fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
            self.created = False  # begun: from now on the file is the run's record
            if self.overwrite:
                os.ftruncate(self.fd, 0)
            elif self.back.torn or self.back.dropped:
                os.ftruncate(self.fd, self.back.keep)
                said = f"--output {self.path}: "
                if self.back.torn:
                    said += "cut off a torn last row (a kill mid-write); "
                if self.back.dropped:
                    said += (
                        f"the {self.back.dropped} rows after the last whole window are scored "
                        "again, in the same batches as a run never stopped"
                    )
                else:
                    said += "its image is scored again"
            os.lseek(self.fd, 0, os.SEEK_END)
            if self.suffix == ".csv" and (self.overwrite or not self.back.header):
                self._write_all((",".join(CSV_HEADER) + "\n").encode())
        except OSError as e:
            raise WriteError(f"cannot write --output {self.path}: {e.strerror or e}") from None
        write_json_atomic(settings_record(self.path), scored_with)
        return said

    def _check_settings(self, settings: Mapping[str, object]) -> None:
        """--resume: refuse to add rows scored otherwise than the ones there."""
        record = settings_record(self.path)
        try:
            recorded = json.loads(record.read_bytes())
        except FileNotFoundError:
            recorded = None
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {record}: {getattr(e, 'strerror', None) or e}") from None
        if not isinstance(recorded, dict):
            raise UserError(
                f"--output {self.path}: {record} does not say what its rows were scored "
                "with; not resuming (--overwrite starts the file again)"
            )
        for name, value in settings.items():
            if recorded.get(name) != value:
                raise UserError(
                    f"--output {self.path} was scored with {name} {recorded.get(name)}, this "
                    f"run with {value}: resuming would mix the two in one file (use the same "
                    "checkpoint and flags, or another --output). Nothing was changed"
                )

    def write(self, rows: Sequence[ScoreRow]) -> None:
        """Append ``rows`` (one window's, in input order) and hand them to the OS."""
        if not rows:
            return
        try:
            self._write_all(self.encode(rows))
        except OSError as e:
            raise WriteError(
                f"could not write --output {self.path}: {e.strerror or e}; the rows before "
                "are kept: free space and rerun with --resume"
            ) from None

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            if n == 0:
                raise OSError(errno.EIO, "the file took no bytes")
            view = view[n:]

    def close(self) -> None:
        """Make the rows durable and release the lock (a file prepare() made for a run
        that never began writing is removed: it held nothing)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if self.created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file that cannot be synced
                raise WriteError(
                    f"could not write --output {self.path} to disk: {e.strerror or e}; "
                    "rerun with --resume to check and complete it"
                ) from None
        finally:
            os.close(fd)
