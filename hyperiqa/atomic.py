"""Atomic file writes, shared by everything that writes a file users keep.

A file is written to a temporary name in its folder, flushed to disk and
renamed over the target: a crash, a Ctrl-C or a full disk leaves the previous
version (or nothing), never half a file. Torch-free, so the light scripts
(prepare_koniq, plot_metrics) use it without importing torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

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


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)``, atomically. Raises OSError on failure."""
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
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))
