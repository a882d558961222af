"""Ctrl-C and SIGTERM, handled in one place for the whole run.

During set-up nothing is worth keeping, so a signal stops the process at once.
Inside ``deferred()`` (the training epochs) the first signal is only noted: the
loop finishes its step, writes nothing half-done and stops at the next safe
point, leaving a resumable folder. A second signal stops at once, which is as
safe as a kill (every file is replaced atomically).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by a signal"


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived and the run stopped.

    A BaseException, like KeyboardInterrupt: code that treats any ``Exception``
    as a bad file (the image check, say) must not swallow a stop. ``reported``
    is set once the run's log has said where it stopped and how to resume."""

    reported = False


class StopSignals:
    """Install the handlers for a ``with`` block; ``requested`` is the signal
    that asked for a deferred stop, or None."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._deferring = 0  # nesting depth of deferred() blocks
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside the block a signal is only noted; blocks nest (the outermost ends it)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._deferring or self.requested is not None:
            raise Interrupted
        self.requested = signum
        # Say so at once: the step, or a whole validation pass, may take a while.
        # os.write, not print: a handler can run in the middle of a print.
        name = signal.Signals(signum).name
        os.write(2, f"\n{name}: stopping at the next safe point (again to stop now)\n".encode())


def report_interrupt(prog: str) -> int:
    """What a short-lived tool (evaluate, predict, check_data) says on Ctrl-C:
    one line and the shell's exit code, no traceback. It wrote nothing yet."""
    print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
    return EXIT_INTERRUPTED


def quiet_start(prog: str, message: str = "interrupted; nothing was written") -> None:
    """From now until the program installs its own handling (``StopSignals``, or
    ``interrupts_raise``), Ctrl-C or SIGTERM ends the process with one line and
    exit code 130. The entry points call it before they import torch: the seconds
    that takes would otherwise end in a 20-line KeyboardInterrupt traceback."""

    def leave(_signum: int, _frame: object) -> None:
        os.write(2, f"{prog}: {message}\n".encode())
        os._exit(EXIT_INTERRUPTED)  # nothing started yet that needs cleaning up

    for s in STOP_SIGNALS:
        signal.signal(s, leave)


def interrupts_raise() -> None:
    """Back to Python's own handling: Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
