"""Write the synthetic demo dataset (images + metadata JSON) used by `make demo`.

    python scripts/make_demo_dataset.py --out ../datasets/demo --num_images 96 \
        --size 384x512 --seed 0

Train on it with `--dataset_root <out>` and `<out>/demo.json` as the metadata JSON.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

# Runnable as a plain script from anywhere: make the repo root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_size(text: str) -> tuple[int, int]:
    """Parse "HxW" (e.g. 384x512) into (height, width); argparse reports failures."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HxW such as 384x512, got {text!r}")
    height, width = int(match.group(1)), int(match.group(2))
    if height < 8 or width < 8:
        raise argparse.ArgumentTypeError(f"height and width must be at least 8, got {text!r}")
    return height, width


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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
        type=parse_size,
        default=(384, 512),
        metavar="HxW",
        help="image height x width in pixels (default: 384x512)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
