"""Turn KonIQ-10k's CSV files into the train/val/test metadata JSON the trainer reads.

    python scripts/prepare_koniq.py --koniq_root ../datasets/koniq10k
    python scripts/prepare_koniq.py --koniq_root ../datasets/koniq10k --split random --seed 1

The dataset: KonIQ-10k (10,073 in-the-wild images, Hosu et al. 2020). Its
release has the images (1024x768/ and a smaller 512x384/), the scores file
koniq10k_scores_and_distributions.csv (header image_name,c1,c2,c3,c4,c5,
c_total,MOS,SD,MOS_zscore: MOS on 1-5, MOS_zscore on 0-100) and the sets file
koniq10k_distributions_sets.csv (header image_name,c1,...,MOS,SD,set: MOS
already on 0-100, set = training/validation/test). Unpack both CSVs into
--koniq_root, next to the image folder.

Writes out_dir/koniq_train.json, koniq_val.json and koniq_test.json: JSON
lists of {"image": <path relative to --dataset_root>, "score": <float>}. The
three are replaced together or not at all (a new train split never sits
beside an old test split).

Split (--split):
  official  the sets file's training/validation/test sets (7,058 / 1,000 /
            2,015). Needs the sets file: without it, an error.
  random    the paper's protocol: a seeded random split by image. Of N images,
            n_test = round(test_fraction * N) go to test, then
            n_val = round(val_fraction * (N - n_test)) of the rest to val, the
            others to train (Python's round). With the defaults (0.2, 0.1) the
            10,073 images give 7,252 train / 806 val / 2,015 test. Names are
            sorted before numpy's default_rng(seed) permutes them, so the split
            depends only on the image set and --seed, on every machine; the
            test set of a seed is the one earlier versions of this script chose.
  (no flag) official when the sets file exists, else random.
The split covers every listed image before the disk is looked at, so which
images are missing never moves another image between splits.

Scores: from the scores CSV, --score_column MOS_zscore (0-100, the default, as
the original HyperIQA trained) or MOS (1-5). When only the sets file is there,
its MOS column (0-100) is the score; --score_column then is an error, since it
names a column of the scores CSV. Images listed but not on disk are reported
and left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hyperiqa.arg_types import non_negative_int, open_fraction
from hyperiqa.prepare import (
    PrepareError,
    add_output_args,
    add_scored,
    check_image_name,
    entries_for,
    first_names,
    parse_score,
    present_images,
    read_csv,
    read_score_csv,
    relative_dir,
    run_tool,
    write_metadata,
)

PROG = "prepare_koniq"
SCORES_CSV = "koniq10k_scores_and_distributions.csv"
SETS_CSV = "koniq10k_distributions_sets.csv"
SCORES_HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"
SETS_HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set"
SPLITS = ("train", "val", "test")
OFFICIAL_SETS = {"training": "train", "validation": "val", "test": "test"}
DEFAULT_SCORE_COLUMN = "MOS_zscore"


def output_name(split: str) -> str:
    return f"koniq_{split}.json"


def read_sets(path: Path, score_column: str | None) -> tuple[dict[str, str], dict[str, float]]:
    """The sets file: ({image: train/val/test}, {image: MOS on 0-100}).

    The MOS column is read (and checked) only when it is the score:
    ``score_column`` is "MOS" then, else None.
    """
    required = ["image_name", "set"] + ([score_column] if score_column else [])
    splits: dict[str, str] = {}
    scores: dict[str, float] = {}
    for line, row in read_csv(path, required, f"KonIQ's {SETS_HEADER}"):
        where = f"{path}, line {line}"
        name = check_image_name(row["image_name"], where)
        if name in splits:
            raise PrepareError(f"{where}: image {name} is listed twice")
        label = row["set"].lower()
        if label not in OFFICIAL_SETS:
            raise PrepareError(
                f"{where}: set {row['set']!r} is not one of {', '.join(OFFICIAL_SETS)}"
            )
        splits[name] = OFFICIAL_SETS[label]
        if score_column:
            add_scored(scores, name, parse_score(row[score_column], where, score_column), where)
    return splits, scores


def check_same_images(sets_path: Path, splits: dict[str, str], scores: dict[str, float]) -> None:
    """The sets file must cover exactly the scored images.

    A mismatch means the two files come from different releases (or one is
    damaged): guessing a split for the leftovers would silently mix protocols.
    """
    unassigned = [name for name in scores if name not in splits]
    if unassigned:
        raise PrepareError(
            f"{sets_path} has no set for {len(unassigned)} images of {SCORES_CSV} "
            f"({first_names(unassigned)})"
        )
    unknown = [name for name in splits if name not in scores]
    if unknown:
        raise PrepareError(
            f"{sets_path} lists {len(unknown)} images missing from {SCORES_CSV} "
            f"({first_names(unknown)})"
        )


def split_sizes(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts of the random split of n images."""
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def random_split(
    names: list[str], seed: int, test_fraction: float, val_fraction: float
) -> dict[str, str]:
    """{image: train/val/test} of a seeded split by image.

    Names are sorted before the permutation so the split depends only on the
    set of images and the seed, not on the CSV's row order. numpy's PCG64
    (default_rng) gives the same permutation on every platform. The first
    n_test permuted images are test, the next n_val val.
    """
    ordered = sorted(names)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    _, n_val, n_test = split_sizes(len(ordered), test_fraction, val_fraction)
    splits = dict.fromkeys(ordered, "train")
    for rank, index in enumerate(permutation[: n_test + n_val]):
        splits[ordered[index]] = "test" if rank < n_test else "val"
    return splits


def counts(splits: dict[str, str]) -> str:
    """'7,058 train / 1,000 val / 2,015 test'."""
    values = list(splits.values())
    return " / ".join(f"{values.count(split):,} {split}" for split in SPLITS)


def choose_split(args: argparse.Namespace, has_sets: bool, sets_path: Path) -> str:
    if args.split == "official" and not has_sets:
        raise PrepareError(
            f"--split official needs {sets_path} (KonIQ-10k's official sets file); "
            "without it use --split random"
        )
    return args.split or ("official" if has_sets else "random")


def load_scores(
    args: argparse.Namespace, scores_path: Path, sets_path: Path, split: str
) -> tuple[dict[str, float], dict[str, str] | None, str]:
    """(scores, the official splits or None, the score's name)."""
    if scores_path.is_file():
        column = args.score_column or DEFAULT_SCORE_COLUMN
        scores = read_score_csv(scores_path, "image_name", column, f"KonIQ's {SCORES_HEADER}")
        scale = "0-100" if column == "MOS_zscore" else "1-5"
        print(f"{PROG}: scores: {column} ({scale}) from {scores_path}")
        if split != "official":
            return scores, None, column
        splits, _ = read_sets(sets_path, None)
        check_same_images(sets_path, splits, scores)
        print(f"{PROG}: split: the official sets of {sets_path}")
        return scores, splits, column
    if not sets_path.is_file():
        folders = [p.name for p in (scores_path, sets_path) if p.is_dir()]
        raise PrepareError(
            f"neither {SCORES_CSV} nor {SETS_CSV} found in --koniq_root {args.koniq_root} "
            "(KonIQ-10k's score files)"
            + (f"; {' and '.join(folders)} is a folder, not a CSV file" if folders else "")
        )
    if args.score_column:
        raise PrepareError(
            f"--score_column {args.score_column} reads {scores_path}, which is not there; "
            f"leave it out to use the MOS (0-100) of {SETS_CSV}"
        )
    splits, scores = read_sets(sets_path, "MOS")
    print(f"{PROG}: no {SCORES_CSV}: scores: MOS (0-100) from {sets_path}")
    if split == "official":
        print(f"{PROG}: split: the official sets of {sets_path}")
        return scores, splits, "MOS"
    return scores, None, "MOS"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prepare_koniq.py",
        description="Write koniq_train/val/test.json from KonIQ-10k's CSV files.",
    )
    parser.add_argument(
        "--koniq_root",
        type=Path,
        required=True,
        help=f"folder holding {SCORES_CSV} and/or {SETS_CSV}, and the image folder",
    )
    add_output_args(parser)
    parser.add_argument(
        "--image_dir",
        default="1024x768",
        help="subfolder of koniq_root with the images (default 1024x768; or 512x384)",
    )
    parser.add_argument(
        "--split",
        choices=["official", "random"],
        help="official: the sets file's sets; random: seeded split by image "
        "(default: official when the sets file exists, else random)",
    )
    parser.add_argument(
        "--score_column",
        choices=["MOS_zscore", "MOS"],
        help=f"column of {SCORES_CSV}: MOS_zscore (0-100, default; the original HyperIQA's) "
        "or MOS (1-5)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of --split random")
    parser.add_argument(
        "--test_fraction",
        type=open_fraction,
        default=0.2,
        help="--split random: share of all images for test (default 0.2)",
    )
    parser.add_argument(
        "--val_fraction",
        type=open_fraction,
        default=0.1,
        help="--split random: share of the non-test images for val (default 0.1)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.koniq_root
    if not root.is_dir():
        raise PrepareError(f"--koniq_root {root} is not a directory")
    scores_path, sets_path = root / SCORES_CSV, root / SETS_CSV
    split = choose_split(args, sets_path.is_file(), sets_path)
    scores, splits, score_name = load_scores(args, scores_path, sets_path, split)
    inputs = [path for path in (scores_path, sets_path) if path.is_file()]
    names = list(scores)

    # Split over every listed image, before looking at the disk, so an image's
    # split never depends on which other files happen to be missing.
    if splits is None:
        splits = random_split(names, args.seed, args.test_fraction, args.val_fraction)
        print(
            f"{PROG}: split: random by image (seed {args.seed}, test {args.test_fraction}, "
            f"val {args.val_fraction} of the rest): {len(names):,} images -> {counts(splits)}"
        )
    else:
        print(f"{PROG}: {len(names):,} images -> {counts(splits)}")

    image_dir = root / args.image_dir
    prefix = relative_dir(image_dir, args.dataset_root)  # a config error: report it first
    present = present_images(
        PROG, names, image_dir, inputs[0], "wrong --koniq_root or --image_dir?"
    )
    outputs = {
        output_name(part): entries_for(
            [name for name in present if splits[name] == part], scores, prefix
        )
        for part in SPLITS
    }
    write_metadata(PROG, args.out_dir, outputs, inputs, score_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(PROG, main))
