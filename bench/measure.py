"""The benchmark's measuring engine: what a row feeds, how it is timed, what it reports.

Loader and train rows drive a loader through the interface the trainer uses
(``loader.batches(plan)``): our Pillow and DALI loaders, the original release's
per-patch scheme (``original_loader.py``) and the synthetic loader (random
patches already on the device, the model's ceiling). Loader rows consume each
batch by waiting for it on the device; train rows run the trainer's own
``TrainStep`` on it, targets looked up by image index as in training.

Score rows run predict.py's own scorer (hyperiqa/streaming.py: image checks a
chunk ahead, the loader, forward passes, a host copy per rows window) over the
files, cycled; ``score/synthetic`` runs it on the synthetic loader without
checks: forward passes on patches already on the device, the scoring ceiling.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hyperiqa.config import DEFAULT_LR, DEFAULT_LR_RATIO, DEFAULT_WEIGHT_DECAY
from hyperiqa.fit import TrainStep, make_optimizer
from hyperiqa.inputs import Entry
from hyperiqa.model import PATCH_SIZE, build_model
from hyperiqa.runtime import Runtime
from hyperiqa.streaming import ChunkScorer, ImageChecks, chunk_size, rows_window, stream_rows
from original_loader import OriginalSchemeLoader
from pipelines.factory import dali_available, make_loader
from pipelines.loader import LoaderSettings, PatchLoader
from pipelines.patches import PatchPlan, train_plan
from procstat import RowMonitor

# Warnings (one line each) go to stderr, the bench's log, unless logging is set up.
log = logging.getLogger(__name__)

SEED = 42
# A KonIQ-10k run on prepare_koniq.py's random split: 7,252 train, 806 val images.
KONIQ_TRAIN_IMAGES = 7252
KONIQ_VAL_IMAGES = 806
KONIQ_EPOCHS = 16
# Validation is a forward pass only (no backward, no optimiser step): about 3x
# the training speed in patches/s. An assumption, not a measurement.
VAL_SPEEDUP = 3.0


@dataclass
class Setup:
    """What every row of one benchmark run shares."""

    rt: Runtime
    paths: list[Path]  # one epoch's images (files cycled to the epoch size)
    scores: np.ndarray
    files: int  # distinct files behind ``paths``
    mean_file_bytes: float
    patch_num: int
    resize: tuple[int, int]
    seconds: float  # measured seconds per row
    warmup: int | None  # batches before measuring (None: the row's default)
    patch_limit: int  # also stop a row after this many patches (0: time only)
    patch_size: int = PATCH_SIZE
    model: torch.nn.Module | None = None

    @property
    def batch_size(self) -> int:
        return self.rt.batch_per_rank

    def sync(self) -> None:
        if self.rt.cuda:
            torch.cuda.synchronize(self.rt.device)

    def settings(self, *, device: torch.device | None = None, workers: int | None = None):
        settings = self.rt.loader_settings(self.resize)
        changes = {"device": device, "num_workers": workers}
        return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})

    def plan(self, epoch: int) -> PatchPlan:
        return train_plan(
            len(self.paths),
            seed=SEED,
            epoch=epoch,
            patches_per_image=self.patch_num,
            patch_size=self.patch_size,
            resize=self.resize,
            window=self.batch_size,  # train.py's default shuffle window
        )


class Skip(Exception):
    """The row cannot run here (e.g. DALI missing); the message says why."""


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "original", "pillow", "dali" or "synthetic"
    train: bool
    note: str = ""
    device: torch.device | None = None  # deliver elsewhere than the runtime's device
    workers: int | None = None  # another Pillow worker count
    cudnn_benchmark: bool | None = None  # None: the runtime's setting (on, on CUDA)
    score: bool = False  # predict.py's scorer, forward only (a score row)

    def decodes_per_image(self, patch_num: int) -> float:
        """By construction: the original scheme decodes per patch, synthetic never, ours once."""
        return {"original": float(patch_num), "synthetic": 0.0}.get(self.kind, 1.0)


def open_loader(setup: Setup, row: Row) -> PatchLoader:
    settings: LoaderSettings = setup.settings(device=row.device, workers=row.workers)
    if row.kind == "original":
        return OriginalSchemeLoader(setup.paths, settings)
    if row.kind == "dali" and not dali_available():
        raise Skip("DALI unavailable (nvidia-dali not installed)")
    return make_loader(row.kind, setup.paths, settings)


def endless(setup: Setup, loader: PatchLoader, device: torch.device) -> Iterator:
    """(images, image_idx) on the runtime's device, epoch after epoch."""
    epoch = 0
    while True:
        epoch += 1
        for batch in loader.batches(setup.plan(epoch)):
            yield batch.images.to(device), batch.image_idx.to(device)


class TrainConsumer:
    """The trainer's step on each batch, targets looked up on the device as in training."""

    def __init__(self, setup: Setup) -> None:
        model = get_model(setup)
        model.train()
        # A default run's optimiser (train.py's defaults); its settings do not change speed.
        optimizer = make_optimizer(
            model, lr=DEFAULT_LR, lr_ratio=DEFAULT_LR_RATIO, weight_decay=DEFAULT_WEIGHT_DECAY
        )
        net = torch.compile(model) if setup.rt.compile else model
        self.step = TrainStep(net, optimizer, setup.rt)
        self.targets = torch.tensor(setup.scores, dtype=torch.float32, device=setup.rt.device)
        # Summed on the device as the trainer sums its epoch loss: the same per-step work.
        self.loss_sum = torch.zeros((), device=setup.rt.device)
        if not setup.rt.cuda and setup.warmup is None:
            # The first CPU steps are slow (allocator, oneDNN kernel setup): take
            # one here so the first train row does not pay more than the others.
            b, s = setup.batch_size, setup.patch_size
            self(torch.randn(b, 3, s, s), torch.zeros(b, dtype=torch.int64))

    def __call__(self, images: torch.Tensor, image_idx: torch.Tensor) -> None:
        targets = self.targets[image_idx]
        _, loss = self.step(images, targets)
        self.loss_sum += loss * targets.shape[0]


def get_model(setup: Setup) -> torch.nn.Module:
    if setup.model is None:
        torch.manual_seed(SEED)
        setup.model = setup.rt.prepare_model(build_model("none"))  # speed does not care
    return setup.model


def measure(setup: Setup, row: Row, consume: Callable) -> dict:
    """Warm up, then feed ``consume`` for ``setup.seconds``; one result row."""
    _start_memory_afresh(setup.rt)
    result: dict = {"name": row.name}
    window_batches = setup.patch_num  # a shuffle window: batch_size images x patch_num patches
    # A row may run with cuDNN's autotuner the other way round; the next row gets
    # the runtime's setting back (bench rows share one model and one process).
    rt = setup.rt
    if row.cudnn_benchmark is not None:
        rt = dataclasses.replace(rt, cudnn_benchmark=row.cudnn_benchmark and rt.cuda)
    rt.apply_backend_flags()
    result["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    try:
        result.update(_measure_row(setup, row, consume, window_batches))
    finally:
        setup.rt.apply_backend_flags()
    return result


def _measure_row(setup: Setup, row: Row, consume: Callable, window_batches: int) -> dict:
    cuda, device = setup.rt.cuda, setup.rt.device
    result: dict = {}
    with RowMonitor(gpu_used=(lambda: _gpu_used(device)) if cuda else None) as monitor:
        result["rss_start_mb"] = monitor.rss_start_mb
        loader = open_loader(setup, row)
        it = endless(setup, loader, device)
        try:
            # Measure whole shuffle windows where that is cheap: a window's
            # patches arrive in a burst. Not for CPU training (minutes per window).
            period = 1 if row.kind == "synthetic" or (row.train and not cuda) else window_batches
            if setup.warmup is not None:
                warmup = setup.warmup
            elif row.train:
                warmup = max(period, 5) if cuda else 1
            else:
                warmup = max(period, 2)
            for _ in range(warmup):
                consume(*next(it))
            setup.sync()
            monitor.begin_measure()
            timed = _timed_batches(setup, it, consume, period, train_on_gpu=row.train and cuda)
            file_bytes = monitor.end_measure()
        finally:
            try:
                it.close()
            except Exception as e:  # the row's numbers stand; say what the close hit
                first = (str(e).strip().splitlines() or [""])[0]
                log.warning(
                    "bench: %s: closing its batch stream failed (%s: %s); ignored",
                    row.name,
                    type(e).__name__,
                    first[:200],
                )
            loader.close()

    patches, batches, seconds = timed["patches"], timed["batches"], timed["seconds"]
    pps = patches / seconds
    images = patches / setup.patch_num
    decodes = row.decodes_per_image(setup.patch_num)
    measured = None
    # Workers read ahead; over whole windows (and at least two) the read-ahead
    # at the start and at the end cancel out. Fewer batches: state the construction.
    if file_bytes is not None and decodes > 0 and batches >= 2 * window_batches:
        measured = round(file_bytes / setup.mean_file_bytes / images, 2)
    result.update(
        {
            "patches_per_s": _sig(pps),
            "images_per_s": _sig(pps / setup.patch_num),
            "decodes_per_image": measured if measured is not None else decodes,
            "decodes_by_construction": decodes,
            "decodes_source": "by construction"
            if measured is None
            else "file bytes read / mean file size / images delivered",
            "seconds": round(seconds, 2),
            "batches": batches,
            "patches": patches,
            "warmup_batches": warmup,
            "data_wait_s": round(timed["data_wait"], 3),
            "compute_s": round(timed["compute"], 3),
            "data_wait_how": timed["wait_how"],
            "host_wait_s": round(timed["host_wait"], 3),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if cuda
            else None,
            **monitor.result(),
            "note": row.note,
        }
    )
    return result


def _timed_batches(
    setup: Setup, it: Iterator, consume: Callable, period: int, train_on_gpu: bool
) -> dict:
    """The measured part of a row: batches until the time (or patch) budget is spent."""
    # CUDA events measure GPU idle time between steps without a per-step sync.
    events = []
    if train_on_gpu:
        t0_event = torch.cuda.Event(enable_timing=True)
        t0_event.record()
    patches = batches = 0
    host_wait = host_step = 0.0
    t0 = time.perf_counter()
    while True:
        ta = time.perf_counter()
        images, image_idx = next(it)
        tb = time.perf_counter()
        if train_on_gpu:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            consume(images, image_idx)
            end.record()
            events.append((start, end))
        else:
            consume(images, image_idx)
        tc = time.perf_counter()
        host_wait += tb - ta
        host_step += tc - tb
        patches += int(image_idx.shape[0])
        batches += 1
        elapsed = tc - t0
        if (setup.patch_limit and patches >= setup.patch_limit) or elapsed >= 1.5 * setup.seconds:
            break
        if elapsed >= setup.seconds and batches % period == 0:
            break
    setup.sync()
    seconds = time.perf_counter() - t0
    if train_on_gpu:
        compute = sum(s.elapsed_time(e) for s, e in events) / 1000
        idle = t0_event.elapsed_time(events[0][0]) + sum(
            events[k - 1][1].elapsed_time(events[k][0]) for k in range(1, len(events))
        )
        data_wait, how = idle / 1000, "GPU idle between steps (CUDA events)"
    else:
        compute, data_wait = host_step, host_wait
        how = "host time blocked on the next batch"
    return {
        "patches": patches,
        "batches": batches,
        "seconds": seconds,
        "compute": compute,
        "data_wait": data_wait,
        "wait_how": how,
        "host_wait": host_wait,
    }


class _RowDone(Exception):
    """Raised from the scorer's progress callback when a score row has measured enough."""


def measure_score(setup: Setup, row: Row) -> dict:
    """predict.py's scorer over the files (cycled), in images/s after a warm-up.

    Timed per forward batch through the scorer's progress callback (on a CPU a rows
    window of 96 images takes minutes), from the end of the warm-up to the last
    batch, the device synchronised at both ends; the images are the batches' patches
    / patch_num. Checks, decoding and the per-window host copies all run inside.
    """
    if row.kind == "dali" and not dali_available():
        raise Skip("DALI unavailable (nvidia-dali not installed)")
    model = get_model(setup)
    was_training = model.training
    model.eval()
    rt = dataclasses.replace(setup.rt, loader=row.kind)
    settings = setup.settings(device=row.device, workers=row.workers)
    cuda = rt.cuda
    per_batch = setup.batch_size
    if setup.warmup is not None:
        warmup = setup.warmup
    else:  # CPU: the first batch pays the one-off costs; CUDA: a window's worth
        warmup = 1 if not cuda else max(2, rows_window(per_batch, setup.patch_num))
    clock = {"batches": 0, "patches": 0.0, "t0": 0.0, "t1": 0.0}
    result: dict = {"name": row.name}

    def start() -> None:
        setup.sync()
        monitor.begin_measure()
        clock["t0"] = time.perf_counter()

    def tick(images: float) -> None:
        clock["batches"] += 1
        if clock["batches"] == warmup:
            start()
        elif clock["batches"] > warmup:
            clock["patches"] += images * setup.patch_num
            elapsed = time.perf_counter() - clock["t0"]
            if elapsed >= setup.seconds or (
                setup.patch_limit and clock["patches"] >= setup.patch_limit
            ):
                setup.sync()
                clock["t1"] = time.perf_counter()
                raise _RowDone

    _start_memory_afresh(rt)
    with RowMonitor(gpu_used=(lambda: _gpu_used(rt.device)) if cuda else None) as monitor:
        result["rss_start_mb"] = monitor.rss_start_mb
        checks = ImageChecks(rt.num_workers) if row.kind != "synthetic" else None
        scorer = ChunkScorer(
            model,
            rt,
            resize=setup.resize,
            patch_num=setup.patch_num,
            patch_size=setup.patch_size,
            checks=checks,
            on_patches=tick,
            loader_settings=settings,
        )
        entries = (Entry(str(p)) for p in itertools.cycle(setup.paths))
        if warmup == 0:
            start()
        try:
            for _ in stream_rows(scorer, entries, chunk_size(scorer.window)):
                pass
        except _RowDone:
            pass
        finally:
            monitor.end_measure()
            scorer.close()
            if checks is not None:
                checks.close()
            model.train(was_training)
    seconds = clock["t1"] - clock["t0"]
    pps = clock["patches"] / seconds
    result.update(
        {
            "patches_per_s": _sig(pps),
            "images_per_s": _sig(pps / setup.patch_num),
            # By construction: each file is read by its image check and by its decode.
            # (Not measured: a row on a CPU covers fewer images than one decode window.)
            "decodes_per_image": 0.0 if row.kind == "synthetic" else 2.0,
            "decodes_source": "by construction (the image check and the decode)",
            "seconds": round(seconds, 2),
            "batches": clock["batches"] - warmup,
            "patches": int(clock["patches"]),
            "warmup_batches": warmup,
            "data_wait_s": None,
            "compute_s": None,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(rt.device) / 2**20, 1)
            if cuda
            else None,
            **monitor.result(),
            "note": row.note,
        }
    )
    return result


def _start_memory_afresh(rt: Runtime) -> None:
    """Before a row: what earlier rows left is freed, and the GPU peak is the row's own."""
    gc.collect()
    if rt.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(rt.device)


def _gpu_used(device: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def _sig(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")


def run_rows(setup: Setup, rows: list[Row], echo: Callable[[str], None] = print) -> list[dict]:
    """Measure each row in order; one broken row never loses the others."""
    results = []
    train: TrainConsumer | None = None

    def wait_for_batch(images: torch.Tensor, image_idx: torch.Tensor) -> None:
        setup.sync()  # the batch is really there, not just queued

    for row in rows:
        echo(f"bench: {row.name} ...")
        try:
            if row.score:
                result = measure_score(setup, row)
            else:
                if row.train:
                    train = train or TrainConsumer(setup)
                result = measure(setup, row, train if row.train else wait_for_batch)
        except Skip as e:
            result = {"name": row.name, "skipped": str(e)}
        except Exception as e:
            traceback.print_exc()
            result = {"name": row.name, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        results.append(result)
        echo(f"bench: {row.name}: {_short(result)}")
    add_ratios(results)
    add_estimates(results, setup.patch_num)
    return results


def _short(row: dict) -> str:
    if row.get("skipped") or row.get("error"):
        return row.get("skipped") or row.get("error")
    return f"{row['patches_per_s']} patches/s over {row['seconds']}s"


def add_ratios(results: list[dict]) -> None:
    by_name = {r["name"]: r for r in results}
    for r in results:
        ref = {"train": "train/synthetic", "score": "score/synthetic"}.get(
            r["name"].split("/")[0], "loader/original"
        )
        base = by_name.get(ref, {}).get("patches_per_s")
        r["ratio_to"] = ref
        r["ratio"] = None
        if r.get("patches_per_s") is not None and base:
            r["ratio"] = round(r["patches_per_s"] / base, 4)


def koniq_estimate_s(patches_per_s: float, patch_num: int) -> float:
    train = KONIQ_TRAIN_IMAGES * patch_num / patches_per_s
    val = KONIQ_VAL_IMAGES * patch_num / (VAL_SPEEDUP * patches_per_s)
    return KONIQ_EPOCHS * (train + val)


def add_estimates(results: list[dict], patch_num: int) -> None:
    for r in results:
        est = None
        if r["name"].startswith("train/") and r.get("patches_per_s"):
            est = round(koniq_estimate_s(r["patches_per_s"], patch_num) / 3600, 3)
        r["est_koniq_16ep_h"] = est
