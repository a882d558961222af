"""The images of a collection, as a stream: image files, folders walked, lists of paths.

predict.py takes image files and folders as arguments and ``--list`` files (one
path per line). Nothing here holds the collection: folders are walked and lists
read lazily, so a list of millions of paths never sits in memory or on a command
line. What comes out is one ``Entry`` per image, in input order.

- A folder is walked recursively, each level sorted by name, keeping files with
  an image extension (``IMAGE_EXTENSIONS``, any case); other files are ignored.
  Symlinked folders are followed, except one that leads back to a folder being
  walked (a loop), which is skipped with a note. A folder that cannot be listed
  becomes an entry with its error, so what was missed shows in the output.
- A list line is one path, exactly as written (spaces kept: file names may hold
  them), without its line ending; blank lines are skipped. Relative paths are
  relative to the current folder, as for arguments. A line naming a folder is
  walked like a folder argument. Bytes that are not UTF-8 are kept as they are
  (Python's surrogate escapes), so any file name on disk round-trips to the output.
- A path given explicitly (argument or list line) is taken whatever its
  extension; the image check says whether it is an image.

Torch-free.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, NamedTuple

from hyperiqa.errors import UserError

# What a folder walk keeps: the extensions of the formats the image check accepts
# (pipelines/images.py USABLE_FORMATS), lower case.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
)

STDIN = "-"  # --list - reads the paths from standard input


class Entry(NamedTuple):
    """One image of the collection: its path as the output names it, and an error
    already known before decoding (a folder that cannot be listed), else None."""

    path: str
    error: str | None = None


def iter_entries(
    paths: Iterable[str], lists: Sequence[str], note: Callable[[str], None]
) -> Iterator[Entry]:
    """Every image of ``paths`` (files and folders), then of each ``--list`` file in
    turn, in order. ``note`` hears what was skipped on purpose (a symlink loop)."""
    for path in paths:
        yield from expand(path, note)
    for listed in lists:
        for path in read_list(listed):
            yield from expand(path, note)


def expand(path: str, note: Callable[[str], None]) -> Iterator[Entry]:
    """A folder's images (walked), or the path itself."""
    if _is_dir(path):
        found = False
        for entry in walk(path, note):
            found = True
            yield entry
        if not found:  # a wrong folder, or images with other extensions: say so
            note(f"no image files in folder {path} (nor below it)")
    else:
        yield Entry(path)


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, a loop of links, a NUL byte: the check names it
        return False


def walk(root: str, note: Callable[[str], None]) -> Iterator[Entry]:
    """The image files under ``root``, depth first, each folder's entries sorted by name.

    Iterative (a deep tree does not hit Python's recursion limit). Each folder on the
    current path is known by (device, inode), so a symlink back to one of them is a
    loop and is skipped; two links to the same folder elsewhere are walked twice, as
    ``find -L`` would (each file then has two names in the output).
    """
    try:
        top = os.stat(root)
    except OSError as e:
        yield Entry(root, f"cannot list folder: {e.strerror or e}")
        return
    # Per level: (its (dev, ino), sorted child names not yet visited, the folder path).
    stack: list[tuple[tuple[int, int], list[str], str]] = []
    listing = _listing(root)
    if isinstance(listing, Entry):
        yield listing
        return
    stack.append(((top.st_dev, top.st_ino), listing, root))
    while stack:
        _, names, folder = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()  # the listing is reversed: pop() takes the smallest name
        path = os.path.join(folder, name)
        try:
            info = os.stat(path)  # follows a symlink: a linked folder is walked
        except (OSError, ValueError):
            info = None  # a dangling link: an image name is kept and reported missing
        if info is not None and stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if any(key == level[0] for level in stack):
                note(f"skipping {path}: a symlink loop back to a folder being walked")
                continue
            listing = _listing(path)
            if isinstance(listing, Entry):
                yield listing
            else:
                stack.append((key, listing, path))
        elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            yield Entry(path)


def _listing(folder: str) -> list[str] | Entry:
    """A folder's names, sorted and reversed (for pop()); an Entry with the error when
    the folder cannot be listed (no permission)."""
    try:
        names = os.listdir(folder)
    except OSError as e:
        return Entry(folder, f"cannot list folder: {e.strerror or e}")
    names.sort(reverse=True)
    return names


def read_list(listed: str) -> Iterator[str]:
    """The paths of a ``--list`` file (``-``: standard input), one per line, as a stream."""
    if listed == STDIN:
        yield from _lines(sys.stdin.buffer)
        return
    try:
        f = open(listed, "rb")  # noqa: SIM115 (closed below; a generator holds it)
    except OSError as e:
        raise UserError(f"cannot read --list {listed}: {e.strerror or e}") from None
    with f:
        yield from _lines(f)


def _lines(f: BinaryIO) -> Iterator[str]:
    first = True
    for raw in f:
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if first:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors)
            first = False
        if line.strip():
            yield os.fsdecode(line)


def check_lists(lists: Sequence[str]) -> None:
    """Before any work: every ``--list`` file can be opened (UserError names the one
    that cannot). Standard input may be given once."""
    if list(lists).count(STDIN) > 1:
        raise UserError("--list - (standard input) can be given only once")
    for listed in lists:
        if listed == STDIN:
            continue
        try:
            mode = os.stat(listed).st_mode
            if stat.S_ISDIR(mode):
                raise UserError(f"--list {listed} is a folder; give it as an argument to walk it")
            if stat.S_ISREG(mode):  # not a pipe: opening and closing one ends its writer
                with open(listed, "rb"):
                    pass
        except OSError as e:
            raise UserError(f"cannot read --list {listed}: {e.strerror or e}") from None
