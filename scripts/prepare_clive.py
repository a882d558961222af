"""Turn the LIVE In the Wild Image Quality Challenge release into test metadata.

    python scripts/prepare_clive.py --clive_root ../datasets/ChallengeDB_release

The dataset: the LIVE Challenge database (CLIVE, Ghadiyaram & Bovik 2016),
1,169 authentically distorted photos rated by crowd workers. Its release has
Data/AllImages_release.mat (variable AllImages_release: a 1169x1 cell array
of image file names), Data/AllMOS_release.mat (AllMOS_release: 1x1169 MOS on
0-100, same order) and the images under Images/. The first 7 entries are the
training images shown to the raters (their files sit in Images/trainingImages/);
the field leaves them out, which keeps 1,162 test images.

Writes out_dir/clive_test.json: a JSON list of {"image": <path relative to
--dataset_root>, "score": <MOS, 0-100>} for cross-dataset evaluation. Images
listed but not on disk are reported and left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.io

from hyperiqa.prepare import (
    PrepareError,
    add_output_args,
    add_scored,
    check_image_name,
    entries_for,
    parse_score,
    present_images,
    relative_dir,
    require_file,
    run_tool,
    write_metadata,
)

PROG = "prepare_clive"
NAMES_MAT = Path("Data") / "AllImages_release.mat"
MOS_MAT = Path("Data") / "AllMOS_release.mat"
NAMES_VAR = "AllImages_release"
MOS_VAR = "AllMOS_release"
IMAGE_DIR = "Images"
TRAINING_ENTRIES = 7  # the first entries: the raters' training images, not test data
OUTPUT = "clive_test.json"


def load_variable(path: Path, variable: str) -> np.ndarray:
    """One variable of a MATLAB .mat file, as loadmat returns it."""
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy reads up to v7.2; v7.3 files are HDF5
        raise PrepareError(f"{path}: MATLAB v7.3 files are not supported; save it as -v7") from None
    except Exception as exc:  # a damaged file raises anything from IndexError to MatReadError
        raise PrepareError(
            f"cannot read {path} as a MATLAB .mat file ({type(exc).__name__}: {exc})"
        ) from None
    if variable not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "none"
        raise PrepareError(f"{path} has no variable {variable} (variables: {found})")
    return contents[variable]


def cell_strings(value: np.ndarray, path: Path, variable: str) -> list[str]:
    """The image names of a cell array of strings or of a char matrix, in order,
    each stripped and checked as a bare file name (check_image_name).

    loadmat gives a cell array as an object array (here 1169x1) whose items are
    1-element unicode arrays (array(['10.bmp'])), or 0-element ones for an
    empty string. A char matrix (one name per row) comes back as a unicode
    array of its rows, padded with spaces to the longest name, and a single
    name as a 1-element one; a matrix stored with a trailing singleton
    dimension comes back as single characters, one row per name. All three
    layouts give the same names.
    """
    if value.dtype.kind == "U":
        if value.ndim == 2 and value.shape[1] > 1 and value.dtype.itemsize <= 4:
            rows = ["".join(row) for row in value.tolist()]  # one character per cell
        else:
            rows = [str(row) for row in value.ravel(order="F")]
        return [
            check_image_name(row, f"{path}, {variable} row {i + 1}") for i, row in enumerate(rows)
        ]
    if value.dtype != object:
        raise PrepareError(f"{path}: {variable} is a {value.dtype} array, not names (a cell array)")
    names = []
    for i, item in enumerate(value.ravel(order="F")):  # MATLAB order, whatever the shape
        where = f"{path}, {variable} entry {i + 1}"
        item = np.asarray(item)
        if item.dtype.kind != "U" or item.size != 1:
            raise PrepareError(f"{where}: {item!r} is not one file name")
        names.append(check_image_name(str(item.ravel()[0]), where))
    return names


def read_release(names_path: Path, mos_path: Path) -> dict[str, float]:
    """{image name: MOS} of the test images (every entry after the first 7)."""
    names = cell_strings(load_variable(names_path, NAMES_VAR), names_path, NAMES_VAR)
    mos = load_variable(mos_path, MOS_VAR)
    if mos.dtype.kind not in "fiu":
        raise PrepareError(f"{mos_path}: {MOS_VAR} is a {mos.dtype} array, not numbers")
    mos = mos.ravel(order="F")
    if len(mos) != len(names):
        raise PrepareError(
            f"{mos_path}: {MOS_VAR} has {len(mos)} scores but {names_path} "
            f"lists {len(names)} images"
        )
    if len(names) <= TRAINING_ENTRIES:
        raise PrepareError(
            f"{names_path}: {len(names)} entries; the first {TRAINING_ENTRIES} are training "
            "images, so no test image is left"
        )
    scores: dict[str, float] = {}
    for i in range(TRAINING_ENTRIES, len(names)):
        where = f"{mos_path}, {MOS_VAR} entry {i + 1} ({names[i]})"
        add_scored(
            scores,
            names[i],
            parse_score(mos[i], where, "MOS"),
            f"{names_path}, {NAMES_VAR} entry {i + 1}",
        )
    return scores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prepare_clive.py",
        description="Write clive_test.json from the LIVE Challenge (CLIVE) release.",
    )
    parser.add_argument(
        "--clive_root",
        type=Path,
        required=True,
        help=f"the release folder, holding {NAMES_MAT}, {MOS_MAT} and {IMAGE_DIR}/",
    )
    add_output_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.clive_root
    if not root.is_dir():
        raise PrepareError(f"--clive_root {root} is not a directory")
    names_path = require_file(root / NAMES_MAT, "the LIVE Challenge image list")
    mos_path = require_file(root / MOS_MAT, "the LIVE Challenge MOS")
    scores = read_release(names_path, mos_path)
    print(
        f"{PROG}: {len(scores):,} test images in {names_path} "
        f"(the first {TRAINING_ENTRIES} entries, training images, left out)"
    )
    image_dir = root / IMAGE_DIR
    prefix = relative_dir(image_dir, args.dataset_root)
    present = present_images(PROG, list(scores), image_dir, names_path, "wrong --clive_root?")
    outputs = {OUTPUT: entries_for(present, scores, prefix)}
    write_metadata(PROG, args.out_dir, outputs, [names_path, mos_path], "MOS")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(PROG, main))
