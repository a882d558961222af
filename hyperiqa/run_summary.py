"""Summaries of run folders for the comparison and plotting tools.

Reads what hyperiqa/run_folder.py writes (metrics.json, args.json) and nothing
heavy (no torch), so compare_runs.py and plot_metrics.py start instantly.
A folder that is not a readable run is reported with the reason, never a traceback.

A protocol folder (scripts/run_protocol.py's --out) is not a run but holds one
per split, ``seed<k>``; the tools list those, named ``<protocol>/seed<k>``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperiqa.errors import JSON_ERRORS, json_problem
from hyperiqa.run_folder import ARGS, METRICS, RESUME

# What scripts/run_protocol.py writes into a protocol folder: its settings (at the
# first start), its summary (after each), and a run folder per split.
PROTOCOL = "protocol.json"
SUMMARY = "summary.json"
SPLIT_FOLDER = re.compile(r"seed(0|[1-9][0-9]*)", re.ASCII)  # run_dir's names, no seed01


class RunFolderError(Exception):
    """A folder that is not a readable run folder; the message says why."""


@dataclass
class RunSummary:
    """What the tools need to know about one run folder."""

    path: Path
    name: str
    args: dict[str, Any]
    epochs: list[dict[str, Any]]  # per-epoch records from metrics.json, in file order
    epochs_planned: int | None
    completed: bool
    resumable: bool
    best_epoch: int | None
    best_val_srcc: float | None
    best_val_plcc: float | None
    last_epoch: int | None = None
    # The held-out sets best_model.pkl was scored on at the end of the run:
    # "test" (--test_json) and the --eval_json sets, each {"epoch", "srcc",
    # "plcc", "krcc", "num_images"}. Empty until the run has finished with them.
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def test(self) -> dict[str, Any] | None:
        """The test block of metrics.json (scored at the best-val epoch), or None."""
        return self.scores.get("test")

    @property
    def status(self) -> str:
        if self.completed:
            return "finished"
        done = self.last_epoch or 0
        planned = self.epochs_planned if self.epochs_planned is not None else "?"
        text = f"unfinished ({done}/{planned} epochs)"
        return text + ", resumable" if self.resumable else text

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one per-epoch metric, leaving out null/missing values.

        val metrics are null when the run had no validation split (val_split 0);
        those epochs are simply absent from the series rather than drawn as zero.
        """
        xs: list[int] = []
        ys: list[float] = []
        for record in self.epochs:
            epoch = _as_int(record.get("epoch"))
            value = _as_float(record.get(key))
            if epoch is not None and value is not None:
                xs.append(epoch)
                ys.append(value)
        return xs, ys

    def row(self) -> dict[str, Any]:
        """One flat, JSON-ready row for tables (compare_runs)."""
        test = self.test or {}
        return {
            "name": self.name,
            "path": str(self.path),
            "lr": self.args.get("lr"),
            "batch_size": self.args.get("batch_size"),
            "epochs": self.epochs_planned,
            "seed": self.args.get("seed"),
            "best_epoch": self.best_epoch,
            "best_val_srcc": self.best_val_srcc,
            "best_val_plcc": self.best_val_plcc,
            "test_srcc": test.get("srcc"),
            "test_plcc": test.get("plcc"),
            "test_krcc": test.get("krcc"),
            "test_images": test.get("num_images"),
            "last_epoch": self.last_epoch,
            "status": self.status,
        }


def _as_float(value: Any) -> float | None:
    """A finite float, or None for null, non-numbers and NaN/inf (NaN would poison sorting)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunFolderError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RunFolderError(f"{path.name} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except JSON_ERRORS as exc:
        raise RunFolderError(f"{path.name} is not valid JSON: {json_problem(exc)}") from None


def _best_from_epochs(
    epochs: list[dict[str, Any]],
) -> tuple[int | None, float | None, float | None]:
    """Best val SRCC over the epoch records; for metrics.json files without "best"."""
    best: tuple[int | None, float | None, float | None] = (None, None, None)
    for record in epochs:
        srcc = _as_float(record.get("val_srcc"))
        if srcc is not None and (best[1] is None or srcc > best[1]):
            best = (_as_int(record.get("epoch")), srcc, _as_float(record.get("val_plcc")))
    return best


def _score_block(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": _as_int(block.get("epoch")),
        **{key: _as_float(block.get(key)) for key in ("srcc", "plcc", "krcc")},
        "num_images": _as_int(block.get("num_images")),
    }


def _scores(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """metrics.json's "test" block and its "eval" blocks, by set name (test first)."""
    blocks = {"test": metrics.get("test")}
    cross = metrics.get("eval")
    if isinstance(cross, dict):
        blocks |= {name: block for name, block in cross.items() if name != "test"}
    return {name: _score_block(b) for name, b in blocks.items() if isinstance(b, dict)}


def load_run(path: Path) -> RunSummary:
    """Summarise one run folder; RunFolderError if it is not a readable run."""
    path = Path(path)
    try:
        if not path.is_dir():
            raise RunFolderError("not a directory")
        if not (path / METRICS).is_file():
            raise RunFolderError(f"no {METRICS}")
    except OSError as exc:  # e.g. a folder this user may not enter
        raise RunFolderError(f"cannot read it: {exc.strerror or exc}") from None
    metrics = _read_json(path / METRICS)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs"), list):
        raise RunFolderError(f'{METRICS} is not an object with an "epochs" list')
    epochs = [record for record in metrics["epochs"] if isinstance(record, dict)]

    # args.json is written before the first epoch; a folder without it is still
    # worth showing (columns stay empty), but a corrupt one is reported.
    args: dict[str, Any] = {}
    if (path / ARGS).is_file():
        loaded = _read_json(path / ARGS)
        if not isinstance(loaded, dict):
            raise RunFolderError(f"{ARGS} is not a JSON object")
        args = loaded

    epoch_numbers = [n for n in (_as_int(r.get("epoch")) for r in epochs) if n is not None]
    last_epoch = max(epoch_numbers) if epoch_numbers else None
    epochs_planned = _as_int(metrics.get("epochs_planned"))
    if epochs_planned is None:
        epochs_planned = _as_int(args.get("epochs"))

    if "completed" in metrics:
        completed = metrics["completed"] is True
    else:  # a minimal metrics.json (only "epochs" is required): infer it
        completed = epochs_planned is not None and (last_epoch or 0) >= epochs_planned

    best = metrics.get("best")
    if isinstance(best, dict):
        best_epoch = _as_int(best.get("epoch"))
        best_srcc = _as_float(best.get("val_srcc"))
        best_plcc = _as_float(best.get("val_plcc"))
    elif "best" in metrics and best is None:
        best_epoch, best_srcc, best_plcc = None, None, None  # no validation in this run
    else:
        best_epoch, best_srcc, best_plcc = _best_from_epochs(epochs)

    return RunSummary(
        path=path,
        name=run_label(path),
        args=args,
        epochs=epochs,
        epochs_planned=epochs_planned,
        completed=completed,
        resumable=(not completed) and (path / RESUME).is_file(),
        best_epoch=best_epoch,
        best_val_srcc=best_srcc,
        best_val_plcc=best_plcc,
        last_epoch=last_epoch,
        scores=_scores(metrics),
    )


def is_protocol_folder(path: Path) -> bool:
    """A folder run_protocol.py made: protocol.json or summary.json in it, and not a run."""
    path = Path(path)
    if (path / METRICS).is_file():
        return False
    return (path / PROTOCOL).is_file() or (path / SUMMARY).is_file()


def split_folders(protocol: Path) -> list[Path]:
    """The split run folders of a protocol folder, ``seed<k>``, in seed order."""
    splits = []
    for child in Path(protocol).iterdir():
        match = SPLIT_FOLDER.fullmatch(child.name)
        if match and child.is_dir():
            splits.append((int(match[1]), child))
    return [child for _, child in sorted(splits)]


def run_label(path: Path) -> str:
    """How the tools name a run: its folder name, ``<protocol>/seed<k>`` for a
    protocol's split (every protocol has a seed0: the name alone says too little)."""
    path = Path(path)
    parent = path.absolute().parent
    try:
        if SPLIT_FOLDER.fullmatch(path.name) and is_protocol_folder(parent):
            return f"{parent.name}/{path.name}"
    except OSError:  # a parent this user may not read: the name alone will do
        pass
    return path.name


NO_SPLITS = "a protocol folder without any split run folder (seed<k>)"


def run_folders(path: Path) -> list[Path]:
    """The run folders ``path`` stands for: a protocol folder's splits, else itself."""
    return split_folders(path) if is_protocol_folder(path) else [Path(path)]


def find_runs(root: Path) -> tuple[list[RunSummary], list[tuple[Path, str]]]:
    """Runs in the immediate subfolders of root, and the skipped folders with a reason.
    A protocol folder among them stands for its splits; ``root`` itself may be one
    (then its splits are the runs, and nothing deeper is looked at).

    Hidden folders (.ipynb_checkpoints, .cache, ...) are ignored silently: they
    are never runs and a note for each would only be noise. Runs come back in
    folder-name order (a protocol's splits in seed order); callers sort as they need.
    """
    root = Path(root)
    folders: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    if is_protocol_folder(root):
        folders = split_folders(root)
        if not folders:
            skipped.append((root, NO_SPLITS))
    else:
        for child in sorted(root.iterdir(), key=lambda p: p.name):
            if child.name.startswith(".") or not child.is_dir():
                continue
            try:
                found = run_folders(child)
            except OSError as exc:  # a folder this user may not read: one note, not the end
                skipped.append((child, f"cannot read it: {exc.strerror or exc}"))
                continue
            if not found:
                skipped.append((child, NO_SPLITS))
            folders += found
    runs: list[RunSummary] = []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except RunFolderError as exc:
            skipped.append((folder, str(exc)))
    return runs, skipped
