"""Write the procedural IQA images of hyperiqa/demo_data.py to a folder.

python scripts/make_demo_dataset.py --out ../datasets/demo    # 144 images, 256x320
python scripts/make_demo_dataset.py --koniq_like --out bench_data --num_images 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hyperiqa.arg_types import non_negative_int, positive_int, resize_type
from hyperiqa.demo_data import (
    DEMO_NUM_IMAGES,
    DEMO_SIZE,
    KONIQ_SIZE,
    MIN_SIDE,
    write_demo_dataset,
    write_koniq_like_jpegs,
)
from hyperiqa.errors import UserError, report
from hyperiqa.stopping import EXIT_INTERRUPTED

PROG = "make_demo_dataset.py"


MAX_IMAGES = 100_000  # the plan is built up front: a typo of many zeros must not eat the memory


def image_count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_IMAGES:
        raise argparse.ArgumentTypeError(f"at most {MAX_IMAGES}, got {value}")
    return value


def _size(text: str) -> tuple[int, int]:
    """``HxW`` (height first), each side at least ``MIN_SIDE``."""
    height, width = resize_type(text)
    if min(height, width) < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"height and width must be at least {MIN_SIDE}")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    """The CLI: the demo dataset by default, benchmark JPEGs with --koniq_like."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write the synthetic demo IQA dataset (scores fall with distortion "
        "strength), or with --koniq_like the benchmark's KonIQ-like JPEGs.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("../datasets/demo"),
        help="output folder (demo: gets images/ and demo.json); default: %(default)s",
    )
    parser.add_argument(
        "--num_images",
        type=image_count,
        default=None,
        help=f"number of images, at most {MAX_IMAGES} (default: {DEMO_NUM_IMAGES}; 1 with "
        "--koniq_like)",
    )
    parser.add_argument(
        "--size",
        type=_size,
        default=None,
        metavar="HxW",
        help="image height x width (default: 256x320; 768x1024 with --koniq_like)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="default: %(default)s")
    parser.add_argument(
        "--koniq_like",
        action="store_true",
        help="write KonIQ-like benchmark JPEGs (koniq_like_*.jpg, ~200-400 KB at 1024x768)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    koniq = args.koniq_like
    height, width = args.size or (KONIQ_SIZE if koniq else DEMO_SIZE)
    count = args.num_images or (1 if koniq else DEMO_NUM_IMAGES)
    start = time.perf_counter()
    try:
        if koniq:
            paths = write_koniq_like_jpegs(args.out, count, args.seed, height, width)
            where = f"{len(paths)} KonIQ-like JPEGs to {args.out}"
        else:
            json_path = write_demo_dataset(args.out, count, height, width, args.seed)
            where = f"{count} images to {json_path.parent / 'images'} and metadata to {json_path}"
    except OSError as err:
        return report(PROG, UserError(f"cannot write to {args.out}: {err}"))
    except KeyboardInterrupt:
        # Each file is written whole (atomically) and the metadata JSON last, so
        # a rerun (or train.py --demo, which looks for the JSON) starts afresh.
        print(f"{PROG}: interrupted; run it again to write the whole set", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {where} ({height}x{width}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
