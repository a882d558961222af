"""The run folder: what a run writes, how it is read back, and how it resumes.

    args.json        every flag, resolved (the loader, device and amp used)
    data.json        per set: metadata file, image root, count, fingerprint
    val_images.json  the validation set, in the metadata format
    train.log        timestamped lines, also echoed to the console
    metrics.json     {"epochs_planned", "completed", "best", "epochs": [...], "test", "eval"}
    best_model.pkl   HyperNet state_dict at the best val SRCC
    epoch_N.pkl      with --save_all_epochs
    tensorboard/     with --tensorboard
    resume_state.pt  while unfinished: weights, optimizer, RNG, history

A run uses the folder in four calls: ``open`` checks it against --resume and
--overwrite without changing anything and says how the run starts (``Start``);
``begin`` records the flags and the data once everything else is ready;
``record`` writes each finished epoch; ``finish`` adds the held-out results
and marks the run complete. ``claim`` holds the folder's lock meanwhile.

Every file is written to a temporary name in the folder, flushed and renamed
over the old one: a crash or a full disk mid-write leaves the previous version,
never half a file. torch is imported only where a ``.pt``/``.pkl`` is touched,
so the tools that read run folders (hyperiqa/run_summary.py) start instantly.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import itertools
import json
import logging
import os
import pickle
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hyperiqa.atomic import (
    WriteError,
    save_torch_atomic,
    temp_name_of,
    write_json_atomic,
)
from hyperiqa.errors import JSON_ERRORS, UserError, json_problem
from hyperiqa.history import EpochRecord, HeldOutResult, History
from hyperiqa.spec import ADDED_SINCE_FIRST_RELEASE, RESUME_MAY_CHANGE

ARGS = "args.json"
DATA = "data.json"
VAL_IMAGES = "val_images.json"
LOG = "train.log"
BOARD = "tensorboard"  # --tensorboard's folder
METRICS = "metrics.json"
BEST = "best_model.pkl"
RESUME = "resume_state.pt"

# Files that mark a folder as holding a run (any of them).
RUN_MARKERS = (ARGS, DATA, VAL_IMAGES, METRICS, BEST, RESUME)

# What resume_state.pt holds: the history (History.resume_json) and the trainer's states.
HISTORY_KEYS = frozenset({"epoch", "best", "epochs"})
STATE_KEYS = frozenset({"model", "optimizer", "scaler", "torch_rng"})


class Start(enum.Enum):
    """How a run starts in its folder."""

    NEW = "new"  # an empty folder, or --overwrite
    CONTINUE = "continue"  # --resume from resume_state.pt
    FINISH = "finish"  # --resume: every epoch is done, the held-out scoring is not
    # --resume of a run stopped before or while saving epoch 1: nothing to continue
    # from and nothing beyond epoch 1 to lose, so it starts again (identically).
    START_OVER = "start_over"


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch_{epoch}.pkl"


def _is_run_file(name: str) -> bool:
    return name in (*RUN_MARKERS, LOG) or _is_result(name)


def _is_result(name: str) -> bool:
    """A file that holds what training produced (not its set-up records or the log)."""
    return name in (METRICS, BEST) or (name.startswith("epoch_") and name.endswith(".pkl"))


def _is_temp_of_run_file(name: str) -> bool:
    """``.best_model.pkl.x1y2.tmp``: a temp file of ``write_atomic``, left by a kill mid-write."""
    target = temp_name_of(name)
    return target is not None and _is_run_file(target)


class RunFolder:
    """One run's folder. Under torchrun every rank has one, with the same history;
    only rank 0's (``writes=True``) holds the lock and writes files."""

    def __init__(
        self, path: Path, *, epochs: int, save_all_epochs: bool = False, writes: bool = True
    ) -> None:
        self.path = Path(path)
        self.epochs = epochs  # planned: the last epoch writes no resume state
        self.save_all_epochs = save_all_epochs
        self.writes = writes
        self.history = History()  # what open() found to continue from, then each epoch
        self.saved_states: dict | None = None  # the trainer's states to continue from
        self._replace_old_run = False

    def file(self, name: str) -> Path:
        return self.path / name

    # -- the four calls of a run ----------------------------------------------------------

    def open(
        self,
        args: dict,
        data: dict,
        inputs: Sequence[str | Path],
        *,
        resume: bool,
        overwrite: bool,
    ) -> Start:
        """Check the folder for this run (``args``: args.json's content, ``data``:
        data.json's) and load what a resume continues from; changes nothing. A run
        that cannot start here is a UserError saying why."""
        self._refuse_inputs(inputs)
        self._replace_old_run = overwrite
        if not resume:
            if not overwrite:
                self._refuse_existing()
            return Start.NEW
        start = self._check_resume(args, data)
        if start is Start.CONTINUE:
            state = self._load_resume_state()
            self.history = _history_from(state, self.file(RESUME))
            self.saved_states = {key: state[key] for key in STATE_KEYS}
        elif start is Start.FINISH:
            self.history = _history_from(self.metrics(), self.file(METRICS))
        return start

    def begin(self, start: Start, args: dict, data: dict, val_images: list[dict] | None) -> None:
        """Once set-up has succeeded: clear what a new start replaces, then record
        the flags, the data and the validation images."""
        if not self.writes:
            return
        if start in (Start.CONTINUE, Start.FINISH):
            self._remove_where(_is_temp_of_run_file)  # a kill mid-write leaves its temp file
        elif start is Start.START_OVER or self._replace_old_run:
            self._clear_previous_run()
        self.write_json(ARGS, args)
        self.write_json(DATA, data)
        if val_images:  # evaluate.py --test_json RUN/val_images.json reproduces the val metrics
            self.write_json(VAL_IMAGES, val_images)

    def record(self, record: EpochRecord, is_best: bool, states: Callable[[], dict]) -> None:
        """Add a finished epoch to the history and write its files. ``states()``
        gives the trainer's states (model, optimizer, scaler, torch_rng).

        Order matters for a crash between writes: the resume state goes last, so a
        resume redoes an epoch whose files may be partly written, and rewrites
        them identically."""
        self.history.add(record, is_best)
        if not self.writes:
            return
        needs_weights = is_best or self.save_all_epochs
        saved = states() if needs_weights or record.epoch < self.epochs else {}
        weights = _on_cpu(saved["model"]) if needs_weights else None
        if is_best:
            self.save(BEST, weights)
        if self.save_all_epochs:
            self.save(epoch_checkpoint(record.epoch), weights)
        self.write_json(METRICS, self.history.metrics_json(self.epochs))
        if record.epoch < self.epochs:
            self.save(RESUME, {**self.history.resume_json(), **saved})

    def finish(self, held_out: dict[str, HeldOutResult]) -> None:
        """The run is complete: the held-out results join metrics.json. The resume
        state goes first, so a kill between the two leaves a folder that --resume
        finishes (scores the held-out sets again and marks it complete)."""
        self.history.held_out.update(held_out)
        self.history.completed = True
        if self.writes:
            self._remove_where(lambda name: name == RESUME)
            self.write_json(METRICS, self.history.metrics_json(self.epochs))

    # -- one process at a time ------------------------------------------------------------

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Create the folder if needed and hold its lock for the ``with`` block
        (ranks other than 0 hold nothing).

        The lock is the kernel's (``flock`` on the folder itself), so it leaves
        no file behind and a killed process cannot leave it stuck: the OS
        releases it. A second run on a folder in use is refused at once, naming
        the process that holds it. If the block fails before writing anything,
        a folder this call created is removed again: a failed start leaves nothing.
        """
        if not self.writes:
            yield
            return
        try:
            created = not self.path.exists()
        except OSError as e:  # a name too long, a component that is a file, ...
            raise WriteError(f"cannot use run folder {self.path}: {e.strerror or e}") from None
        self._check_writable()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:  # writable but not readable (mode 0300), ...
            raise WriteError(f"cannot use run folder {self.path}: {e.strerror or e}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(self.path)
                raise UserError(
                    f"{self.path} is in use by another run ({holder}); wait for it to end "
                    "or choose another --checkpoint_dir"
                ) from None
            yield
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only if still empty
            raise
        finally:
            os.close(fd)  # releases the lock

    def _check_writable(self) -> None:
        """Fail early, before any work, when the folder cannot be created or written."""
        if self.path.is_symlink() and not self.path.exists():
            raise WriteError(
                f"run folder {self.path} is a link to nothing ({os.readlink(self.path)})"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create run folder {self.path}: {e.strerror or e}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise WriteError(f"run folder {self.path} is not writable")

    # -- the log ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def logger(self, echo: Callable[[str], None] = print) -> Iterator[logging.Logger]:
        """A logger writing timestamped lines to train.log (rank 0) and echoing them
        through ``echo`` (which lets the caller route lines around a progress bar)."""
        with run_logger(self.file(LOG) if self.writes else None, echo) as log:
            yield log

    # -- files -----------------------------------------------------------------------------

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.file(name), obj)

    def save(self, name: str, obj: Any) -> None:
        save_torch_atomic(self.file(name), obj)

    def read_json(self, name: str, kind: type | None = None) -> Any:
        """A JSON file of the run; with ``kind``, it must hold that type (dict, list)."""
        path = self.file(name)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path} is missing") from None
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror or e}") from None
        except JSON_ERRORS as e:  # bad JSON or bad UTF-8 (a ValueError too)
            raise UserError(f"cannot read {path}: {json_problem(e)}") from None
        if kind is not None and not isinstance(value, kind):
            what = {dict: "an object", list: "a list"}.get(kind, kind.__name__)
            raise UserError(f"{path} is not {what}: not written by train.py")
        return value

    def metrics(self) -> dict:
        """metrics.json, checked to be what train.py writes (an object with an epochs list)."""
        m = self.read_json(METRICS, dict)
        if not isinstance(m.get("epochs"), list) or not all(
            isinstance(e, dict) for e in m["epochs"]
        ):
            raise UserError(f"{self.file(METRICS)} has no list of epochs: not written by train.py")
        return m

    def holds_run(self) -> bool:
        return any(self.file(m).exists() for m in RUN_MARKERS)

    def _is_complete(self) -> bool:
        """Does metrics.json say the run finished? (False when it can't be read.)"""
        try:
            return self.file(METRICS).is_file() and bool(self.metrics().get("completed"))
        except UserError:
            return False

    def _remove_where(self, matches: Callable[[str], bool]) -> None:
        try:
            for f in self.path.iterdir():
                if matches(f.name):
                    f.unlink()
        except OSError as e:
            raise WriteError(f"cannot clean up {self.path}: {e.strerror or e}") from None

    def _clear_previous_run(self) -> None:
        """Remove an earlier run's files; called only once a new run has started cleanly."""
        self._remove_where(lambda name: _is_run_file(name) or _is_temp_of_run_file(name))
        try:  # --tensorboard's event files: a new run must not draw over the old curves
            shutil.rmtree(self.file(BOARD))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise WriteError(f"cannot clean up {self.file(BOARD)}: {e.strerror or e}") from None

    # -- refusals --------------------------------------------------------------------------

    def _refuse_inputs(self, inputs: Sequence[str | Path]) -> None:
        """No run writes over, or clears away, a file it reads (a metadata JSON
        named data.json in the folder, --init_checkpoint RUN/best_model.pkl, ...)."""
        folder = os.path.realpath(self.path)
        for source in inputs:
            real = os.path.realpath(source)
            if os.path.dirname(real) == folder and _is_run_file(os.path.basename(real)):
                raise UserError(
                    f"{source} is an input of this run, but the run folder {self.path} "
                    "writes or clears that file; copy it elsewhere or choose another "
                    "--checkpoint_dir"
                )

    def _refuse_existing(self) -> None:
        if not self.holds_run():
            return
        if self._is_complete():
            raise UserError(
                f"{self.path} holds a finished run; pass --overwrite to replace it "
                "or choose another --checkpoint_dir"
            )
        raise UserError(
            f"{self.path} already holds a run; pass --resume to continue it or "
            "--overwrite to replace it (or choose another --checkpoint_dir)"
        )

    # -- resuming --------------------------------------------------------------------------

    def _check_resume(self, args_now: dict, data_now: dict) -> Start:
        """How ``--resume`` continues this run, or a UserError saying why it cannot.
        A resume never deletes more than START_OVER clears: anything else is
        refused, the folder untouched."""
        results = sorted(n for n in _names(self.path) if _is_result(n))
        keep = "; nothing was changed. Start the run again with --overwrite"
        if not self.file(ARGS).is_file():
            if results:
                raise UserError(
                    f"--resume: {ARGS} is missing from {self.path}, so the run's flags "
                    f"cannot be checked{keep}"
                )
            raise UserError(f"--resume: {self.path} holds no run to continue")
        saved = {**ADDED_SINCE_FIRST_RELEASE, **self.read_json(ARGS, dict)}
        diffs = _differences(saved, args_now, skip=RESUME_MAY_CHANGE)
        if diffs:
            raise UserError(f"--resume: flags differ from {self.file(ARGS)}: " + "; ".join(diffs))
        if self.file(DATA).is_file():
            changed = _data_differences(self.read_json(DATA, dict), data_now)
            if changed:
                raise UserError(
                    f"--resume: the data differs from the run's ({self.file(DATA)}): "
                    + "; ".join(changed)
                )
        elif results:
            raise UserError(
                f"--resume: {DATA} is missing from {self.path}, so the run's data cannot be "
                f"checked{keep} (or restore the file)"
            )
        metrics = self.metrics() if self.file(METRICS).is_file() else None
        if metrics and metrics.get("completed"):
            raise UserError(f"--resume: the run in {self.path} is already complete")
        done = len(metrics["epochs"]) if metrics else 0
        if self.file(RESUME).is_file():
            return Start.CONTINUE
        if metrics and done == args_now.get("epochs") and self.file(BEST).is_file():
            return Start.FINISH
        if not results or (
            metrics and done <= 1 and set(results) <= {METRICS, BEST, epoch_checkpoint(1)}
        ):
            return Start.START_OVER
        raise UserError(
            f"--resume: {self.path} holds results ({', '.join(results)}) but no {RESUME} "
            f"to continue from, so this run cannot be resumed{keep}, or train into another "
            "--checkpoint_dir"
        )

    def _load_resume_state(self) -> dict:
        """The saved state of the last completed epoch, on the CPU (the trainer moves
        each part where it belongs: the RNG state must stay on the CPU).

        Loaded with ``weights_only=True``: a planted file cannot run code. The
        state holds only tensors, numbers, strings, lists and dicts.
        """
        import torch

        path = self.file(RESUME)
        foreign = (
            f"--resume: {path} is not a resume state written by train.py ({{}}); nothing was "
            "changed. Start the run again with --overwrite"
        )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                foreign.format("it holds pickled objects, which are not loaded")
            ) from None
        except Exception as e:  # written atomically: only a damaged disk or a foreign file
            raise UserError(foreign.format(f"unreadable: {type(e).__name__}")) from None
        if not isinstance(state, dict) or not set(state) >= HISTORY_KEYS | STATE_KEYS:
            raise UserError(foreign.format("its contents are not a resume state"))
        best = state.get("best")
        if best and not self.file(BEST).is_file():
            raise UserError(
                f"--resume: {BEST} (epoch {best['epoch']}) is missing from {self.path}, so the "
                "resumed run could not end with its best model; nothing was changed. Start "
                "the run again with --overwrite"
            )
        return state

    def resume_command(self, program: Path, argv: Sequence[str], world_size: int = 1) -> str:
        """The command that continues this run: the same flags, with --resume (and the
        same number of processes: a resume with another world size is refused)."""
        argv = [a for a in argv if a != "--overwrite"]
        if "--resume" not in argv:
            argv.append("--resume")
        if "--checkpoint_dir" not in " ".join(argv):
            argv += ["--checkpoint_dir", str(self.path)]
        # The interpreter that is running (the venv's, say) and the program's path
        # as seen from here: the command works as printed, from this directory.
        launcher = [shell_path(Path(sys.executable))]
        if world_size > 1:
            launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(world_size)]
        return shlex.join([*launcher, shell_path(program), *argv])


def shell_path(path: Path) -> str:
    """``path`` as a command typed here would name it: relative to the working
    directory when it lies below it, else absolute."""
    path = Path(os.path.abspath(path))
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _on_cpu(state_dict: dict) -> dict:
    """A device-independent copy: best_model.pkl loads anywhere without map_location."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def _history_from(saved: dict, source: Path) -> History:
    try:
        return History.from_json(saved)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"--resume: {source} does not hold the epochs train.py writes; nothing was "
            "changed. Start the run again with --overwrite"
        ) from None


def _names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except OSError:
        return []


def _differences(saved: dict, now: dict, skip: frozenset[str] = frozenset()) -> list[str]:
    keys = sorted((set(saved) | set(now)) - skip)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _data_differences(saved: dict, now: dict) -> list[str]:
    """Per set, what differs: the number of images, or their names/labels/sizes."""
    changed = []
    for name in sorted(set(saved) | set(now)):
        a, b = saved.get(name), now.get(name)
        if a is not None and not isinstance(a, dict):
            changed.append(f"{name}: unreadable record {str(a)[:40]!r}")
        elif a is None or b is None:
            changed.append(f"{name} set {'added' if a is None else 'removed'}")
        elif a.get("images") != b.get("images"):
            changed.append(f"{name}: {a.get('images')} -> {b.get('images')} images")
        elif a.get("fingerprint") != b.get("fingerprint"):
            changed.append(f"{name}: same number of images, but names, scores or file sizes differ")
    return changed


def _lock_holder(folder: Path) -> str:
    """Which process holds the lock on ``folder``, from /proc/locks (Linux)."""
    try:
        inode = folder.stat().st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                return f"process {fields[4]}"
    except (OSError, IndexError):
        pass
    return "another process"


# -- train.log ------------------------------------------------------------------------------

_logger_ids = itertools.count()  # one logger per run_logger block, never shared


@contextlib.contextmanager
def run_logger(
    log_path: Path | None, echo: Callable[[str], None] = print
) -> Iterator[logging.Logger]:
    """A logger writing timestamped lines to ``log_path`` (when given) and echoing them."""
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
    # The loaders (pipelines/, which does not import hyperiqa) log to "pipelines.*":
    # their warnings belong in this run's log too.
    loaders = logging.getLogger("pipelines")
    handlers = [h for h in (console, file_handler) if h is not None]
    for target in (logger, loaders):
        for h in handlers:
            target.addHandler(h)
    try:
        yield logger
    finally:
        for h in handlers:
            loaders.removeHandler(h)
            logger.removeHandler(h)
            # Closing flushes: on a full disk that fails again, and must not
            # hide the error that is already on its way out.
            with contextlib.suppress(OSError):
                h.close()
