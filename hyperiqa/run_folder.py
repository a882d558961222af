"""The run folder: what a run writes, how it is read back, and how it resumes.

    args.json        every flag, resolved (the loader, device and amp used)
    train.log        timestamped lines, also echoed to the console
    metrics.json     {"epochs_planned", "completed", "best", "epochs": [...]}
    best_model.pkl   HyperNet state_dict at the best val SRCC
    epoch_N.pkl      with --save_all_epochs
    resume_state.pt  while unfinished: weights, optimizer, RNG, history

Every file is written to a temporary name in the folder, flushed and renamed
over the old one: a crash or a full disk mid-write leaves the previous version,
never half a file. The readers at the bottom (``load_run``, ``find_runs``) serve
the comparison and plotting tools; torch is imported only where a ``.pt``/``.pkl``
is touched, so those tools start instantly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hyperiqa.atomic import temp_name_of, write_atomic
from hyperiqa.errors import UserError

ARGS = "args.json"
LOG = "train.log"
METRICS = "metrics.json"
BEST = "best_model.pkl"
RESUME = "resume_state.pt"

# Files that mark a folder as holding a run (any of them).
RUN_MARKERS = (ARGS, METRICS, BEST, RESUME)


class WriteError(UserError):
    """A file of the run could not be written (full disk, permissions)."""


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch_{epoch}.pkl"


# -- what a run remembers between epochs ----------------------------------------


@dataclass
class History:
    """The per-epoch records and the best epoch: metrics.json, and part of the resume state."""

    epoch: int = 0  # last completed epoch
    best: dict | None = None  # {"epoch", "val_srcc", "val_plcc"}
    epochs: list[dict] = field(default_factory=list)

    def add(self, row: dict, improved: bool) -> None:
        if improved:
            self.best = {k: row[k] for k in ("epoch", "val_srcc", "val_plcc")}
        self.epochs.append(row)
        self.epoch = row["epoch"]

    def metrics_json(self, epochs_planned: int) -> dict:
        return {
            "epochs_planned": epochs_planned,
            "completed": self.epoch == epochs_planned,
            "best": self.best,
            "epochs": self.epochs,
        }


# -- writing ---------------------------------------------------------------------


def _is_run_file(name: str) -> bool:
    return name in (*RUN_MARKERS, LOG) or (name.startswith("epoch_") and name.endswith(".pkl"))


def _is_temp_of_run_file(name: str) -> bool:
    """``.best_model.pkl.x1y2.tmp``: a temp file of ``write_atomic``, left by a kill mid-write."""
    target = temp_name_of(name)
    return target is not None and _is_run_file(target)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    try:
        write_atomic(path, write)
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}") from None


def write_json_atomic(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def _torch_save(obj: Any, f: IO[bytes]) -> None:
    import torch

    try:
        torch.save(obj, f)
    except RuntimeError as e:
        # On a full disk the file's write raises OSError, and torch's zip writer,
        # closing on the way out, buries it under a RuntimeError ("unexpected
        # pos ..."). The OSError is the one that says what happened.
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def save_torch_atomic(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: _torch_save(obj, f))


class RunFolder:
    """One run folder: what exists there and how new files get in."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def holds_run(self) -> bool:
        return any(self.file(m).exists() for m in RUN_MARKERS)

    def check_writable(self) -> None:
        """Fail early, before any work, when the folder cannot be created or written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create run folder {self.path}: {e.strerror or e}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise WriteError(f"run folder {self.path} is not writable")

    def refuse_existing(self) -> None:
        if self.holds_run():
            raise UserError(
                f"{self.path} already holds a run; pass --resume to continue it or "
                "--overwrite to replace it (or choose another --checkpoint_dir)"
            )

    def _remove_where(self, matches: Callable[[str], bool]) -> None:
        try:
            for f in self.path.iterdir():
                if matches(f.name):
                    f.unlink()
        except OSError as e:
            raise WriteError(f"cannot clean up {self.path}: {e.strerror or e}") from None

    def clear_previous_run(self) -> None:
        """Remove an earlier run's files; called only once a new run has started cleanly."""
        self._remove_where(lambda name: _is_run_file(name) or _is_temp_of_run_file(name))

    def remove_stale_temps(self) -> None:
        """Remove half-written temp files: a kill mid-write skips their cleanup."""
        self._remove_where(_is_temp_of_run_file)

    def remove(self, name: str) -> None:
        self._remove_where(lambda n: n == name)

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.file(name), obj)

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path} is missing") from None
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}") from None

    def save(self, name: str, obj: Any) -> None:
        save_torch_atomic(self.file(name), obj)

    def record_epoch(
        self,
        history: History,
        epochs_planned: int,
        *,
        best_weights: dict | None,
        epoch_weights: dict | None,
        resume_state: dict | None,
    ) -> None:
        """Write one finished epoch's files. Order matters for a crash between
        writes: the resume state goes last, so a resume redoes an epoch whose
        files may be partly written, and rewrites them identically."""
        if best_weights is not None:
            self.save(BEST, best_weights)
        if epoch_weights is not None:
            self.save(epoch_checkpoint(history.epoch), epoch_weights)
        self.write_json(METRICS, history.metrics_json(epochs_planned))
        if resume_state is not None:
            self.save(RESUME, resume_state)

    # -- resuming ------------------------------------------------------------------

    def check_resume(self, args_now: dict, speed_flags: frozenset[str]) -> None:
        """Refuse a resume that would not continue this run: nothing there,
        different result-changing flags, or a run that is already complete."""
        if not self.file(ARGS).is_file():
            raise UserError(f"--resume: {self.path} holds no run to continue")
        saved = self.read_json(ARGS)
        keys = sorted((set(saved) | set(args_now)) - speed_flags)
        diffs = [
            f"{k}: {saved.get(k)!r} -> {args_now.get(k)!r}"
            for k in keys
            if saved.get(k) != args_now.get(k)
        ]
        if diffs:
            raise UserError(f"--resume: flags differ from {self.file(ARGS)}: " + "; ".join(diffs))
        if self.file(METRICS).is_file() and self.read_json(METRICS).get("completed"):
            raise UserError(f"--resume: the run in {self.path} is already complete")

    def resume_command(self, argv: Sequence[str], world_size: int = 1) -> str:
        """The command that continues this run: the same flags, with --resume (and the
        same number of processes: a resume with another world size is refused)."""
        argv = [a for a in argv if a != "--overwrite"]
        if "--resume" not in argv:
            argv.append("--resume")
        if "--checkpoint_dir" not in " ".join(argv):
            argv += ["--checkpoint_dir", str(self.path)]
        launcher = ["python", "train.py"]
        if world_size > 1:
            launcher = ["torchrun", "--nproc_per_node", str(world_size), "train.py"]
        return shlex.join([*launcher, *argv])

    def load_resume_state(self, device: Any) -> dict | None:
        """The saved state of the last completed epoch, or None when there is none."""
        import torch

        path = self.file(RESUME)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location=device, weights_only=False)
        except Exception as e:  # written atomically: only a damaged disk or a foreign file
            raise UserError(
                f"--resume: cannot read {path} ({type(e).__name__}: {e}); "
                "start the run again with --overwrite"
            ) from None


def resume_state(history: History, **states: Any) -> dict:
    """What resume_state.pt holds: the history plus the named states
    (model, optimizer, scaler, torch_rng)."""
    return {"epoch": history.epoch, "best": history.best, "epochs": history.epochs, **states}


def history_of(state: dict) -> History:
    return History(epoch=state["epoch"], best=state["best"], epochs=state["epochs"])


# -- the log ---------------------------------------------------------------------

_logger_ids = itertools.count()  # one logger per run_logger block, never shared


@contextlib.contextmanager
def run_logger(
    log_path: Path | None, echo: Callable[[str], None] = print
) -> Iterator[logging.Logger]:
    """A logger writing timestamped lines to ``train.log`` and echoing them to the console.

    ``echo`` lets the caller route console lines around a progress bar.
    """
    logger = logging.getLogger(f"hyperiqa.run.{next(_logger_ids)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

    class _Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            echo(self.format(record))

    class _LogFile(logging.FileHandler):
        # logging's default prints a traceback and carries on; a log line that
        # cannot be written (full disk) should stop the run like any failed write.
        def handleError(self, record: logging.LogRecord) -> None:
            err = sys.exc_info()[1]
            reason = getattr(err, "strerror", None) or err
            raise WriteError(f"could not write {self.baseFilename}: {reason}")

    # Open the file first: if that fails, no handler is left on the logger.
    file_handler = None
    if log_path is not None:
        try:
            file_handler = _LogFile(log_path, encoding="utf-8")
        except OSError as e:
            raise WriteError(f"could not open {log_path}: {e.strerror or e}") from None
        file_handler.setFormatter(fmt)
    console = _Echo()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if file_handler is not None:
        logger.addHandler(file_handler)
    try:
        yield logger
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
            # Closing flushes: on a full disk that fails again, and must not
            # hide the error that is already on its way out.
            with contextlib.suppress(OSError):
                h.close()


# -- reading finished and unfinished runs (compare_runs.py, plot_metrics.py) -----


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
    except json.JSONDecodeError as exc:
        raise RunFolderError(
            f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})"
        ) from None


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


def load_run(path: Path) -> RunSummary:
    """Summarise one run folder; RunFolderError if it is not a readable run."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError("not a directory")
    if not (path / METRICS).is_file():
        raise RunFolderError(f"no {METRICS}")
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
        name=path.name,
        args=args,
        epochs=epochs,
        epochs_planned=epochs_planned,
        completed=completed,
        resumable=(not completed) and (path / RESUME).is_file(),
        best_epoch=best_epoch,
        best_val_srcc=best_srcc,
        best_val_plcc=best_plcc,
        last_epoch=last_epoch,
    )


def find_runs(root: Path) -> tuple[list[RunSummary], list[tuple[Path, str]]]:
    """Runs in the immediate subfolders of root, and the skipped folders with a reason.

    Hidden folders (.ipynb_checkpoints, .cache, ...) are ignored silently: they
    are never runs and a note for each would only be noise. Runs come back in
    folder-name order; callers sort as they need.
    """
    runs: list[RunSummary] = []
    skipped: list[tuple[Path, str]] = []
    for child in sorted(Path(root).iterdir(), key=lambda p: p.name):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            runs.append(load_run(child))
        except RunFolderError as exc:
            skipped.append((child, str(exc)))
    return runs, skipped
