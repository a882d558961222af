"""Turn KonIQ-10k's official CSV files into the metadata JSON the trainer reads.

    python scripts/prepare_koniq.py --koniq_root ../datasets/koniq10k

Reads koniq10k_scores_and_distributions.csv (and, when present,
koniq10k_distributions_sets.csv with the official training/validation/test
sets) and writes out_dir/koniq_train.json (training + validation) and
out_dir/koniq_test.json (test): JSON lists of {"image": <path relative to
--dataset_root>, "score": <float>} (see DESIGN.md, "Metadata JSON").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from hyperiqa.atomic import write_bytes_atomic
from hyperiqa.config import non_negative_int

PROG = "prepare_koniq"
SCORES_CSV = "koniq10k_scores_and_distributions.csv"
SETS_CSV = "koniq10k_distributions_sets.csv"
OFFICIAL_HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"
TRAIN_SETS = ("training", "validation")  # the trainer carves its own val split out of these
TEST_SETS = ("test",)
TEST_FRACTION = 0.2  # the paper's protocol: random 80/20 split by image
SHOW_NAMES = 5  # how many missing image names to print


def fail(message: str) -> SystemExit:
    """One line on stderr, exit code 1, no traceback (raise the result)."""
    return SystemExit(f"{PROG}: error: {message}")


def read_csv(path: Path, required: list[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, {column: value}); checks the header first.

    The official files quote every header field ("image_name",...): the csv
    module strips those quotes. utf-8-sig drops a byte-order mark if an
    editor added one.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in required if name not in header]
            if missing:
                found = ",".join(header) if header else "(empty file)"
                raise fail(
                    f"{path}: header lacks {', '.join(missing)}; found {found}; "
                    f"expected KonIQ's {OFFICIAL_HEADER}"
                )
            rows = []
            for values in reader:
                if not any(value.strip() for value in values):
                    continue  # blank lines, e.g. a trailing newline
                if len(values) != len(header):
                    raise fail(
                        f"{path}, line {reader.line_num}: {len(values)} fields, "
                        f"header has {len(header)}"
                    )
                row = {name: value.strip() for name, value in zip(header, values, strict=True)}
                rows.append((reader.line_num, row))
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise fail(f"{path} is not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise fail(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise fail(f"{path} has a header but no rows")
    return rows


def read_scores(path: Path, score_column: str) -> dict[str, float]:
    """image_name -> score, in file order; every score finite, every name unique."""
    scores: dict[str, float] = {}
    for line, row in read_csv(path, ["image_name", score_column]):
        name = row["image_name"]
        if not name or "/" in name or "\\" in name:
            raise fail(f"{path}, line {line}: bad image_name {name!r}")
        if name in scores:
            raise fail(f"{path}, line {line}: image {name} is listed twice")
        try:
            score = float(row[score_column])
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise fail(f"{path}, line {line}: {score_column} of {name} is {row[score_column]!r}")
        scores[name] = score
    return scores


def read_sets(path: Path, names: list[str]) -> dict[str, str]:
    """image_name -> official set; the sets file must cover exactly the scored images."""
    sets: dict[str, str] = {}
    allowed = TRAIN_SETS + TEST_SETS
    for line, row in read_csv(path, ["image_name", "set"]):
        value = row["set"].lower()
        if value not in allowed:
            raise fail(
                f"{path}, line {line}: set {row['set']!r} is not one of {', '.join(allowed)}"
            )
        if row["image_name"] in sets:
            raise fail(f"{path}, line {line}: image {row['image_name']} is listed twice")
        sets[row["image_name"]] = value
    # A mismatch means the two files come from different releases (or one is
    # damaged): guessing a split for the leftovers would silently mix protocols.
    unassigned = [name for name in names if name not in sets]
    if unassigned:
        raise fail(f"{path} has no set for {len(unassigned)} scored images ({_first(unassigned)})")
    unknown = sorted(set(sets) - set(names))
    if unknown:
        raise fail(
            f"{path} lists {len(unknown)} images missing from {SCORES_CSV} ({_first(unknown)})"
        )
    return sets


def seeded_split(names: list[str], seed: int) -> set[str]:
    """The test images of a seeded 80/20 split by image.

    Names are sorted before the permutation so the split depends only on the
    set of images and the seed, not on the CSV's row order. numpy's PCG64
    (default_rng) gives the same permutation on every platform.
    """
    ordered = sorted(names)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    n_test = round(TEST_FRACTION * len(ordered))
    return {ordered[i] for i in permutation[:n_test]}


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
    raise fail(
        f"image folder {image_dir} is not inside --dataset_root {dataset_root}; "
        "the metadata stores paths relative to it"
    )


def write_json_atomic(path: Path, entries: list[dict[str, object]]) -> None:
    """Atomically (never a half-written metadata file), one entry per line so
    10k entries stay diff-able and grep-able."""
    text = "[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:SHOW_NAMES])
    return shown + (", ..." if len(names) > SHOW_NAMES else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prepare_koniq.py",
        description="Write koniq_train.json / koniq_test.json from KonIQ-10k's official CSVs.",
    )
    parser.add_argument(
        "--koniq_root",
        type=Path,
        required=True,
        help=f"folder holding {SCORES_CSV} (and optionally {SETS_CSV})",
    )
    parser.add_argument("--out_dir", type=Path, default=Path("../datasets/metas"))
    parser.add_argument(
        "--dataset_root",
        type=Path,
        default=Path("../datasets/"),
        help="image paths in the JSON are relative to this (the trainer's --dataset_root)",
    )
    parser.add_argument(
        "--score_column",
        default="MOS_zscore",
        choices=["MOS_zscore", "MOS"],
        help="MOS_zscore (0-100) is what the original HyperIQA trained on; MOS is 1-5",
    )
    parser.add_argument(
        "--image_dir",
        default="1024x768",
        help="subfolder of koniq_root with the images (e.g. 512x384)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the 80/20 split without the sets file",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    koniq_root: Path = args.koniq_root
    if not koniq_root.is_dir():
        raise fail(f"--koniq_root {koniq_root} is not a directory")
    scores_path = koniq_root / SCORES_CSV
    if not scores_path.is_file():
        raise fail(f"{scores_path} not found (KonIQ-10k's official scores CSV)")

    scores = read_scores(scores_path, args.score_column)
    names = list(scores)

    # Split over every listed image, before looking at the disk, so an image's
    # split never depends on which other files happen to be missing.
    sets_path = koniq_root / SETS_CSV
    if sets_path.is_file():
        sets = read_sets(sets_path, names)
        test_names = {name for name in names if sets[name] in TEST_SETS}
        print(
            f"{PROG}: official sets from {sets_path}: training + validation -> train, test -> test"
        )
    else:
        test_names = seeded_split(names, args.seed)
        print(
            f"{PROG}: no {SETS_CSV} in {koniq_root}: seeded 80/20 split by image "
            f"(seed {args.seed}, the paper's protocol)"
        )

    image_dir = koniq_root / args.image_dir
    prefix = relative_dir(image_dir, args.dataset_root)  # a config error: report it first
    missing = [name for name in names if not (image_dir / name).is_file()]
    if len(missing) == len(names):
        raise fail(
            f"none of the {len(names)} images in {scores_path.name} exist under {image_dir} "
            "(wrong --koniq_root or --image_dir?)"
        )
    if missing:
        print(
            f"{PROG}: warning: {len(missing)} of {len(names)} listed images are missing "
            f"under {image_dir} and left out: {_first(missing)}",
            file=sys.stderr,
        )
    missing_set = set(missing)
    present = [name for name in names if name not in missing_set]

    outputs = {
        "koniq_train.json": [name for name in present if name not in test_names],
        "koniq_test.json": [name for name in present if name in test_names],
    }
    # Check both before writing either: the trainer rejects an empty list, and
    # a half-done pair of files would mix an old and a new split.
    for filename, chosen in outputs.items():
        if not chosen:
            raise fail(
                f"no images left for {filename} ({len(names)} listed, {len(missing)} missing)"
            )

    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot create --out_dir {args.out_dir}: {exc.strerror or exc}") from None
    for filename, chosen in outputs.items():
        entries = [
            {"image": f"{prefix}/{name}" if prefix else name, "score": scores[name]}
            for name in chosen
        ]
        target = args.out_dir / filename
        try:
            write_json_atomic(target, entries)
        except OSError as exc:
            raise fail(f"cannot write {target}: {exc.strerror or exc}") from None
        values = [entry["score"] for entry in entries]
        print(
            f"{PROG}: wrote {target}: {len(entries)} images, "
            f"{args.score_column} {min(values):.4g} to {max(values):.4g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
