"""One table of every run under a checkpoints folder, best val SRCC first.

The test columns are best_model.pkl's score on --test_json at the end of the
run (the epoch of the best val SRCC); "-" for runs trained without a test set.
A protocol folder (scripts/run_protocol.py --out) stands for its split runs,
listed as <protocol>/seed<k>; given as the folder itself, it lists its splits.

python scripts/compare_runs.py                 # ../checkpoints
python scripts/compare_runs.py ../checkpoints --json
python scripts/compare_runs.py ../checkpoints/protocol_paper
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from hyperiqa.config import format_lr
from hyperiqa.run_summary import RunSummary, find_runs, run_label

PROG = "compare_runs"
COLUMNS = [
    # (header, row key)
    ("name", "name"),
    ("lr", "lr"),
    ("batch", "batch_size"),
    ("epochs", "epochs"),
    ("seed", "seed"),
    ("best ep", "best_epoch"),
    ("val SRCC", "best_val_srcc"),
    ("val PLCC", "best_val_plcc"),
    ("test SRCC", "test_srcc"),
    ("test PLCC", "test_plcc"),
    ("last ep", "last_epoch"),
    ("status", "status"),
]
CORRELATIONS = {"best_val_srcc", "best_val_plcc", "test_srcc", "test_plcc"}


def sort_key(run: RunSummary) -> tuple[bool, float, str]:
    """Best val SRCC first; runs without val metrics last; ties by name (stable output)."""
    has_val = run.best_val_srcc is not None
    return (not has_val, -(run.best_val_srcc or 0.0), run.name)


def format_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in CORRELATIONS and isinstance(value, float):
        return f"{value:.4f}"
    if key == "lr" and isinstance(value, int | float) and value > 0 and math.isfinite(value):
        return format_lr(value)  # 2e-5, as in the run-folder names
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Left-aligned text columns, numbers right-aligned, sized to their content."""
    numeric = {
        "lr",
        "batch_size",
        "epochs",
        "seed",
        "best_epoch",
        *CORRELATIONS,
        "last_epoch",
    }
    cells = [[format_cell(key, row.get(key)) for _, key in COLUMNS] for row in rows]
    headers = [header for header, _ in COLUMNS]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]

    def line(texts: list[str]) -> str:
        parts = []
        for (_, key), text, width in zip(COLUMNS, texts, widths, strict=True):
            parts.append(text.rjust(width) if key in numeric else text.ljust(width))
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(texts) for texts in cells)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compare_runs.py",
        description="Compare the run folders under a checkpoints folder (best val SRCC first).",
    )
    parser.add_argument(
        "checkpoints_dir",
        nargs="?",
        type=Path,
        default=Path("../checkpoints"),
        metavar="CHECKPOINTS_DIR",
        help="folder whose subfolders are run folders or protocol folders, or a protocol "
        "folder (default: ../checkpoints)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.checkpoints_dir
    if not root.exists():
        raise SystemExit(f"{PROG}: error: {root} does not exist")
    if not root.is_dir():
        raise SystemExit(f"{PROG}: error: {root} is not a directory")
    try:
        runs, skipped = find_runs(root)
    except OSError as exc:
        raise SystemExit(f"{PROG}: error: cannot list {root}: {exc.strerror or exc}") from None

    # Notes go to stderr so stdout stays a clean table (or clean JSON) for pipes.
    for path, reason in skipped:
        print(f"skipped {run_label(path)}: {reason}", file=sys.stderr)

    rows = [run.row() for run in sorted(runs, key=sort_key)]
    if args.json:
        print(json.dumps(rows, indent=2))
        if not rows:
            print(f"no runs under {root}", file=sys.stderr)
        return 0
    if not rows:
        hint = (
            " (it is a run folder itself: pass the folder that holds runs)"
            if (root / "metrics.json").is_file()
            else ""
        )
        print(f"no runs under {root}{hint}")
        return 0
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:
        # `compare_runs.py | head`: the reader left early, which is not an error. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
