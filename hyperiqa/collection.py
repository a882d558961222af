"""Scoring a collection with a checkpoint: predict.py's run, below its command line.

    summary = score_collection("best_model.pkl", ["photos/"], ["more.txt"],
                               OutputFile("scores.csv", resume=True))

The cheap refusals come first, so nothing is loaded or written in vain: join
torchrun's process group (when started by torchrun); on rank 0 check the
``--list`` files and the output (one that exists without --resume/--overwrite, a
folder, a read-only place, on --resume a file predict.py did not write); load the
checkpoint on every rank; only then open the output (cut a torn last row, empty an
--overwrite'd file) and stream. Rank 0 reads the inputs, skips the images the
output already holds, and writes every rank's rows in input order
(hyperiqa/streaming.py says how the work is shared and bad files handled).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hyperiqa.arg_types import format_resize
from hyperiqa.distributed import on_all_ranks, run_on_main
from hyperiqa.errors import UserError
from hyperiqa.inputs import STDIN, Entry, check_lists, iter_entries
from hyperiqa.model import PATCH_SIZE
from hyperiqa.progress import progress_bar
from hyperiqa.runtime import resolve_runtime
from hyperiqa.score_output import Done, ScoreRow
from hyperiqa.scorer import crop_settings, load_checkpoint
from hyperiqa.streaming import (
    CHUNK_IMAGES,
    ChunkScorer,
    ImageChecks,
    StopFlag,
    chunk_size,
    rows_window,
    stream_rows,
    stream_rows_distributed,
)


class RowSink(Protocol):
    """Where rank 0 puts the rows: the output file (hyperiqa/score_output.py's
    OutputFile) or predict.py's standard output."""

    def prepare(self, inputs: Sequence[Path], window: int) -> Done:
        """Before any work: refuse what cannot be written; the rows already done
        (``window``: the rows written at a time, see score_output.read_back)."""
        ...

    def begin(self, settings: Callable[[], Mapping[str, object]]) -> str | None:
        """After the checkpoint loaded: start writing rows scored with ``settings()``
        (a --resume'd file must hold rows scored the same way; a sink that keeps no
        record need not ask: it costs a read of the checkpoint); a line to say, or None."""
        ...

    def write(self, rows: Sequence[ScoreRow]) -> None: ...

    def close(self) -> None: ...


@dataclass
class Summary:
    """What a run did (on rank 0; the other ranks' summary is empty)."""

    scored: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output (--resume)
    failed_before: int = 0  # failed rows the output already held (--resume)
    unmatched: int = 0  # rows of the output that no input named (other inputs?)
    seconds: float = 0.0
    stopped: bool = False  # a stop request ended the run early, at a window boundary
    started: bool = False  # the output was opened: rows may be in it (--resume continues)
    world_size: int = 1
    rank: int = 0

    @property
    def images_per_s(self) -> float:
        return (self.scored + self.failed) / self.seconds if self.seconds > 0 else 0.0


def score_collection(
    checkpoint: str | Path,
    paths: Sequence[str],
    lists: Sequence[str],
    sink: RowSink,
    *,
    device: str = "auto",
    loader: str = "auto",
    num_workers: int | None = None,
    batch_size: int = 96,
    resize: tuple[int, int] | None = None,
    patch_num: int | None = None,
    patch_size: int = PATCH_SIZE,
    chunk_images: int | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = False,
    stop: Callable[[], bool] = lambda: False,
    deferring: Callable[[], AbstractContextManager] = nullcontext,
    summary: Summary | None = None,
) -> Summary:
    """Score every image of ``paths`` (files, folders) and ``lists`` into ``sink``.

    Under torchrun every rank calls this; rank 0 alone reads the inputs and writes.
    ``stop()`` is asked at window (or, with several ranks, chunk) boundaries: True
    ends the run there, with everything scored so far written; ``deferring()`` is
    the context the stream runs in (predict.py's: a Ctrl-C there only asks to stop).
    ``summary`` is filled in as the run goes, so a caller sees the counts also when
    an error ends it: before ``started`` nothing was written; after, the rows
    written so far stand (a --resume continues them).
    """
    rt = resolve_runtime(
        device=device,
        loader=loader,
        num_workers=num_workers,
        batch_size=batch_size,
        distributed=True,
    )
    info = rt.dist
    say = echo if info.is_main else (lambda _line: None)
    done: Counter = Counter()

    # The crops come from the run's args.json (cheap): the rows window depends on them.
    resize, patch_num = crop_settings(checkpoint, resize, patch_num, say)
    window = rows_window(rt.batch_per_rank, patch_num)

    def prepare_output() -> None:
        check_lists(lists)
        # What the run reads by name (not the files of folders and lists: unbounded,
        # and a walk only keeps image extensions, never .csv or .jsonl).
        reads = [Path(checkpoint), *(Path(x) for x in (*lists, *paths) if x != STDIN)]
        before = sink.prepare(reads, window)
        done.update(before.names)
        summary.failed_before = before.failed

    summary = summary if summary is not None else Summary()
    summary.world_size, summary.rank = info.world_size, info.rank
    run_on_main(info, prepare_output)  # a refusal reaches every rank: none waits
    checks: ImageChecks | None = None
    scorer: ChunkScorer | None = None
    bar = None
    try:
        # Started before the checkpoint loads: the check workers fork a process without CUDA.
        checks = ImageChecks(rt.num_workers)
        model = on_all_ranks(info, lambda: load_checkpoint(checkpoint, rt))
        say(rt.loader_reason)
        show = progress and info.is_main
        bar = progress_bar(desc="scoring", unit="img", show=show)
        if show and all(_rereadable(x) for x in lists):
            _count_in_background(paths, lists, bar, already=sum(done.values()))
        scorer = ChunkScorer(
            model,
            rt,
            resize=resize,
            patch_num=patch_num,
            patch_size=patch_size,
            checks=checks,
            # One rank's batches say little about all ranks': there the bar moves per round.
            on_patches=None if info.enabled else bar.update,
        )

        def settings() -> dict[str, object]:
            return {
                "checkpoint_sha256": _sha256(checkpoint),
                "resize": format_resize(resize),
                "patch_num": patch_num,
                "patch_size": patch_size,
                "loader": rt.loader,
            }

        # Rank 0 opens the output; all ranks hear if that fails.
        repaired = run_on_main(info, lambda: sink.begin(settings))
        summary.started = True
        if repaired:
            say(repaired)
        entries = _skip_done(iter_entries(paths, lists, say), done, summary)
        size = chunk_size(scorer.window, chunk_images or CHUNK_IMAGES)
        flag = StopFlag(stop)
        if info.enabled:
            stream = stream_rows_distributed(
                scorer, entries if info.is_main else None, size, info, flag
            )
        else:
            stream = stream_rows(scorer, entries, size, flag)
        start = time.perf_counter()
        # closing(): an error here closes the stream at once, which lets the other
        # ranks go (hyperiqa/streaming.py) instead of waiting for the next chunk.
        with deferring(), contextlib.closing(stream):
            for rows in stream:
                sink.write(rows)
                failed = sum(row.error is not None for row in rows)
                summary.scored += len(rows) - failed
                summary.failed += failed
                summary.seconds = time.perf_counter() - start
                bar.update(len(rows) if info.enabled else failed)
        summary.stopped = flag.stopped
        if not flag.stopped:
            summary.unmatched = sum(done.values())
    finally:
        if bar is not None:
            bar.close()
        if scorer is not None:
            scorer.close()
        if checks is not None:
            checks.close()
        if info.is_main:
            sink.close()
    return summary


def _sha256(path: str | Path) -> str:
    """The checkpoint's identity in the output's settings (a retrained model at the
    same path is another model)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    return digest.hexdigest()


def _rereadable(listed: str) -> bool:
    """A --list the progress bar's count may read a second time: a regular file, not
    standard input or a pipe (a second reader would take lines from the run)."""
    try:
        return listed != STDIN and stat.S_ISREG(os.stat(listed).st_mode)
    except OSError:
        return False


def _skip_done(entries: Iterable[Entry], done: Counter, summary: Summary) -> Iterator[Entry]:
    """The entries the output does not hold yet: each row there stands for one
    occurrence of its image (a twice-listed image has two rows when done)."""
    for entry in entries:
        if done.get(entry.path, 0) > 0:
            done[entry.path] -= 1
            if not done[entry.path]:
                del done[entry.path]  # the done set shrinks as the resumed run passes it
            summary.skipped += 1
            continue
        yield entry


def _count_in_background(paths: Sequence[str], lists: Sequence[str], bar, already: int) -> None:
    """Give the progress bar its total (and so an ETA) once a second pass over the
    inputs has counted them, without delaying the scoring."""

    def count() -> None:
        try:
            total = sum(1 for _ in iter_entries(paths, lists, note=lambda _line: None))
        except Exception:  # an input that vanished: the bar simply has no total
            return
        bar.total = max(total - already, 0)
        bar.refresh()

    threading.Thread(target=count, name="count-inputs", daemon=True).start()
