"""Scoring a stream of image paths in this process: chunks in, rows out in input order.

predict.py (through hyperiqa/collection.py) and ``Scorer.stream`` score this way:

- Chunks and windows. The stream is cut into chunks of about a thousand images
  (``chunk_size``), each one plan for the runtime's loader, so DALI keeps
  decoding ahead across a chunk; a chunk's rows come out a rows window at a time
  (``rows_window``: the fewest images whose patches fill whole batches, 96 at the
  defaults), as soon as the window's last patch is predicted: one host copy per
  window, never per image. Memory holds the paths of two chunks and a decode
  window or two of patches, however long the stream.
- The scores are evaluate.py's: the eval plan's crops (the same for every image),
  the loaders of training, the per-image mean of hyperiqa/scoring.py.
- Bad files never stop the stream. Every image first passes ``check_image``, the
  gate train.py and evaluate.py apply, so the Pillow and DALI loaders accept and
  refuse the same files (a truncated JPEG one decoder would half-read is refused
  by both). The checks run in ``num_workers`` processes a chunk ahead of the
  model, overlapping its forward passes. A file that still breaks the loader
  after passing (changed since its check, or one DALI's decoder refuses though
  Pillow reads it) ends the chunk's plan: the rows already out stand, the loader
  rebuilds DALI's dead pipeline on its next plan, and the rest of the chunk is
  scored one image at a time, each file that fails again getting the loader's
  message as its error. No error-message parsing, and only a rare chunk pays.
- Ranks (``stream_rows_distributed``): rank 0 alone reads the input; each round
  it deals one chunk to every rank (a broadcast of path lists), every rank scores
  its chunk with its own loader and device, and the rows are gathered back, so
  rank 0 gets them in rank order, which is input order, and writes one file. A
  stop request or an error on any rank travels with the gathered rows, so every
  rank leaves after the same round instead of waiting on the others.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hyperiqa.distributed import DistInfo, fail_on_main, run_on_main
from hyperiqa.errors import USER_ERRORS, UserError
from hyperiqa.inputs import Entry
from hyperiqa.model import PATCH_SIZE
from hyperiqa.runtime import Runtime
from hyperiqa.score_output import ScoreRow
from hyperiqa.scoring import check_finite, per_image_mean
from pipelines.errors import LoaderError
from pipelines.factory import make_loader
from pipelines.images import check_image, ignore_interrupt
from pipelines.loader import LoaderSettings
from pipelines.patches import EVAL_SEED, eval_plan

EVAL_WINDOW = 32  # images decoded together (the loader's window); crops do not depend on it
CHUNK_IMAGES = 1024  # about this many images per chunk (per rank and round, with torchrun)


class ImageChecks:
    """``check_image`` over a chunk of paths: in ``workers`` processes, started at once
    and running ahead of the model, or (0 workers) in this process when the chunk's
    rows are asked for."""

    def __init__(self, workers: int) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.workers = workers
        if workers > 0:
            # Workers ignore Ctrl-C: the main process stops them itself.
            self.pool = ProcessPoolExecutor(workers, initializer=ignore_interrupt)
            # A fork-started pool forks all its workers at the first task: do it now,
            # before this process has DALI's threads or a CUDA context to copy.
            self.pool.submit(int).result()

    def submit(self, paths: list[str]) -> Callable[[], list[str | None]]:
        """Start checking ``paths``; the returned call gives each one's reason (None: usable)."""
        if self.pool is None or not paths:
            return lambda: [check_image(p) for p in paths]
        per_task = max(1, min(16, len(paths) // (4 * self.workers)))
        results = self.pool.map(check_image, paths, chunksize=per_task)
        return lambda: list(results)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


@dataclass
class Prepared:
    """A chunk whose image checks are under way."""

    entries: list[Entry]
    reasons: Callable[[], list[str | None]]  # one per entry without an error already


class StopFlag:
    """When a stream should stop early (asked at window or round boundaries), and
    whether it did."""

    def __init__(self, requested: Callable[[], bool] = lambda: False) -> None:
        self.requested = requested
        self.stopped = False


def one_line(error: BaseException) -> str:
    """An error as a row's reason: one line."""
    return " ".join(str(error).split()) or type(error).__name__


class ChunkScorer:
    """Scores chunks of paths in this process: check, decode (the runtime's loader),
    forward, mean per image. ``on_patches(k)`` hears each forward batch as ``k``
    images' worth of patches (a progress bar); ``checks=None`` skips the image check
    (the benchmark's synthetic ceiling, which reads no files).

    Rows come out a window of ``rows_window`` entries at a time; the forward batches
    are cut afresh at each window's start (the loader's batches run on across the
    chunk and are re-cut), so a window's scores depend only on its own images, not on
    where the run started: a resumed run, which starts at a window boundary of the
    run it continues, cuts the same batches and writes the same bytes. The window is
    a whole number of batches (``rows_window``), so when every image is good the
    cuts are exactly those of one continuous stream (evaluate.py's).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        rt: Runtime,
        *,
        resize: tuple[int, int],
        patch_num: int,
        patch_size: int = PATCH_SIZE,
        checks: ImageChecks | None = None,
        on_patches: Callable[[float], None] | None = None,
        loader_settings: LoaderSettings | None = None,
    ) -> None:
        self.model, self.rt = model, rt
        self.resize, self.patch_num, self.patch_size = resize, patch_num, patch_size
        self.checks, self.on_patches = checks, on_patches
        self.window = rows_window(rt.batch_per_rank, patch_num)
        # loader_settings: the benchmark's DALI CPU backend on a GPU machine (patches
        # delivered to the host, then copied to the model's device per batch).
        settings = loader_settings or rt.loader_settings(resize)
        self.loader = make_loader(rt.loader, [], settings)

    def prepare(self, entries: list[Entry]) -> Prepared:
        """Start the checks of a chunk (in the worker processes, while another chunk scores)."""
        paths = [e.path for e in entries if e.error is None]
        if self.checks is None:
            return Prepared(entries, lambda: [None] * len(paths))
        return Prepared(entries, self.checks.submit(paths))

    def rows(self, chunk: Prepared) -> Iterator[list[ScoreRow]]:
        """The chunk's rows in input order, a window at a time."""
        checked = iter(chunk.reasons())
        entries = chunk.entries
        errors = [e.error if e.error is not None else next(checked) for e in entries]
        errors = [None if e is None else " ".join(e.split()) for e in errors]  # one line each
        size = self.window
        windows = [range(s, min(s + size, len(entries))) for s in range(0, len(entries), size)]
        scores: dict[int, float] = {}

        def rows_of(window: range) -> list[ScoreRow]:
            return [ScoreRow(entries[i].path, scores.pop(i, None), errors[i]) for i in window]

        w = 0
        while w < len(windows):
            good = [[i for i in window if errors[i] is None] for window in windows[w:]]
            paths = [entries[i].path for window_good in good for i in window_good]
            windows_scores = self._scores(paths, [len(g) for g in good])
            try:
                with contextlib.closing(windows_scores):
                    for k, window_scores in enumerate(windows_scores):
                        scores.update(zip(good[k], map(float, window_scores), strict=True))
                        yield rows_of(windows[w])
                        w += 1
            except LoaderError:
                # A file broke the loader although it passed its check (changed since,
                # or refused by DALI's decoder alone). The rows so far stand; this
                # window's images are scored one by one (a file failing again gets
                # the loader's message), then the next windows as a new plan. The
                # loader rebuilds a dead DALI pipeline for it. With decoding ahead the
                # culprit may sit in a later window: that one then fails in its turn.
                for i in [i for i in windows[w] if errors[i] is None]:  # this window's
                    try:
                        (one,) = self._scores([entries[i].path], [1])
                        scores[i] = float(one[0])
                    except LoaderError as e:
                        errors[i] = one_line(e)
                yield rows_of(windows[w])
                w += 1

    def _scores(self, paths: list[str], counts: list[int]) -> Iterator[np.ndarray]:
        """The scores of ``paths``, for each window the next ``counts[w]`` of them."""
        p, per_batch = self.patch_num, self.rt.batch_per_rank
        if not paths:
            yield from (np.zeros(0) for _ in counts)
            return
        plan = eval_plan(
            len(paths),
            seed=EVAL_SEED,
            patches_per_image=p,
            patch_size=self.patch_size,
            resize=self.resize,
            window=EVAL_WINDOW,  # the decode window (DALI's batch); rows windows are ours
        )
        self.loader.use_paths([Path(x) for x in paths])
        rt, model = self.rt, self.model
        batches = self.loader.batches(plan)
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # loader patches not yet used
        done = 0  # images scored
        with contextlib.closing(batches):
            for count in counts:
                preds, idx = [], []
                need = count * p
                while need:
                    take = min(per_batch, need)
                    images, image_idx = _take(pending, take, batches)
                    images = images.to(rt.device, non_blocking=True)  # no-op: the same device
                    with torch.inference_mode(), rt.autocast():
                        preds.append(model(rt.prepare_input(images)).float())
                    idx.append(image_idx)
                    need -= take
                    if self.on_patches is not None:
                        self.on_patches(take / p)
                if not count:
                    yield np.zeros(0)
                    continue
                with torch.inference_mode():
                    # The window's one device-to-host copy (a sync per window, never
                    # per image), then the mean of training and evaluate.py.
                    window_pred = torch.cat(preds).cpu().numpy().astype(np.float64)
                    window_idx = torch.cat(idx).cpu().numpy() - done
                scores = per_image_mean(window_pred, window_idx, count)
                yield check_finite(scores, paths[done : done + count])
                done += count
        if pending or done != len(paths):
            raise RuntimeError(f"the loader's patches do not match the plan of {len(paths)} images")

    def close(self) -> None:
        self.loader.close()


def rows_window(batch_per_rank: int, patch_num: int) -> int:
    """Entries per rows window: the fewest images whose patches fill whole batches."""
    return batch_per_rank // math.gcd(batch_per_rank, patch_num)


def chunk_size(window: int, target: int = CHUNK_IMAGES) -> int:
    """Images per chunk: a whole number of rows windows, near ``target``."""
    return max(1, round(target / window)) * window


def _take(
    pending: list[tuple[torch.Tensor, torch.Tensor]], k: int, batches: Iterator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next ``k`` patches (and image indices) of the loader's stream. When the
    loader's batches and ours line up (every image good) a batch passes as it is."""
    have = sum(len(x) for x, _ in pending)
    while have < k:
        batch = next(batches, None)
        if batch is None:
            raise RuntimeError("the loader delivered fewer patches than its plan")
        pending.append((batch.images, batch.image_idx))
        have += len(batch.images)
    if len(pending[0][0]) == k:
        return pending.pop(0)
    images = torch.cat([x for x, _ in pending])
    image_idx = torch.cat([i for _, i in pending])
    pending.clear()
    if len(images) > k:
        pending.append((images[k:], image_idx[k:]))
    return images[:k], image_idx[:k]


def _chunks(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    it = iter(entries)
    while chunk := list(islice(it, size)):
        yield chunk


def stream_rows(
    scorer: ChunkScorer,
    entries: Iterable[Entry],
    size: int,
    stop: StopFlag | None = None,
) -> Iterator[list[ScoreRow]]:
    """Rows of every entry, a window at a time, in input order. The next chunk's checks
    start before this one scores. ``stop.requested()`` is asked after each window is
    taken: True ends the stream there (a Ctrl-C stops at a window boundary)."""
    stop = stop or StopFlag()
    chunks = _chunks(entries, size)
    current = next(chunks, None)
    prepared = scorer.prepare(current) if current else None
    while prepared is not None:
        following = next(chunks, None)
        prepared_next = scorer.prepare(following) if following else None
        windows = scorer.rows(prepared)
        with contextlib.closing(windows):
            for rows in windows:
                yield rows
                if stop.requested():
                    stop.stopped = True
                    return
        prepared = prepared_next


def stream_rows_distributed(
    scorer: ChunkScorer,
    entries: Iterable[Entry] | None,
    size: int,
    info: DistInfo,
    stop: StopFlag | None = None,
) -> Iterator[list[ScoreRow]]:
    """The rows of every entry, scored by all ranks; rank 0 gets them (a rank's chunk
    at a time, in input order), the other ranks nothing. ``entries``: rank 0's input
    (None elsewhere). Every rank must call this, and keep iterating to the end."""
    stop = stop or StopFlag()
    it = iter(entries) if info.is_main and entries is not None else iter(())

    def deal() -> list[list[Entry]]:
        """The next chunk of each rank, read by rank 0; a failure to read the input (a
        --list deleted since its check) reaches every rank, so none waits for rows."""
        return run_on_main(info, lambda: [list(islice(it, size)) for _ in range(info.world_size)])

    hand = deal()
    prepared = scorer.prepare(hand[info.rank])
    while any(hand):
        following = deal()
        rows: list[ScoreRow] = []
        error: str | None = None
        failure: Exception | None = None
        try:
            prepared_next = scorer.prepare(following[info.rank])
            rows = [row for window in scorer.rows(prepared) for row in window]
        except USER_ERRORS as e:
            error = str(e)
        except Exception as e:  # a bug: the other ranks stop too, this one keeps its traceback
            error, failure = f"rank {info.rank} failed: {type(e).__name__}: {e}", e
        gathered: list[tuple[list[ScoreRow], bool, str | None] | None] = [None] * info.world_size
        dist.all_gather_object(gathered, (rows, stop.requested(), error))
        if failure is not None:
            raise failure
        first_error = next((g[2] for g in gathered if g and g[2]), None)
        if first_error:
            raise UserError(first_error)
        ending = any(g[1] for g in gathered if g)  # a rank was asked to stop
        if info.is_main:
            try:
                for rank_rows, _, _ in gathered:  # type: ignore[misc]
                    yield rank_rows
            except GeneratorExit:
                # Rank 0's consumer failed (a full disk, standard output closed, a
                # second Ctrl-C): the other ranks wait in the next deal; release them.
                if any(following) and not ending:
                    fail_on_main(info, "rank 0 stopped; its message says why")
                raise
        if ending:
            stop.stopped = True
            return
        hand, prepared = following, prepared_next
