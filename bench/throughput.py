"""Throughput benchmark: loaders alone and end-to-end training, in one run.

    python bench/throughput.py [--device auto|cpu|cuda] [--quick] [--json out.json]
        [--data_json J --dataset_root R | --data_dir DIR --images N]
        [--batch_size 96] [--patch_num 25] [--seconds 20] [--num_workers N]

Rows (each measured after a warm-up, for ``--seconds``):

- ``loader/original``: the original release's scheme (bench/original_loader.py):
  one dataset item per (image, patch), each decoding its JPEG again.
- ``loader/pillow``, ``loader/dali-cpu``, ``loader/dali-gpu`` (CUDA): our loaders
  alone, iterating a training plan, each batch consumed on the target device.
- ``train/synthetic``: the trainer's step (HyperNet forward, L1, Adam; bf16 +
  channels_last on CUDA, fp32 on the CPU) on random patches already on the
  device: the model's ceiling.
- ``train/pillow`` and ``train/dali-gpu`` (CUDA) or ``train/dali-cpu`` (CPU):
  the same step fed by the loader.

Input: KonIQ-like 1024x768 JPEGs generated once into ``--data_dir`` (reused by
later runs), or a real metadata JSON. The image list is cycled to KonIQ's
training-split size (7,252) per epoch, so epoch boundaries come as often as in a
real run while only a few files need to exist. See ``--help`` and the table's
notes for what every column means.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.procstat import RowMonitor  # noqa: E402
from hyperiqa.errors import UserError, report  # noqa: E402
from hyperiqa.run_dir import write_json_atomic  # noqa: E402
from pipelines.factory import (  # noqa: E402
    LoaderSettings,
    dali_available,
    default_workers,
    delivery_dtype,
    make_loader,
    resolve_device,
)
from pipelines.patches import train_plan  # noqa: E402

# A default KonIQ-10k run: koniq_train.json (8,058 images) split 90/10.
KONIQ_TRAIN_IMAGES = 7252
KONIQ_VAL_IMAGES = 806
KONIQ_EPOCHS = 16
# Validation is a forward pass only (no backward, no optimiser step): about 3x
# the training speed in patches/s. An assumption, not a measurement.
VAL_SPEEDUP = 3.0
DEFAULT_DATA_DIR = Path("/tmp/hyperiqa-bench-data")
SEED = 42
# Optimiser settings of a default run (train.py's defaults); they do not change speed.
OPT_DEFAULTS = SimpleNamespace(lr=2e-5, lr_ratio=10.0, weight_decay=5e-4)

RESULT_KEYS = (
    "name",
    "patches_per_s",
    "images_per_s",
    "decodes_per_image",
    "seconds",
    "peak_rss_mb",
    "peak_gpu_mb",
    "data_wait_s",
    "compute_s",
    "ratio",
    "ratio_to",
)


# --------------------------------------------------------------------------- #
# Command line


def _resize(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Loader and end-to-end training throughput of HyperIQA, in one run.",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto (default): cuda when available",
    )
    p.add_argument("--data_json", default=None, help="real metadata JSON (a list of image/score)")
    p.add_argument(
        "--dataset_root",
        default=None,
        help="image paths in --data_json are relative to it (default: the JSON's folder)",
    )
    p.add_argument(
        "--data_dir",
        default=str(DEFAULT_DATA_DIR),
        help=f"folder for the generated KonIQ-like JPEGs, made once and reused "
        f"(default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="generated JPEGs to use (default 128, --quick 32)",
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="patches per batch (default 96; --quick on the CPU: 16)",
    )
    p.add_argument(
        "--patch_num", type=int, default=25, help="patches per image per epoch (default 25)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured seconds per row (default 20, --quick 8)",
    )
    p.add_argument(
        "--patches",
        type=int,
        default=0,
        help="also stop a row after this many measured patches (default 0: time only)",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer images and seconds (under 3 minutes on 2 cores)"
    )
    p.add_argument("--json", default=None, help="write env + results here")
    p.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="Pillow/original DataLoader workers (default as train.py: CUDA min(cores, 8), CPU 1)",
    )
    p.add_argument(
        "--dali_threads", type=int, default=4, help="DALI CPU threads (default 4, as train.py)"
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated row-name prefixes to run, e.g. loader/ or train/synthetic",
    )
    p.add_argument(
        "--pillow_draft",
        action="store_true",
        help="add loader/pillow-draft: the Pillow loader with reduced-size JPEG decode",
    )
    p.add_argument(
        "--worker_sweep",
        default=None,
        help="add loader/pillow-wN rows for these worker counts, e.g. 0,1,2",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step, as train.py --compile",
    )
    p.add_argument(
        "--cudnn_benchmark",
        action="store_true",
        help="set torch.backends.cudnn.benchmark (train.py leaves it off) to see what it buys",
    )
    # For tests and experiments: smaller inputs than KonIQ's.
    p.add_argument("--resize", type=_resize, default=(384, 512), help=argparse.SUPPRESS)
    p.add_argument("--image_size", type=_resize, default=(768, 1024), help=argparse.SUPPRESS)
    p.add_argument("--epoch_images", type=int, default=KONIQ_TRAIN_IMAGES, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------- #
# Setup


@dataclass
class Bench:
    args: argparse.Namespace
    device: torch.device
    paths: list[Path]  # one epoch's images (files cycled to --epoch_images)
    scores: list[float]
    files: int  # distinct files behind ``paths``
    mean_file_bytes: float
    data_note: str
    batch_size: int
    patch_num: int
    patch_size: int
    resize: tuple[int, int]
    num_workers: int
    seconds: float
    amp: str | None
    channels_last: bool
    dtype: torch.dtype  # what the loaders deliver for training (train_run.py's choice)
    model: torch.nn.Module | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def settings(self, *, device: torch.device | None = None, workers: int | None = None):
        return LoaderSettings(
            resize=self.resize,
            batch_size=self.batch_size,
            device=device or self.device,
            num_workers=self.num_workers if workers is None else workers,
            dtype=self.dtype,
            dali_threads=self.args.dali_threads,
        )

    def plan(self, epoch: int):
        return train_plan(
            len(self.paths),
            seed=SEED,
            epoch=epoch,
            patches_per_image=self.patch_num,
            patch_size=self.patch_size,
            resize=self.resize,
            window=self.batch_size,  # train.py's default shuffle window
        )

    @property
    def window_batches(self) -> int:
        """Batches per shuffle window: a window is batch_size images of patch_num patches."""
        return self.patch_num


def load_data(args: argparse.Namespace) -> tuple[list[Path], list[float], str]:
    if args.data_json:
        from hyperiqa.data import load_samples

        root = args.dataset_root or str(Path(args.data_json).parent)
        samples = load_samples(args.data_json, root)
        return [s.path for s in samples], [s.score for s in samples], f"{args.data_json}"
    from hyperiqa.synthetic import write_koniq_like_jpegs

    h, w = args.image_size
    start = time.perf_counter()
    paths = write_koniq_like_jpegs(Path(args.data_dir), args.images, height=h, width=w)
    took = time.perf_counter() - start
    rng = np.random.default_rng(SEED)
    scores = [float(s) for s in rng.uniform(0.0, 100.0, len(paths))]
    note = f"{len(paths)} KonIQ-like {w}x{h} JPEGs in {args.data_dir} (ready in {took:.1f}s)"
    return paths, scores, note


def setup(argv: list[str] | None = None) -> Bench:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.images is None:
        args.images = 32 if args.quick else 128
    batch_size = args.batch_size or (16 if args.quick and device.type == "cpu" else 96)
    seconds = args.seconds if args.seconds is not None else (8.0 if args.quick else 20.0)
    files, scores, note = load_data(args)
    n = max(len(files), args.epoch_images)
    paths = [files[i % len(files)] for i in range(n)]
    scores = [scores[i % len(files)] for i in range(n)]
    mean_bytes = statistics.fmean(p.stat().st_size for p in files)
    cuda = device.type == "cuda"
    return Bench(
        args=args,
        device=device,
        paths=paths,
        scores=scores,
        files=len(files),
        mean_file_bytes=mean_bytes,
        data_note=note,
        batch_size=batch_size,
        patch_num=args.patch_num,
        patch_size=224,
        resize=tuple(args.resize),
        num_workers=default_workers(device) if args.num_workers is None else args.num_workers,
        seconds=seconds,
        amp="bf16" if cuda else None,
        channels_last=cuda,
        dtype=delivery_dtype(device, "bf16" if cuda else None),  # as train.py
    )


# --------------------------------------------------------------------------- #
# The training step (the trainer's own, plus its per-batch bookkeeping)


class TrainStep:
    """The trainer's own step (hyperiqa.trainer.TrainStep) plus its per-batch
    bookkeeping (running loss and predictions kept on the device)."""

    def __init__(self, bench: Bench) -> None:
        from hyperiqa.trainer import TrainStep as RealStep
        from hyperiqa.trainer import make_optimizer

        model = get_model(bench)
        model.train()
        optimizer = make_optimizer(model, OPT_DEFAULTS)
        net = torch.compile(model) if bench.args.compile else model
        self.step = RealStep(net, optimizer, bench.device, bench.amp, bench.channels_last)
        self.loss_sum = torch.zeros((), device=bench.device)
        self.preds: list[torch.Tensor] = []
        if not bench.cuda and bench.args.warmup is None:
            # The first CPU steps are slow (allocator, oneDNN kernel setup): take
            # one here so the first train row does not pay more than the others.
            x = torch.randn(bench.batch_size, 3, bench.patch_size, bench.patch_size)
            self(x, torch.rand(bench.batch_size) * 100)
            self.preds.clear()

    def __call__(self, images: torch.Tensor, scores: torch.Tensor) -> None:
        pred, loss = self.step(images, scores)
        self.loss_sum += loss * scores.shape[0]
        self.preds.append(pred)


def get_model(bench: Bench) -> torch.nn.Module:
    if bench.model is None:
        from hyperiqa.model import build_model

        torch.manual_seed(SEED)
        model = build_model("none").to(bench.device)  # random init: speed does not care
        if bench.channels_last:
            model = model.to(memory_format=torch.channels_last)
        bench.model = model
    return bench.model


# --------------------------------------------------------------------------- #
# Measuring one row


class Skip(Exception):
    """The row cannot run here (e.g. DALI missing); the message says why."""


@dataclass
class Source:
    """A row's input: an endless stream of (images, scores) on the device, and its cleanup."""

    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    close: Callable[[], None]
    decodes_per_image: float  # by construction
    window_batches: int = 1  # measure whole shuffle windows when > 1


def measure(
    bench: Bench,
    name: str,
    make_source: Callable[[], Source],
    consume: Callable[[torch.Tensor, torch.Tensor], None],
    *,
    train: bool,
    note: str = "",
) -> dict:
    """Warm up, then run ``consume`` on batches for ``bench.seconds``; one result row."""
    args, cuda = bench.args, bench.cuda
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(bench.device)
    gpu_used = None
    if cuda:

        def gpu_used() -> int:
            free, total = torch.cuda.mem_get_info(bench.device)
            return total - free

    row: dict = {"name": name}
    with RowMonitor(gpu_used=gpu_used) as monitor:
        row["rss_start_mb"] = monitor.rss_start_mb
        source = make_source()
        it = source.batches
        try:
            # Measure whole shuffle windows where that is cheap: a window's
            # patches arrive in a burst. Not for CPU training (minutes per window).
            period = 1 if train and not cuda else source.window_batches
            if args.warmup is not None:
                warmup = args.warmup
            elif train:
                warmup = max(period, 5) if cuda else 1
            else:
                warmup = max(period, 2)
            for _ in range(warmup):
                consume(*next(it))
            bench.sync()
            # Events measure GPU idle time between steps without a per-step sync.
            events = []
            if train and cuda:
                t0_event = torch.cuda.Event(enable_timing=True)
                t0_event.record()
            monitor.begin_measure()
            patches = batches = 0
            host_wait = host_step = 0.0
            t0 = time.perf_counter()
            while True:
                ta = time.perf_counter()
                images, scores = next(it)
                tb = time.perf_counter()
                if train and cuda:
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    start.record()
                    consume(images, scores)
                    end.record()
                    events.append((start, end))
                else:
                    consume(images, scores)
                tc = time.perf_counter()
                host_wait += tb - ta
                host_step += tc - tb
                patches += int(scores.shape[0])
                batches += 1
                elapsed = tc - t0
                budget_hit = args.patches and patches >= args.patches
                if budget_hit or elapsed >= 1.5 * bench.seconds:
                    break
                if elapsed >= bench.seconds and batches % period == 0:
                    break
            bench.sync()
            seconds = time.perf_counter() - t0
            file_bytes = monitor.end_measure()
        finally:
            with contextlib.suppress(Exception):
                it.close()
            source.close()

    if train and cuda:
        compute = sum(s.elapsed_time(e) for s, e in events) / 1000
        idle = t0_event.elapsed_time(events[0][0]) + sum(
            events[k - 1][1].elapsed_time(events[k][0]) for k in range(1, len(events))
        )
        data_wait, wait_how = idle / 1000, "GPU idle between steps (CUDA events)"
    else:
        compute, data_wait = host_step, host_wait
        wait_how = "host time blocked on the next batch" + (
            "" if train else "; compute = consuming it on the device"
        )
    pps = patches / seconds
    images = patches / bench.patch_num
    measured = None
    # Workers read ahead; over whole windows (and at least two) the read-ahead
    # at the start and at the end cancel out. Fewer batches: state the construction.
    enough = batches >= 2 * source.window_batches
    if file_bytes is not None and source.decodes_per_image > 0 and enough:
        measured = round(file_bytes / bench.mean_file_bytes / images, 2)
    row.update(
        {
            "patches_per_s": _sig(pps),
            "images_per_s": _sig(pps / bench.patch_num),
            "decodes_per_image": measured if measured is not None else source.decodes_per_image,
            "decodes_by_construction": source.decodes_per_image,
            "decodes_source": "file bytes read / mean file size / images delivered"
            if measured is not None
            else "by construction",
            "seconds": round(seconds, 2),
            "batches": batches,
            "patches": patches,
            "warmup_batches": warmup,
            "data_wait_s": round(data_wait, 3),
            "compute_s": round(compute, 3),
            "data_wait_how": wait_how,
            "host_wait_s": round(host_wait, 3),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(bench.device) / 2**20, 1)
            if cuda
            else None,
            **monitor.result(),
            "note": note,
        }
    )
    return row


def _sig(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")


# --------------------------------------------------------------------------- #
# Row inputs


def endless(bench: Bench, loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        epoch += 1
        for batch in loader.batches(bench.plan(epoch)):
            yield batch.images, batch.scores


def original_source(bench: Bench) -> Source:
    from bench.original_loader import make_original_loader

    loader = make_original_loader(
        bench.paths,
        bench.scores,
        patch_num=bench.patch_num,
        resize=bench.resize,
        patch_size=bench.patch_size,
        batch_size=bench.batch_size,
        num_workers=bench.num_workers,
        pin_memory=bench.cuda,
    )

    def batches():
        while True:
            for images, scores in loader:
                yield (
                    images.to(bench.device, non_blocking=True),
                    scores.to(bench.device, torch.float32, non_blocking=True),
                )

    return Source(batches(), lambda: None, decodes_per_image=float(bench.patch_num))


def loader_source(bench: Bench, kind: str, *, device=None, workers=None, draft=False) -> Source:
    if kind == "dali" and not dali_available():
        raise Skip("DALI unavailable (nvidia-dali not installed)")
    try:
        loader = make_loader(
            kind, bench.paths, bench.scores, bench.settings(device=device, workers=workers)
        )
    except ImportError as e:
        raise Skip(f"{kind} loader unavailable: {e}") from None
    stream = endless(bench, loader)
    if draft:
        from bench.pillow_draft import patched_pillow_loader

        stream = _within(patched_pillow_loader(), stream)
    if device is not None and device != bench.device:  # DALI CPU output on a CUDA machine
        stream = ((x.to(bench.device), y.to(bench.device)) for x, y in stream)
    return Source(stream, loader.close, 1.0, bench.window_batches)


def _within(ctx, stream: Iterator) -> Iterator:
    with ctx:
        yield from stream


def synthetic_source(bench: Bench) -> Source:
    g = torch.Generator(device="cpu").manual_seed(SEED)
    shape = (bench.batch_size, 3, bench.patch_size, bench.patch_size)
    pool = [
        (
            torch.randn(shape, generator=g).to(bench.device, bench.dtype),
            (torch.rand(bench.batch_size, generator=g) * 100).to(bench.device),
        )
        for _ in range(2)
    ]

    def batches():
        while True:
            yield from pool

    return Source(batches(), lambda: None, decodes_per_image=0.0)


# --------------------------------------------------------------------------- #
# Rows


def row_plan(bench: Bench) -> list[tuple[str, bool, Callable[[], Source], str]]:
    """(name, is_train, input, note) for every row this run makes, in order."""
    cpu = torch.device("cpu")
    rows: list[tuple[str, bool, Callable[[], Source], str]] = [
        ("loader/original", False, lambda: original_source(bench), "per-patch decode, shuffled"),
        ("loader/pillow", False, lambda: loader_source(bench, "pillow"), ""),
    ]
    if bench.args.pillow_draft:
        rows.append(
            (
                "loader/pillow-draft",
                False,
                lambda: loader_source(bench, "pillow", draft=True),
                "reduced-size JPEG decode (Image.draft)",
            )
        )
    if bench.args.worker_sweep:
        for w in (int(x) for x in bench.args.worker_sweep.split(",")):
            rows.append(
                (
                    f"loader/pillow-w{w}",
                    False,
                    lambda w=w: loader_source(bench, "pillow", workers=w),
                    f"{w} workers",
                )
            )
    cpu_note = "DALI CPU backend, copied to the GPU per batch" if bench.cuda else ""
    rows.append(
        ("loader/dali-cpu", False, lambda: loader_source(bench, "dali", device=cpu), cpu_note)
    )
    if bench.cuda:
        rows.append(("loader/dali-gpu", False, lambda: loader_source(bench, "dali"), ""))
    rows.append(
        ("train/synthetic", True, lambda: synthetic_source(bench), "random patches on device")
    )
    rows.append(("train/pillow", True, lambda: loader_source(bench, "pillow"), ""))
    if bench.cuda:
        rows.append(("train/dali-gpu", True, lambda: loader_source(bench, "dali"), ""))
    else:
        rows.append(("train/dali-cpu", True, lambda: loader_source(bench, "dali"), ""))
    if bench.args.only:
        prefixes = [p.strip() for p in bench.args.only.split(",") if p.strip()]
        rows = [r for r in rows if any(r[0].startswith(p) for p in prefixes)]
    return rows


def run_rows(bench: Bench, echo: Callable[[str], None] = print) -> list[dict]:
    results = []
    step: TrainStep | None = None
    for name, train, make_source, note in row_plan(bench):
        echo(f"bench: {name} ...")
        try:
            if train:
                step = step or TrainStep(bench)
                consume = step
            else:
                consume = consume_loader(bench)
            row = measure(bench, name, make_source, consume, train=train, note=note)
        except Skip as e:
            row = {"name": name, "skipped": str(e)}
        except Exception as e:  # one broken row must not lose the others
            traceback.print_exc()
            row = {"name": name, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        if step is not None:
            step.preds.clear()
        for key in RESULT_KEYS:
            row.setdefault(key, None)
        results.append(row)
        echo(f"bench: {name}: " + (_short(row)))
    add_ratios(results)
    add_estimates(bench, results)
    return results


def consume_loader(bench: Bench) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def consume(images: torch.Tensor, scores: torch.Tensor) -> None:
        bench.sync()  # the batch is really there, not just queued

    return consume


def _short(row: dict) -> str:
    if row.get("skipped") or row.get("error"):
        return row.get("skipped") or row.get("error")
    return f"{row['patches_per_s']} patches/s over {row['seconds']}s"


def add_ratios(results: list[dict]) -> None:
    by_name = {r["name"]: r for r in results}
    for r in results:
        ref = "train/synthetic" if r["name"].startswith("train/") else "loader/original"
        base = by_name.get(ref, {}).get("patches_per_s")
        r["ratio_to"] = ref
        if r["patches_per_s"] is not None and base:
            r["ratio"] = round(r["patches_per_s"] / base, 4)


def koniq_estimate_s(patches_per_s: float, patch_num: int) -> float:
    train = KONIQ_TRAIN_IMAGES * patch_num / patches_per_s
    val = KONIQ_VAL_IMAGES * patch_num / (VAL_SPEEDUP * patches_per_s)
    return KONIQ_EPOCHS * (train + val)


def add_estimates(bench: Bench, results: list[dict]) -> None:
    for r in results:
        est = None
        if r["name"].startswith("train/") and r["patches_per_s"]:
            est = round(koniq_estimate_s(r["patches_per_s"], bench.patch_num) / 3600, 3)
        r["est_koniq_16ep_h"] = est


# --------------------------------------------------------------------------- #
# Report


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(bench: Bench, load_start: tuple[float, ...]) -> dict:
    import PIL
    import torchvision

    try:
        from nvidia import dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "device": str(bench.device),
        "device_name": torch.cuda.get_device_name(bench.device) if bench.cuda else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": dali_version,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "amp": bench.amp or "off (fp32)",
        "channels_last": bench.channels_last,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "compile": bench.args.compile,
        "batch_size": bench.batch_size,
        "patch_num": bench.patch_num,
        "patch_size": bench.patch_size,
        "resize": list(bench.resize),
        "num_workers": bench.num_workers,
        "dali_threads": bench.args.dali_threads,
        "quick": bench.args.quick,
        "seconds_per_row": bench.seconds,
        "data": bench.data_note,
        "files": bench.files,
        "mean_file_kb": round(bench.mean_file_bytes / 1024, 1),
        "epoch_images": len(bench.paths),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


NOTES = {
    "ratio": "train rows: patches/s over train/synthetic; loader rows: over loader/original",
    "images_per_s": "patches/s / patch_num (an epoch cuts patch_num patches per image)",
    "decodes_per_image": (
        "measured as file bytes read (rchar of this process and its workers) / mean JPEG "
        "size / images delivered; each decode reads its file once. By construction: "
        "original patch_num, ours 1"
    ),
    "peak_rss_mb": "this process's peak RSS during the row (VmHWM reset at the row start; "
    "includes DALI, and memory earlier rows left allocated)",
    "rss_start_mb": "this process's RSS when the row started: peak_rss_mb - rss_start_mb is "
    "what the row itself added",
    "peak_workers_private_mb": "peak sum of the private memory (USS) of worker processes "
    "(DataLoader workers); pages shared with this process are counted in peak_rss_mb",
    "peak_gpu_mb": "torch.cuda.max_memory_allocated, reset per row (DALI's memory not included)",
    "peak_gpu_device_mb": "peak device-wide used GPU memory (cudaMemGetInfo, sampled): includes "
    "DALI, CUDA contexts and other processes",
    "data_wait_s": "train rows on CUDA: GPU idle time between steps (CUDA events); on the CPU "
    "and for loader rows: host time blocked waiting for the next batch",
    "compute_s": "train rows: step time (GPU time on CUDA); loader rows: time to consume a "
    "batch on the device (synchronize)",
    "est_koniq_16ep_h": (
        f"{KONIQ_EPOCHS} epochs x ({KONIQ_TRAIN_IMAGES} train images x patch_num patches at "
        f"the row's patches/s + {KONIQ_VAL_IMAGES} val images x patch_num patches at "
        f"{VAL_SPEEDUP:g}x that speed, an assumption: forward only); excludes startup, the "
        "dataset check and checkpoint writes"
    ),
}


def _fmt(value, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_table(env: dict, results: list[dict]) -> str:
    batch_note = " (quick mode on the CPU)" if env["quick"] and env["device"] == "cpu" else ""
    head = [
        f"HyperIQA throughput on {env['device_name']} ({env['device']}); "
        f"{env['cpu_affinity']} CPU cores, torch {env['torch']}, DALI {env['dali']}",
        f"batch {env['batch_size']}{batch_note}, patch_num {env['patch_num']}, "
        f"resize {env['resize'][0]}x{env['resize'][1]}, workers {env['num_workers']}, "
        f"amp {env['amp']}, {env['seconds_per_row']:g}s per row; data: {env['data']}",
        f"load average: start {env['loadavg_start'][0]}, end {env['loadavg_end'][0]}",
    ]
    cols = (
        f"{'row':<20} {'patches/s':>10} {'images/s':>9} {'dec/img':>7} {'ratio':>14} "
        f"{'secs':>6} {'RSS MB':>7} {'wrk MB':>7} {'GPU MB':>7} {'wait s':>7} {'comp s':>7} "
        f"{'16ep KonIQ':>10}"
    )
    lines = [*head, "", cols, "-" * len(cols)]
    for r in results:
        if r.get("skipped") or r.get("error"):
            lines.append(f"{r['name']:<20} {'skipped: ' + (r.get('skipped') or r.get('error'))}")
            continue
        ref = {"train/synthetic": "syn", "loader/original": "orig"}[r["ratio_to"]]
        ratio = f"{r['ratio']:.3f}x {ref}" if r["ratio"] is not None else "-"
        est = f"{r['est_koniq_16ep_h']:.2f} h" if r.get("est_koniq_16ep_h") else "-"
        lines.append(
            f"{r['name']:<20} {r['patches_per_s']:>10.1f} {r['images_per_s']:>9.2f} "
            f"{_fmt(r['decodes_per_image'], '.2f'):>7} {ratio:>14} {r['seconds']:>6.1f} "
            f"{_fmt(r['peak_rss_mb'], '.0f'):>7} {_fmt(r['peak_workers_private_mb'], '.0f'):>7} "
            f"{_fmt(r['peak_gpu_mb'], '.0f'):>7} {r['data_wait_s']:>7.2f} {r['compute_s']:>7.2f} "
            f"{est:>10}"
        )
    lines += [
        "",
        "ratio: train rows vs train/synthetic, loader rows vs loader/original. "
        "dec/img: measured file reads per delivered image.",
        "wait/comp: " + NOTES["data_wait_s"] + ".",
        "16ep KonIQ: " + NOTES["est_koniq_16ep_h"] + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    load_start = os.getloadavg()
    try:
        bench = setup(argv)
    except UserError as e:
        return report("bench/throughput.py", e)
    results = run_rows(bench)
    env = environment(bench, load_start)
    print()
    print(format_table(env, results))
    if bench.args.json:
        out = Path(bench.args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, {"env": env, "results": results, "notes": NOTES})
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
