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

Every file is written to a temporary name in the folder, flushed and renamed
over the old one: a crash or a full disk mid-write leaves the previous version,
never half a file. torch is imported only where a ``.pt``/``.pkl`` is touched,
so the tools that read run folders (hyperiqa/run_summary.py) start instantly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hyperiqa.atomic import temp_name_of, write_atomic
from hyperiqa.errors import JSON_ERRORS, UserError, json_problem

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


class WriteError(UserError):
    """A file of the run could not be written (full disk, permissions)."""


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch_{epoch}.pkl"


# -- what a run remembers between epochs ----------------------------------------


@dataclass
class History:
    """The per-epoch records, the best epoch and the final scores: metrics.json,
    and part of the resume state."""

    epoch: int = 0  # last completed epoch
    best: dict | None = None  # {"epoch", "val_srcc", "val_plcc"}
    epochs: list[dict] = field(default_factory=list)
    scores: dict[str, dict] = field(default_factory=dict)  # "test" and --eval_json sets
    completed: bool = False

    def add(self, row: dict, improved: bool) -> None:
        if improved:
            self.best = {k: row[k] for k in ("epoch", "val_srcc", "val_plcc")}
        self.epochs.append(row)
        self.epoch = row["epoch"]

    def metrics_json(self, epochs_planned: int) -> dict:
        out = {
            "epochs_planned": epochs_planned,
            "completed": self.completed,
            "best": self.best,
            "epochs": self.epochs,
        }
        if "test" in self.scores:
            out["test"] = self.scores["test"]
        cross = {k: v for k, v in self.scores.items() if k != "test"}
        if cross:
            out["eval"] = cross
        return out


# -- writing ---------------------------------------------------------------------


def _is_run_file(name: str) -> bool:
    return name in (*RUN_MARKERS, LOG) or _is_result(name)


def _is_result(name: str) -> bool:
    """A file that holds what training produced (not its set-up records or the log)."""
    return name in (METRICS, BEST) or (name.startswith("epoch_") and name.endswith(".pkl"))


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


def write_json_output(path: Path, obj: Any, flag: str) -> None:
    """Write a tool's JSON output (``flag`` names the option that chose ``path``),
    creating its folder; a folder that can't be made is one line naming the flag."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the folder of {flag} {path}: {e.strerror or e}") from None
    write_json_atomic(path, obj)


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

    def refuse_inputs(self, inputs: Sequence[str | Path]) -> None:
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

    def refuse_existing(self) -> None:
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

    def clear_previous_run(self) -> None:
        """Remove an earlier run's files; called only once a new run has started cleanly."""
        self._remove_where(lambda name: _is_run_file(name) or _is_temp_of_run_file(name))
        try:  # --tensorboard's event files: a new run must not draw over the old curves
            shutil.rmtree(self.file(BOARD))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise WriteError(f"cannot clean up {self.file(BOARD)}: {e.strerror or e}") from None

    def remove_stale_temps(self) -> None:
        """Remove half-written temp files: a kill mid-write skips their cleanup."""
        self._remove_where(_is_temp_of_run_file)

    def remove(self, name: str) -> None:
        self._remove_where(lambda n: n == name)

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.file(name), obj)

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

    # -- one process at a time ------------------------------------------------------

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Create the folder if needed and hold its lock for the ``with`` block.

        The lock is the kernel's (``flock`` on the folder itself), so it leaves
        no file behind and a killed process cannot leave it stuck: the OS
        releases it. A second run on a folder in use is refused at once, naming
        the process that holds it. If the block fails before writing anything,
        a folder this call created is removed again: a failed start leaves nothing.
        """
        try:
            created = not self.path.exists()
        except OSError as e:  # a name too long, a component that is a file, ...
            raise WriteError(f"cannot use run folder {self.path}: {e.strerror or e}") from None
        self.check_writable()
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

    # -- resuming ------------------------------------------------------------------

    def check_resume(self, args_now: dict, data_now: dict, speed_flags: frozenset[str]) -> str:
        """How ``--resume`` continues this run, or a UserError saying why it cannot.

        Returns "continue" (from resume_state.pt), "finish" (every epoch is done;
        only the final scoring of the test sets is missing) or "start_over"
        (there is nothing to continue from, and nothing beyond epoch 1 to lose:
        the run stopped before or while saving its first epoch, which is then
        recomputed identically). A resume never deletes more than that:
        anything else is refused, the folder untouched.
        """
        results = sorted(n for n in _names(self.path) if _is_result(n))
        keep = "; nothing was changed. Start the run again with --overwrite"
        if not self.file(ARGS).is_file():
            if results:
                raise UserError(
                    f"--resume: {ARGS} is missing from {self.path}, so the run's flags "
                    f"cannot be checked{keep}"
                )
            raise UserError(f"--resume: {self.path} holds no run to continue")
        diffs = _differences(self.read_json(ARGS, dict), args_now, skip=speed_flags)
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
            return "continue"
        if metrics and done == args_now.get("epochs") and self.file(BEST).is_file():
            return "finish"
        if not results or (
            metrics and done <= 1 and set(results) <= {METRICS, BEST, epoch_checkpoint(1)}
        ):
            return "start_over"
        raise UserError(
            f"--resume: {self.path} holds results ({', '.join(results)}) but no {RESUME} "
            f"to continue from, so this run cannot be resumed{keep}, or train into another "
            "--checkpoint_dir"
        )

    def metrics(self) -> dict:
        """metrics.json, checked to be what train.py writes (an object with an epochs list)."""
        m = self.read_json(METRICS, dict)
        if not isinstance(m.get("epochs"), list) or not all(
            isinstance(e, dict) for e in m["epochs"]
        ):
            raise UserError(f"{self.file(METRICS)} has no list of epochs: not written by train.py")
        return m

    def resume_command(self, argv: Sequence[str], world_size: int = 1) -> str:
        """The command that continues this run: the same flags, with --resume (and the
        same number of processes: a resume with another world size is refused)."""
        argv = [a for a in argv if a != "--overwrite"]
        if "--resume" not in argv:
            argv.append("--resume")
        if "--checkpoint_dir" not in " ".join(argv):
            argv += ["--checkpoint_dir", str(self.path)]
        # The interpreter that is running (the venv's, say): the command works as printed.
        launcher = [interpreter()]
        if world_size > 1:
            launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(world_size)]
        return shlex.join([*launcher, "train.py", *argv])

    def load_resume_state(self, device: Any) -> dict:
        """The saved state of the last completed epoch.

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
            state = torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                foreign.format("it holds pickled objects, which are not loaded")
            ) from None
        except Exception as e:  # written atomically: only a damaged disk or a foreign file
            raise UserError(foreign.format(f"unreadable: {type(e).__name__}")) from None
        if not isinstance(state, dict) or not set(state) >= RESUME_KEYS:
            raise UserError(foreign.format("its contents are not a resume state"))
        best = state.get("best")
        if best and not self.file(BEST).is_file():
            raise UserError(
                f"--resume: {BEST} (epoch {best['epoch']}) is missing from {self.path}, so the "
                "resumed run could not end with its best model; nothing was changed. Start "
                "the run again with --overwrite"
            )
        return state

    def history(self) -> History:
        """The history metrics.json records (for a run whose epochs are all done)."""
        m = self.metrics()
        return History(epoch=len(m["epochs"]), best=m.get("best"), epochs=m["epochs"])


def _names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except OSError:
        return []


def _differences(saved: dict, now: dict, skip: frozenset[str] = frozenset()) -> list[str]:
    keys = sorted((set(saved) | set(now)) - skip)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _data_differences(saved: dict, now: dict) -> list[str]:
    """Per set, what differs: the number of images, or their names/scores/sizes."""
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


def interpreter() -> str:
    """sys.executable, relative to the working directory when it lies below it."""
    path = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


# What resume_state.pt holds (resume_state below, with the trainer's states).
RESUME_KEYS = frozenset({"epoch", "best", "epochs", "model", "optimizer", "scaler", "torch_rng"})


def resume_state(history: History, **states: Any) -> dict:
    """What resume_state.pt holds: the history plus the named states
    (model, optimizer, scaler, torch_rng)."""
    return {"epoch": history.epoch, "best": history.best, "epochs": history.epochs, **states}


def history_of(state: dict) -> History:
    return History(epoch=state["epoch"], best=state["best"], epochs=state["epochs"])
