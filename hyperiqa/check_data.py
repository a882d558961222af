"""Dataset checker: every listed image exists and decodes fully.

DALI has no "skip bad file" option (a corrupt JPEG kills the pipeline), and a
bad file found in epoch 9 costs hours, so train.py runs this before training.
All problems are reported at once, each with its file name.

    python -m hyperiqa.check_data --train_json J --dataset_root R
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hyperiqa.arg_types import non_negative_int
from hyperiqa.data import load_samples
from hyperiqa.errors import USER_ERRORS, UserError, report
from hyperiqa.progress import progress_bar
from hyperiqa.runtime import usable_cores
from hyperiqa.stopping import report_interrupt
from pipelines.images import check_image, ignore_interrupt


def find_problems(
    paths: Sequence[Path], workers: int = 0, progress: bool = False
) -> list[tuple[Path, str]]:
    """(path, reason) for every unusable image, in input order."""
    if workers > 1 and len(paths) > 64:
        # Workers ignore Ctrl-C: the main process alone reports it, without a
        # traceback from every worker.
        pool = ProcessPoolExecutor(workers, initializer=ignore_interrupt)
        try:
            checks = pool.map(check_image, paths, chunksize=16)
            bar = progress_bar(checks, total=len(paths), desc="checking images", show=progress)
            reasons = list(bar)
        finally:
            # After Ctrl-C, drop the queued checks rather than wait for all of them.
            pool.shutdown(cancel_futures=True)
    else:
        bar = progress_bar(paths, desc="checking images", show=progress)
        reasons = [check_image(p) for p in bar]
    return [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]


def problems_message(problems: list[tuple[Path, str]], total: int, shown: int = 10) -> str:
    lines = [f"{len(problems)} of {total} images are unusable:"]
    lines += [f"  {p}: {r}" for p, r in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    return "\n".join(lines)


def check_dataset(paths: Sequence[Path], workers: int = 0, progress: bool = False) -> None:
    """Raise ``UserError`` listing every unusable image."""
    problems = find_problems(paths, workers, progress)
    if problems:
        raise UserError(problems_message(problems, len(paths)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_json", required=True, help="metadata JSON to check")
    parser.add_argument("--dataset_root", default="../datasets/")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=usable_cores(),
        help="decode processes (default: the usable cores)",
    )
    args = parser.parse_args(argv)
    try:
        samples = load_samples(args.train_json, args.dataset_root, require_files=False)
        paths = [s.path for s in samples]
        problems = find_problems(paths, args.workers, progress=sys.stderr.isatty())
    except USER_ERRORS as e:
        return report("check_data", e)
    except KeyboardInterrupt:
        return report_interrupt("check_data")
    if problems:
        print(problems_message(problems, len(paths), shown=len(problems)), file=sys.stderr)
        return 1
    print(f"{len(paths)} images OK ({args.train_json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
