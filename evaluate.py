"""Evaluate a checkpoint on a labelled set: SRCC, PLCC, KRCC and per-image predictions.

    python evaluate.py --checkpoint best_model.pkl --test_json koniq_test.json \
        [--dataset_root ../datasets/] [--patch_num 25] [--output out.json]
"""

from __future__ import annotations

from hyperiqa.stopping import quiet_start  # the standard library only: loads at once

if __name__ == "__main__":  # a command, not an import: Ctrl-C while torch loads is one line
    quiet_start("evaluate.py")

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from hyperiqa.arg_types import HelpFormatter
from hyperiqa.atomic import check_output_path, overwritten_input, write_json_output
from hyperiqa.config import (
    DEFAULT_DATASET_ROOT,
    add_scoring_flags,
    parse_scoring_args,
    scoring_options,
)
from hyperiqa.data import Sample, load_samples
from hyperiqa.errors import USER_ERRORS, UserError, report
from hyperiqa.history import format_correlation as fmt
from hyperiqa.scorer import run_dataset_root, score_files
from hyperiqa.scoring import correlations
from hyperiqa.stopping import interrupts_raise, report_interrupt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a HyperIQA checkpoint on a labelled image set.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--test_json", required=True, help="metadata JSON: a list of {image, score}")
    p.add_argument(
        "--dataset_root",
        default=None,
        help="image paths are relative to this (default: for a run's own val_images.json "
        f"the run's --dataset_root, else {DEFAULT_DATASET_ROOT})",
    )
    p.add_argument("--output", default=None, help="write the results as JSON here")
    add_scoring_flags(p)
    return p


def evaluate(args: argparse.Namespace, samples: Sequence[Sample]) -> dict:
    pred = score_files(
        args.checkpoint,
        [s.path for s in samples],
        echo=partial(print, file=sys.stderr),
        progress=sys.stderr.isatty(),
        **scoring_options(args),
    )
    result = correlations(pred, [s.label for s in samples])
    return {
        **dataclasses.asdict(result),
        "predictions": [
            {"image": s.image, "score": s.label, "prediction": float(p)}
            for s, p in zip(samples, pred, strict=True)
        ],
    }


def check_output(args: argparse.Namespace, samples: Sequence[Sample]) -> None:
    """--output must not replace what this run reads (a 110 MB model, an image, ...)."""
    if args.output:
        checkpoint = Path(args.checkpoint)
        inputs = [checkpoint, Path(args.test_json), checkpoint.parent / "args.json"]
        source = overwritten_input(Path(args.output), [*inputs, *(s.path for s in samples)])
        if source is not None:
            raise UserError(f"--output {args.output} would overwrite the input {source}")
        check_output_path(Path(args.output), "--output")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_scoring_args(build_parser(), argv)
    interrupts_raise()
    try:
        root = args.dataset_root or run_dataset_root(args.checkpoint, args.test_json)
        samples = load_samples(args.test_json, root or DEFAULT_DATASET_ROOT, require_files=False)
        check_output(args, samples)
        result = evaluate(args, samples)
        if args.output:
            write_json_output(Path(args.output), result, "--output")
    except USER_ERRORS as e:
        return report("evaluate.py", e)
    except KeyboardInterrupt:
        return report_interrupt("evaluate.py")
    print(
        f"images {result['num_images']}  SRCC {fmt(result['srcc'])}  "
        f"PLCC {fmt(result['plcc'])}  KRCC {fmt(result['krcc'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
