"""Turn the KADID-10k release into test metadata.

    python scripts/prepare_kadid.py --kadid_root ../datasets/kadid10k

The dataset: KADID-10k (Lin, Hosu & Saupe 2019), 10,125 images made from 81
pristine references with 25 synthetic distortions at 5 levels. Its release
(kadid10k.zip) has dmos.csv (header dist_img,ref_img,dmos,var; dmos on 1-5,
higher is better despite the name) and the images under images/ (the
distorted images and the references, e.g. I01_01_01.png and I01.png).

Writes out_dir/kadid_test.json: a JSON list of {"image": <path relative to
--dataset_root>, "score": <dmos, 1-5>} over every distorted image, for
cross-dataset evaluation. Images listed but not on disk are reported and left
out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hyperiqa.prepare import (
    PrepareError,
    add_output_args,
    entries_for,
    present_images,
    read_score_csv,
    relative_dir,
    require_file,
    run_tool,
    write_metadata,
)

PROG = "prepare_kadid"
DMOS_CSV = "dmos.csv"
DMOS_HEADER = "dist_img,ref_img,dmos,var"
IMAGE_DIR = "images"
OUTPUT = "kadid_test.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prepare_kadid.py", description="Write kadid_test.json from the KADID-10k release."
    )
    parser.add_argument(
        "--kadid_root",
        type=Path,
        required=True,
        help=f"the release folder, holding {DMOS_CSV} and {IMAGE_DIR}/",
    )
    add_output_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.kadid_root
    if not root.is_dir():
        raise PrepareError(f"--kadid_root {root} is not a directory")
    csv_path = require_file(root / DMOS_CSV, "KADID-10k's score file")
    scores = read_score_csv(csv_path, "dist_img", "dmos", f"KADID-10k's {DMOS_HEADER}")
    print(f"{PROG}: {len(scores):,} images scored in {csv_path}")
    image_dir = root / IMAGE_DIR
    prefix = relative_dir(image_dir, args.dataset_root)
    present = present_images(PROG, list(scores), image_dir, csv_path, "wrong --kadid_root?")
    outputs = {OUTPUT: entries_for(present, scores, prefix)}
    write_metadata(PROG, args.out_dir, outputs, [csv_path], "dmos")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(PROG, main))
