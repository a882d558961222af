"""The one exception type for mistakes a user can make.

Anything raised as a ``UserError`` is printed by the command-line entry points
as a single line (no traceback) and ends the process with a non-zero exit code.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: a bad path, bad data, a bad flag combination."""


def report(prog: str, error: UserError) -> int:
    """Print ``error`` as the one line (or short block) a user sees; return the exit code."""
    import sys

    print(f"{prog}: error: {error}", file=sys.stderr)
    return 1
