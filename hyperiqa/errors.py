"""The exception types for mistakes a user can make, and how they are shown.

Anything raised as a ``UserError`` (or a loader's ``LoaderError``: a file it
cannot use) is printed by the command-line entry points as a single line (no
traceback) and ends the process with a non-zero exit code. Everything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys

from pipelines.errors import LoaderError


class UserError(Exception):
    """A problem with the user's input: a bad path, bad data, a bad flag combination."""


# What the entry points catch and print as one line.
USER_ERRORS = (UserError, LoaderError)


def json_problem(error: BaseException) -> str:
    """What is wrong with a JSON text, for a user, from what ``json.loads`` raised
    (a JSONDecodeError, a RecursionError, or a ValueError for a huge integer)."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} (line {error.lineno}, column {error.colno})"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    return "a number has more than 4,300 digits"  # int's str-conversion limit


# What json.loads (and reading the text as UTF-8) raises on a bad file.
JSON_ERRORS = (ValueError, RecursionError)


def report(prog: str, error: Exception) -> int:
    """Print ``error`` as the one line (or short block) a user sees; return the exit code."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 1
