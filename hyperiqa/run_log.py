"""train.log: timestamped lines, written to the run folder and echoed to the console;
and when progress bars show."""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from hyperiqa.run_folder import WriteError


def bars_off(wanted: bool) -> bool | None:
    """tqdm's ``disable`` for a progress bar: off when not wanted, and None (off
    unless stderr is a terminal) otherwise, so a log file gets lines, not bars."""
    return None if wanted else True


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
    # The loaders (pipelines/, which does not import hyperiqa) log to "pipelines.*":
    # their warnings belong in this run's log too.
    loaders = logging.getLogger("pipelines")
    for target in (logger, loaders):
        target.addHandler(console)
        if file_handler is not None:
            target.addHandler(file_handler)
    try:
        yield logger
    finally:
        for h in [console, file_handler]:
            if h is None:
                continue
            loaders.removeHandler(h)
            logger.removeHandler(h)
            # Closing flushes: on a full disk that fails again, and must not
            # hide the error that is already on its way out.
            with contextlib.suppress(OSError):
                h.close()
