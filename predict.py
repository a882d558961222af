"""Score images with a trained HyperIQA checkpoint.

    python predict.py --checkpoint best_model.pkl photo1.jpg photo2.png ...

Each image (any size or format Pillow and DALI read) is resized to the training
size and scored as the mean over ``--patch_num`` seeded crops, as in the
original demo; the same images give the same scores on every run. Patches of
many images share a forward pass.
"""

from __future__ import annotations

from hyperiqa.stopping import quiet_start  # the standard library only: loads at once

if __name__ == "__main__":  # a command, not an import: Ctrl-C while torch loads is one line
    quiet_start("predict.py")

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from hyperiqa.arg_types import HelpFormatter
from hyperiqa.config import add_scoring_flags, parse_scoring_args, scoring_options
from hyperiqa.errors import USER_ERRORS, report
from hyperiqa.scorer import score_files
from hyperiqa.stopping import interrupts_raise, report_interrupt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Score images with a HyperIQA checkpoint (higher = better quality).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to score")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"image", "score"}')
    add_scoring_flags(p)
    return p


def predict(args: argparse.Namespace) -> list[tuple[str, float]]:
    paths = [Path(p) for p in args.images]
    scores = score_files(
        args.checkpoint,
        paths,
        echo=partial(print, file=sys.stderr),
        progress=sys.stderr.isatty(),
        **scoring_options(args),
    )
    return [(str(p), float(s)) for p, s in zip(args.images, scores, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_scoring_args(build_parser(), argv)
    interrupts_raise()
    try:
        results = predict(args)
    except USER_ERRORS as e:
        return report("predict.py", e)
    except KeyboardInterrupt:
        return report_interrupt("predict.py")
    if args.json:
        print(json.dumps([{"image": p, "score": s} for p, s in results], indent=2))
    else:
        for path, score in results:
            print(f"{path}\t{score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
