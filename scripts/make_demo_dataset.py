"""Write the synthetic demo dataset (images + metadata JSON) used by `make demo`.

    python scripts/make_demo_dataset.py --out ../datasets/demo --num_images 96 \
        --size 384x512 --seed 0

Train on it with `--dataset_root <out>` and `<out>/demo.json` as the metadata JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Runnable as a plain script from anywhere: make the repo root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperiqa.config import non_negative_int, positive_int, resize_type

MIN_SIDE = 8  # the generator's smallest image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a small synthetic IQA dataset whose scores fall with distortion strength."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("../datasets/demo"),
        help="output folder (gets images/ and demo.json); default: %(default)s",
    )
    parser.add_argument(
        "--num_images",
        type=positive_int,
        default=96,
        help="number of images (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=resize_type,
        default=(384, 512),
        metavar="HxW",
        help="image height x width in pixels (default: 384x512)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.size) < MIN_SIDE:
        parser.error(f"argument --size: height and width must be at least {MIN_SIDE}")
    # Imported after parsing so --help and flag errors answer instantly
    # (the generator pulls in scipy).
    from hyperiqa.synthetic import write_demo_dataset

    height, width = args.size
    start = time.perf_counter()
    try:
        json_path = write_demo_dataset(
            args.out, num_images=args.num_images, height=height, width=width, seed=args.seed
        )
    except OSError as err:
        print(f"error: cannot write the demo dataset to {args.out}: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.num_images} images ({height}x{width}) to {json_path.parent / 'images'} "
        f"and metadata to {json_path} in {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
