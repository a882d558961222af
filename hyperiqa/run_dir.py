"""Everything a run writes into its folder, each file atomically.

A file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one. A crash or a full disk mid-write leaves the previous
version in place, never half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

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


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def write_json_atomic(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def save_torch_atomic(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


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

    def clear_previous_run(self) -> None:
        """Remove an earlier run's files; called only once a new run has started cleanly."""
        for f in self.path.iterdir():
            if f.name in (*RUN_MARKERS, LOG) or (
                f.name.startswith("epoch_") and f.suffix == ".pkl"
            ):
                f.unlink()

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
        with contextlib.suppress(FileNotFoundError):
            self.file(name).unlink()


@contextlib.contextmanager
def run_logger(
    log_path: Path | None, echo: Callable[[str], None] = print
) -> Iterator[logging.Logger]:
    """A logger writing timestamped lines to ``train.log`` and echoing them to the console.

    ``echo`` lets the caller route console lines around a progress bar.
    """
    logger = logging.getLogger(f"hyperiqa.run.{id(log_path)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

    class _Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            echo(self.format(record))

    console = _Echo()
    console.setFormatter(fmt)
    logger.addHandler(console)
    file_handler = None
    if log_path is not None:
        try:
            file_handler = logging.FileHandler(log_path, encoding="utf-8")
        except OSError as e:
            raise WriteError(f"could not open {log_path}: {e.strerror or e}") from None
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    try:
        yield logger
    finally:
        for h in list(logger.handlers):
            h.close()
            logger.removeHandler(h)
