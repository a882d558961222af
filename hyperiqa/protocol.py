"""The N-split research protocol: which splits, and what their test scores add up to.

HyperIQA's paper reports the median test SRCC/PLCC over 10 random 80/20 splits
by image (DBCNN, TReS and MANIQA report the same way, some the mean).
scripts/run_protocol.py trains one run folder per split; this module names the
splits (``parse_seeds``) and turns their run folders into the summary
(``summarize``). It reads run folders only (torch-free), so the statistics are
tested on fabricated folders without training.

Which splits count: those whose run finished with a test score (metrics.json
"completed" and a "test" block). Unfinished, failed or missing splits are
listed with their status and left out of the statistics, and the summary says
how many. The statistics per metric are the median, the mean and the *sample*
standard deviation (ddof=1: the spread of a result over splits, estimated from
N of them; null with fewer than two values), each over the splits whose metric
is defined.
"""

from __future__ import annotations

import json
import re
import statistics as stats
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperiqa.atomic import write_bytes_atomic
from hyperiqa.history import format_correlation as format_metric
from hyperiqa.run_summary import RunFolderError, load_run

CORRELATIONS = ("srcc", "plcc", "krcc")
FINISHED = "finished"
STD = "sample standard deviation (ddof=1); null with fewer than 2 values"
SEED_PART = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)


MAX_SEEDS = 1000  # a protocol of more splits than that is a typo, not a plan


def parse_seeds(text: str) -> list[int]:
    """``0-9`` -> [0, ..., 9]; ``0,3,5``; ``0-2,7``. ValueError (a one-line
    message) for anything else, a backwards range or a seed listed twice."""
    seeds: list[int] = []
    for part in text.split(","):
        match = SEED_PART.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"expected seeds such as 0-9 or 0,3,5, got {text!r}")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise ValueError(f"the range {part.strip()} runs backwards")
        if last - first + len(seeds) >= MAX_SEEDS:
            raise ValueError(f"at most {MAX_SEEDS} seeds, got more in {text!r}")
        seeds.extend(range(first, last + 1))
    repeated = sorted(seed for seed, n in Counter(seeds).items() if n > 1)
    if repeated:
        raise ValueError(f"seed {repeated[0]} is listed twice in {text!r}")
    return seeds


@dataclass
class SplitResult:
    """One split of the protocol: its run folder and what it holds."""

    seed: int
    run: Path
    status: str  # "finished", or why the split does not count
    best_epoch: int | None = None
    val_srcc: float | None = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # "test", eval sets

    @property
    def counted(self) -> bool:
        return self.status == FINISHED

    def row(self) -> dict[str, Any]:
        """The split's entry in summary.json: flat test columns, eval sets nested."""
        test = self.scores.get("test", {})
        row = {
            "seed": self.seed,
            "run": str(self.run),
            "status": self.status,
            "counted": self.counted,
            "best_epoch": self.best_epoch,
            "val_srcc": self.val_srcc,
            **{f"test_{key}": test.get(key) for key in CORRELATIONS},
            "test_images": test.get("num_images"),
        }
        cross = {name: block for name, block in self.scores.items() if name != "test"}
        if cross:
            row["eval"] = cross
        return row


def read_split(seed: int, run_dir: Path, failure: str | None = None) -> SplitResult:
    """The split's result from its run folder. ``failure`` says how its training
    ended in this protocol run (e.g. "train.py exit code 1"); it makes the split
    "failed" whatever the folder holds."""
    run_dir = Path(run_dir)
    try:
        run = load_run(run_dir)
    except RunFolderError as exc:
        status = "not started" if not run_dir.exists() else str(exc)
        return SplitResult(seed, run_dir, f"failed: {failure}" if failure else status)
    if failure:
        status = f"failed: {failure}"
    elif not run.completed:
        status = run.status  # "unfinished (2/16 epochs), resumable"
    elif run.test is None:
        status = "finished without a test score"
    else:
        status = FINISHED
    return SplitResult(seed, run_dir, status, run.best_epoch, run.best_val_srcc, run.scores)


def statistics(values: Sequence[float]) -> dict[str, Any]:
    """{"n", "median", "mean", "std"} of the values; std is the sample std (ddof=1)."""
    n = len(values)
    return {
        "n": n,
        "median": stats.median(values) if n else None,
        "mean": stats.fmean(values) if n else None,
        "std": stats.stdev(values) if n > 1 else None,
    }


def set_statistics(splits: Sequence[SplitResult], name: str) -> dict[str, dict[str, Any]]:
    """Per correlation, the statistics of set ``name`` over the splits that define it."""
    out = {}
    for key in CORRELATIONS:
        values = [s.scores.get(name, {}).get(key) for s in splits]
        out[key] = statistics([v for v in values if v is not None])
    return out


def summarize(runs: Mapping[int, Path], failures: Mapping[int, str] | None = None) -> dict:
    """The protocol's summary from its run folders ({seed: run folder}, in order).

    Returns {"splits": [row per seed], "counted", "excluded", "std" (what the
    std is), "statistics": {"test": {"srcc": {"n", "median", "mean", "std"},
    "plcc": ..., "krcc": ...}, <eval set>: ...}}, over the counted splits only.
    """
    failures = failures or {}
    splits = [read_split(seed, path, failures.get(seed)) for seed, path in runs.items()]
    counted = [s for s in splits if s.counted]
    names = list(dict.fromkeys(name for s in counted for name in s.scores))
    names.sort(key=lambda name: name != "test")  # test first, eval sets in order of appearance
    return {
        "splits": [s.row() for s in splits],
        "counted": len(counted),
        "excluded": len(splits) - len(counted),
        "std": STD,
        "statistics": {name: set_statistics(counted, name) for name in names},
    }


def write_summary(path: Path, summary: dict) -> None:
    """summary.json, atomically (a reader never sees half of it). Raises OSError."""
    data = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(Path(path), data.encode())


# -- the printed table ------------------------------------------------------------------

SPLIT_COLUMNS = [
    # (header, summary row key)
    ("seed", "seed"),
    ("run", "run"),
    ("best ep", "best_epoch"),
    ("val SRCC", "val_srcc"),
    ("test SRCC", "test_srcc"),
    ("test PLCC", "test_plcc"),
    ("test KRCC", "test_krcc"),
    ("images", "test_images"),
    ("status", "status"),
]
STATISTICS = ("median", "mean", "std")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "run":
        return Path(value).name
    if isinstance(value, float):
        return format_metric(value)
    return str(value)


def _table(headers: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    """Columns sized to their content; the ``left`` columns left-aligned, the rest right."""
    widths = [max(len(text) for text in column) for column in zip(headers, *rows, strict=True)]

    def line(texts: list[str]) -> str:
        cells = [
            text.ljust(width) if i in left else text.rjust(width)
            for i, (text, width) in enumerate(zip(texts, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def _statistic_rows(block: dict[str, dict[str, Any]]) -> list[list[str]]:
    """median/mean/std rows of the test set: the label under "seed", values under test *."""
    rows = []
    for statistic in STATISTICS:
        cells = {f"test_{key}": _cell(key, block[key][statistic]) for key in CORRELATIONS}
        cells["seed"] = statistic
        rows.append([cells.get(key, "") for _, key in SPLIT_COLUMNS])
    return rows


def _eval_line(name: str, block: dict[str, dict[str, Any]]) -> str:
    """One line per --eval_json set: its median, mean and std per correlation."""
    parts = [
        f"{key.upper()} "
        + " ".join(f"{statistic} {_cell(key, block[key][statistic])}" for statistic in STATISTICS)
        for key in CORRELATIONS
    ]
    return f"eval {name} ({block['srcc']['n']} splits): " + "; ".join(parts)


def format_summary(summary: dict) -> str:
    """The splits, the median, mean and std of their test scores, then a line
    per --eval_json set and how many splits counted."""
    keys = [key for _, key in SPLIT_COLUMNS]
    rows = [[_cell(key, split.get(key)) for key in keys] for split in summary["splits"]]
    blocks = summary["statistics"]
    if "test" in blocks:
        rows += _statistic_rows(blocks["test"])
    left = {keys.index("seed"), keys.index("run"), keys.index("status")}
    lines = _table([header for header, _ in SPLIT_COLUMNS], rows, left)
    lines += [_eval_line(name, block) for name, block in blocks.items() if name != "test"]
    counted, excluded = summary["counted"], summary["excluded"]
    excluded_note = f", {excluded} excluded (not finished with a test score)" if excluded else ""
    lines.append(
        f"{counted} of {counted + excluded} splits counted{excluded_note}; std: sample (ddof=1)"
    )
    return "\n".join(lines)
