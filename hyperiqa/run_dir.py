"""Everything a run writes into its folder, each file atomically.

A file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one. A crash or a full disk mid-write leaves the previous
version in place, never half a file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from hyperiqa.atomic import temp_name_of, write_atomic
from hyperiqa.errors import UserError

ARGS = "args.json"
LOG = "train.log"
METRICS = "metrics.json"
BEST = "best_model.pkl"
RESUME = "resume_state.pt"

# Files that mark a folder as holding a run (any of them).
RUN_MARKERS = (ARGS, METRICS, BEST, RESUME)


class WriteError(UserError):
    """A file of the run could not be written (full disk, permissions)."""


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch_{epoch}.pkl"


def _is_run_file(name: str) -> bool:
    return name in (*RUN_MARKERS, LOG) or (name.startswith("epoch_") and name.endswith(".pkl"))


def _is_temp_of_run_file(name: str) -> bool:
    """``.best_model.pkl.x1y2.tmp``: a temp file of ``write_atomic``, left by a kill mid-write."""
    target = temp_name_of(name)
    return target is not None and _is_run_file(target)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    try:
        write_atomic(path, write)
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}") from None


def write_json_atomic(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def _torch_save(obj: Any, f: IO[bytes]) -> None:
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
    _atomic_write(path, lambda f: _torch_save(obj, f))


class RunDir:
    """One run folder: what exists there and how new files get in."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def holds_run(self) -> bool:
        return any(self.file(m).exists() for m in RUN_MARKERS)

    def check_writable(self) -> None:
        """Fail early, before any work, when the folder cannot be created or written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create run folder {self.path}: {e.strerror or e}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise WriteError(f"run folder {self.path} is not writable")

    def refuse_existing(self) -> None:
        if self.holds_run():
            raise UserError(
                f"{self.path} already holds a run; pass --resume to continue it or "
                "--overwrite to replace it (or choose another --checkpoint_dir)"
            )

    def _remove_where(self, matches: Callable[[str], bool]) -> None:
        try:
            for f in self.path.iterdir():
                if matches(f.name):
                    f.unlink()
        except OSError as e:
            raise WriteError(f"cannot clean up {self.path}: {e.strerror or e}") from None

    def clear_previous_run(self) -> None:
        """Remove an earlier run's files; called only once a new run has started cleanly."""
        self._remove_where(lambda name: _is_run_file(name) or _is_temp_of_run_file(name))

    def remove_stale_temps(self) -> None:
        """Remove half-written temp files: a kill mid-write skips their cleanup."""
        self._remove_where(_is_temp_of_run_file)

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.file(name), obj)

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path} is missing") from None
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}") from None

    def save(self, name: str, obj: Any) -> None:
        save_torch_atomic(self.file(name), obj)

    def remove(self, name: str) -> None:
        self._remove_where(lambda n: n == name)


_logger_ids = itertools.count()  # one logger per run_logger block, never shared


@contextlib.contextmanager
def run_logger(
    log_path: Path | None, echo: Callable[[str], None] = print
) -> Iterator[logging.Logger]:
    """A logger writing timestamped lines to ``train.log`` and echoing them to the console.

    ``echo`` lets the caller route console lines around a progress bar.
    """
    logger = logging.getLogger(f"hyperiqa.run.{next(_logger_ids)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

    class _Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            echo(self.format(record))

    class _LogFile(logging.FileHandler):
        # logging's default prints a traceback and carries on; a log line that
        # cannot be written (full disk) should stop the run like any failed write.
        def handleError(self, record: logging.LogRecord) -> None:
            err = sys.exc_info()[1]
            reason = getattr(err, "strerror", None) or err
            raise WriteError(f"could not write {self.baseFilename}: {reason}")

    # Open the file first: if that fails, no handler is left on the logger.
    file_handler = None
    if log_path is not None:
        try:
            file_handler = _LogFile(log_path, encoding="utf-8")
        except OSError as e:
            raise WriteError(f"could not open {log_path}: {e.strerror or e}") from None
        file_handler.setFormatter(fmt)
    console = _Echo()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if file_handler is not None:
        logger.addHandler(file_handler)
    try:
        yield logger
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
            # Closing flushes: on a full disk that fails again, and must not
            # hide the error that is already on its way out.
            with contextlib.suppress(OSError):
                h.close()
