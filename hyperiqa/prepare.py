"""Code shared by the dataset preparers (scripts/prepare_*.py).

Each preparer reads a dataset's files as released and writes metadata JSON
files: lists of ``{"image": <path relative to --dataset_root>, "score":
<float>}``, one entry per line, which the trainer and evaluate.py read. The
rules they share live here:

- every bad input ends in ONE line naming the file (and line or row) and a
  non-zero exit, with nothing written (raise PrepareError; run_tool prints it);
- images listed but not on disk are reported and left out;
- the files of one dataset (train/val/test) are replaced together or not at
  all, and never over one of the inputs.

Standard library, numpy and hyperiqa.atomic only: no torch, so the preparers
start instantly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hyperiqa.atomic import GroupWriteError, overwritten_input, write_all_or_nothing

SHOW_NAMES = 5  # how many names an error or warning lists before "..."
DEFAULT_OUT_DIR = Path("../datasets/metas")
DEFAULT_DATASET_ROOT = Path("../datasets/")

Entry = dict[str, object]  # {"image": str, "score": float}


class PrepareError(Exception):
    """A user-facing failure: bad input or an unwritable output. The message is
    one line that names the file; run_tool prints it without a traceback."""


def run_tool(
    prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None
) -> int:
    """Run a preparer's ``main``; a PrepareError becomes ``prog: error: ...`` and exit code 1."""
    try:
        return main(argv)
    except PrepareError as exc:
        # One line even when a library's message (quoted in ours) spans several.
        print(f"{prog}: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no metadata file was replaced", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- arguments


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """--out_dir and --dataset_root, the same in every preparer."""
    parser.add_argument(
        "--out_dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"folder for the metadata JSON files (default {DEFAULT_OUT_DIR})",
    )
    parser.add_argument(
        "--dataset_root",
        type=Path,
        default=DEFAULT_DATASET_ROOT,
        help="image paths in the JSON are relative to this (the trainer's --dataset_root; "
        f"default {DEFAULT_DATASET_ROOT})",
    )


# ---------------------------------------------------------------- reading


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a PrepareError saying what was expected there."""
    if not path.is_file():
        raise PrepareError(f"{path} not found ({what})")
    return path


def read_csv(
    path: Path, required: Sequence[str], release_header: str
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, {column: value}), after checking the header.

    Released files often quote every header field ("image_name",...): the csv
    module strips those quotes. utf-8-sig drops a byte-order mark if an editor
    added one. ``release_header`` is quoted in the error when a column is missing.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            _check_header(path, header, required, release_header)
            rows = []
            for values in reader:
                if not any(value.strip() for value in values):
                    continue  # blank lines, e.g. a trailing newline
                if len(values) != len(header):
                    raise PrepareError(
                        f"{path}, line {reader.line_num}: {len(values)} fields, "
                        f"the header has {len(header)}"
                    )
                row = {name: value.strip() for name, value in zip(header, values, strict=True)}
                rows.append((reader.line_num, row))
    except OSError as exc:
        raise PrepareError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PrepareError(f"{path} is not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise PrepareError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise PrepareError(f"{path} has a header but no rows")
    return rows


def _check_header(path: Path, header: list[str], required: Sequence[str], release: str) -> None:
    found = ",".join(header) if any(header) else "(empty file)"
    missing = [name for name in required if name not in header]
    if missing:
        raise PrepareError(
            f"{path}: header lacks {', '.join(missing)}; found {found}; expected {release}"
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise PrepareError(f"{path}: header names {', '.join(repeated)} more than once")


def parse_score(value: object, where: str, column: str) -> float:
    """A finite float from a cell (text or number); ``where`` locates it in errors."""
    if isinstance(value, bool):  # True would pass as 1.0
        score = math.nan
    elif isinstance(value, (int, float)):
        score = float(value)
    else:
        try:
            score = float(str(value).strip())
        except ValueError:
            score = math.nan
    if not math.isfinite(score):
        raise PrepareError(f"{where}: {column} is {value!r}, not a finite number")
    return score


def check_image_name(name: object, where: str) -> str:
    """A bare file name (no folder part): the metadata joins it to the image folder."""
    if not isinstance(name, str) or not name.strip():
        raise PrepareError(f"{where}: image name {name!r} is empty or not text")
    name = name.strip()
    if "/" in name or "\\" in name or name in (".", ".."):
        raise PrepareError(f"{where}: bad image name {name!r} (a bare file name expected)")
    # A newline or an escape sequence is in no dataset's file names: damaged data.
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise PrepareError(f"{where}: bad image name {name!r} (it holds a control character)")
    return name


def add_scored(scores: dict[str, float], name: str, score: float, where: str) -> None:
    """``scores[name] = score``, refusing a name seen before (one image, two scores)."""
    if name in scores:
        raise PrepareError(f"{where}: image {name} is listed twice")
    scores[name] = score


def read_score_csv(
    path: Path, name_column: str, score_column: str, release_header: str
) -> dict[str, float]:
    """{image name: score} of a CSV, in file order; names unique, scores finite."""
    scores: dict[str, float] = {}
    for line, row in read_csv(path, [name_column, score_column], release_header):
        where = f"{path}, line {line}"
        name = check_image_name(row[name_column], where)
        add_scored(scores, name, parse_score(row[score_column], where, score_column), where)
    return scores


# ---------------------------------------------------------------- images


def first_names(names: Sequence[str]) -> str:
    """The first few names, comma-separated, with "..." when there are more."""
    shown = ", ".join(str(name) for name in names[:SHOW_NAMES])
    return shown + (", ..." if len(names) > SHOW_NAMES else "")


def relative_dir(image_dir: Path, dataset_root: Path) -> str:
    """image_dir relative to dataset_root, forward slashes ("" when they are equal).

    The lexical form (abspath) comes first so ../datasets/koniq10k stays
    koniq10k even when a folder on the way is a symlink; resolve() is the
    fallback for roots given through different symlinked paths.
    """
    for transform in (lambda p: Path(os.path.abspath(p)), lambda p: p.resolve()):
        try:
            rel = transform(image_dir).relative_to(transform(dataset_root))
        except ValueError:
            continue
        return "" if rel == Path(".") else rel.as_posix()
    raise PrepareError(
        f"image folder {image_dir} is not inside --dataset_root {dataset_root}; "
        "the metadata stores paths relative to it"
    )


def present_images(
    prog: str, names: Sequence[str], image_dir: Path, listed_in: Path, hint: str
) -> list[str]:
    """The names whose file exists under image_dir, in order; the others are
    reported on stderr. None present is an error (``hint``: which flag to check)."""
    missing = [name for name in names if not (image_dir / name).is_file()]
    if len(missing) == len(names):
        raise PrepareError(
            f"none of the {len(names)} images listed in {listed_in} exist under {image_dir} "
            f"({hint})"
        )
    if missing:
        print(
            f"{prog}: warning: {len(missing)} of {len(names)} listed images are missing "
            f"under {image_dir} and left out: {first_names(missing)}",
            file=sys.stderr,
        )
    missing_set = set(missing)
    return [name for name in names if name not in missing_set]


def entries_for(names: Sequence[str], scores: Mapping[str, float], prefix: str) -> list[Entry]:
    """Metadata entries; ``prefix`` is the image folder relative to the dataset root."""
    return [
        {"image": f"{prefix}/{name}" if prefix else name, "score": scores[name]} for name in names
    ]


# ---------------------------------------------------------------- writing


def metadata_bytes(entries: Sequence[Entry]) -> bytes:
    """The JSON list, one entry per line, so 10k entries stay diff-able and grep-able."""
    return ("[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n").encode()


def check_not_inputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """Refuse to write over a file this run reads (through a symlink or a hard link too)."""
    for output in outputs:
        source = overwritten_input(output, inputs)
        if source is not None:
            raise PrepareError(
                f"refusing to write {output}: it is the input {source}; choose another --out_dir"
            )


def write_metadata(
    prog: str,
    out_dir: Path,
    outputs: Mapping[str, Sequence[Entry]],
    inputs: Sequence[Path],
    score_name: str,
) -> None:
    """Write {file name: entries} into out_dir, all files or none, then print a
    summary line per file.

    The files of one dataset belong together: a new train split beside an old
    test split would put test images into training, so they are replaced as
    a group (hyperiqa.atomic.write_all_or_nothing). Every check runs before
    the first byte is written.
    """
    for filename, entries in outputs.items():
        if not entries:
            raise PrepareError(
                f"no images left for {filename} (its split is empty or all its images are "
                "missing); nothing written"
            )
    targets = {out_dir / filename: metadata_bytes(entries) for filename, entries in outputs.items()}
    check_not_inputs(list(targets), inputs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(f"cannot create --out_dir {out_dir}: {exc.strerror or exc}") from None
    try:
        write_all_or_nothing(targets)
    except GroupWriteError as exc:
        raise PrepareError(str(exc)) from None
    for filename, entries in outputs.items():
        values = [float(entry["score"]) for entry in entries]  # type: ignore[arg-type]
        print(
            f"{prog}: wrote {out_dir / filename}: {len(entries)} images, "
            f"{score_name} {min(values):.4g} to {max(values):.4g}"
        )
