"""The DALI loader: decode each image once per epoch, resize and cut its patches in DALI.

One DALI pipeline iteration is one plan window: its images in plan order
(``max_batch_size = plan.window``; the last window may hold fewer images). Per
image the graph is

    file bytes (external_source) -> decoders.image -> resize to (H, W)
      -> P x crop_mirror_normalize (one per patch slot) -> stack -> [P, 3, S, S]

so a window comes out as one dense ``[n, P, 3, S, S]`` tensor, normalised and
in the delivered dtype, which becomes the image-major ``[n * P, 3, S, S]`` that
:func:`pipelines.loader.shuffle_into_batches` shuffles and cuts into batches.

GPU mode (``settings.device`` is CUDA): only the file bytes and the crop
parameters live on the host; decoding is "mixed" (nvJPEG, hardware decoder on
A100/H100) and everything after it runs on the GPU. CPU mode is the same graph
with ``device="cpu"`` and no device id; CI tests it that way.

Crops: ``crop_mirror_normalize`` takes one crop position per sample, not one
per patch, so the graph holds P of them, patch slot k reading its position and
mirror flag from row k of a per-image table fed by the external source. Each
does crop, mirror, ImageNet normalisation, HWC->CHW and the cast in one kernel.

Prefetch: the external source pulls windows from the current plan through a
callback, and the pipeline runs ``settings.dali_prefetch`` windows ahead of the
one being trained on (DALI's asynchronous executor decodes them meanwhile). The
callback runs on the training thread (inside ``schedule_run``), so it never
reads a file itself: a thread pool reads the files of the next windows ahead
(:class:`_FileReads`) and the callback only collects what has been read.

Handing a window to PyTorch (GPU mode) never makes the host wait for the GPU:
DALI binds the window to the consuming stream (``share_outputs(cuda_stream=)``
makes that stream wait for DALI's kernels) and the window is copied into a
PyTorch tensor on that same stream. See :meth:`_WindowPipeline._to_torch` for
why this is safe and why it is a copy rather than a zero-copy DLPack view.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from pipelines.errors import LoaderError
from pipelines.images import check_image
from pipelines.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoaderSettings,
    PatchBatch,
    shuffle_into_batches,
)
from pipelines.patches import PatchPlan

# The dtypes DALI can write directly; anything else (bfloat16) is produced as
# float32 and cast per batch on the device.
_DALI_DTYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16}

# nvJPEG's default chroma upsampling differs from libjpeg-turbo's (which Pillow
# and DALI's CPU decoder use); "fancy" upsampling makes the mixed decoder match
# the CPU path and the Pillow loader more closely.
_GPU_FANCY_UPSAMPLING = True

# How DALI names the failing operator in a pipeline error.
_DECODER_FAILED = re.compile(r"operator `[\w.]*decoders\.image`")
# The lines of a DALI pipeline error that say nothing about what failed.
_DALI_BOILERPLATE = re.compile(
    r"Critical error in pipeline:|which was used in the pipeline definition|encountered:"
    r"|Current pipeline object is no longer valid"
)

# Windows whose files are read ahead of the one DALI's source asks for. The
# source runs ``dali_prefetch`` windows ahead of training, so a read submitted
# here has about that many windows of training time to finish; one window's
# files of a KonIQ run (96 JPEGs, ~27 MB) take tens of milliseconds to read.
READ_AHEAD = 2

T = TypeVar("T")

# What this loader recovers from without raising goes here, one line each: the
# training log picks the "pipelines" loggers up (hyperiqa/run_folder.py), and with no
# logging set up Python prints warnings to stderr.
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _GraphKey:
    """What a built pipeline is specialised to; a plan with another key needs another pipeline."""

    window: int  # max images per iteration (DALI's max_batch_size)
    patches_per_image: int
    patch_size: int


class _FileReads:
    """The file bytes of one plan's windows, read by a thread pool ahead of use.

    DALI's source asks for window ``w`` on the training thread (inside
    ``schedule_run``). By then the reads of ``w`` were submitted when an earlier
    window was asked for (or when the plan started), so taking them rarely waits
    on the disk; taking ``w`` submits the reads of the next ``READ_AHEAD`` windows.
    Every file is one future, gathered in plan order: the bytes, and so the
    decoded windows, are exactly what reading them inline would give.
    """

    def __init__(self, plan: PatchPlan, paths: Sequence[Path], reader: ThreadPoolExecutor) -> None:
        self.plan, self.paths, self.reader = plan, paths, reader
        self._pending: dict[int, list[Future]] = {}

    def submit(self, windows: range) -> None:
        plan = self.plan
        for w in windows:
            if w >= len(plan.window_perms) or w in self._pending:
                continue
            start = w * plan.window
            rows = range(start, min(start + plan.window, plan.num_images))
            paths = [self.paths[plan.order[r]] for r in rows]
            self._pending[w] = [self.reader.submit(_read_bytes, path) for path in paths]

    def take(self, w: int) -> list[np.ndarray]:
        """Window ``w``'s file bytes in plan order (a LoaderError names a file that failed)."""
        self.submit(range(w, w + 1 + READ_AHEAD))
        return [future.result() for future in self._pending.pop(w)]

    def cancel(self) -> None:
        """Drop the reads nobody will take (an epoch ended or was abandoned)."""
        for futures in self._pending.values():
            for future in futures:
                future.cancel()
        self._pending.clear()


class _WindowPipeline:
    """One built DALI pipeline, fed one plan at a time, one window per iteration."""

    def __init__(
        self,
        key: _GraphKey,
        paths: Sequence[Path],
        settings: LoaderSettings,
        reader: ThreadPoolExecutor,
    ) -> None:
        self.key, self.paths, self.settings, self.reader = key, paths, settings, reader
        self.gpu = settings.device.type == "cuda"
        self.out_dtype = settings.dtype if settings.dtype in _DALI_DTYPES else torch.float32
        self.plan: PatchPlan | None = None  # the plan the source callback reads from
        self.reads: _FileReads | None = None  # that plan's file reads, submitted ahead
        self.broken = False  # a DALI pipeline is unusable after any error
        self.pipe: Pipeline | None = self._build()

    # -- graph -------------------------------------------------------------------

    def _build(self) -> Pipeline:
        settings, key = self.settings, self.key
        height, width = settings.resize
        s = key.patch_size
        if self.gpu:
            device_id = settings.device.index
            device_id = torch.cuda.current_device() if device_id is None else device_id
        else:
            device_id = None
        pipe = Pipeline(
            batch_size=key.window,
            num_threads=settings.dali_threads,
            device_id=device_id,
            prefetch_queue_depth=settings.dali_prefetch,
            exec_async=True,
            exec_pipelined=True,
            # The dynamic executor (DALI's default for this configuration, named so
            # it cannot change under us): share_outputs(cuda_stream=...) needs it,
            # and its outputs are not recycled by release_outputs().
            exec_dynamic=True,
        )
        with pipe:
            data, pos, mirror = fn.external_source(
                source=self._source,
                num_outputs=3,
                batch=True,
                batch_info=True,
                dtype=[types.UINT8, types.FLOAT, types.INT32],
                ndim=[1, 2, 1],
            )
            if self.gpu:
                images = fn.decoders.image(
                    data,
                    device="mixed",
                    output_type=types.RGB,
                    hw_decoder_load=settings.dali_hw_decoder_load,
                    jpeg_fancy_upsampling=_GPU_FANCY_UPSAMPLING,
                )
            else:
                images = fn.decoders.image(data, device="cpu", output_type=types.RGB)
            # Linear with antialiasing is Pillow's BILINEAR: a triangle filter
            # widened by the scale when shrinking (patches ~0.15 grey levels apart).
            images = fn.resize(
                images,
                resize_x=width,
                resize_y=height,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
            )
            patches = [
                fn.crop_mirror_normalize(
                    images,
                    crop_h=s,
                    crop_w=s,
                    # Normalised positions: DALI places the window at
                    # round(pos * (size - S)); the feeder divides by (size - S).
                    crop_pos_y=pos[k, 0],
                    crop_pos_x=pos[k, 1],
                    mirror=mirror[k],
                    mean=[255.0 * m for m in IMAGENET_MEAN],
                    std=[255.0 * v for v in IMAGENET_STD],
                    dtype=_DALI_DTYPES[self.out_dtype],
                    output_layout="CHW",
                )
                for k in range(key.patches_per_image)
            ]
            pipe.set_outputs(fn.stack(*patches))
        pipe.build()
        return pipe

    # -- feeding -----------------------------------------------------------------

    def _source(self, info: types.BatchInfo) -> tuple[list, list, list]:
        """The external source: iteration i of an epoch is window i of the current plan.

        Runs on the thread that schedules the pipeline, ``dali_prefetch`` windows
        ahead of the one being consumed. Raising StopIteration ends DALI's epoch.
        """
        plan, reads = self.plan, self.reads
        if plan is None or reads is None or info.iteration >= len(plan.window_perms):
            raise StopIteration
        start = info.iteration * plan.window
        rows = range(start, min(start + plan.window, plan.num_images))
        data = reads.take(info.iteration)

        height, width = self.settings.resize
        s = plan.patch_size
        # max(..., 1): when the image is exactly patch-sized the only offset is 0.
        scale = np.array([max(height - s, 1), max(width - s, 1)], dtype=np.float64)
        pos = [
            (np.stack([plan.tops[r], plan.lefts[r]], axis=-1) / scale).astype(np.float32)
            for r in rows
        ]
        mirror = [plan.flips[r].astype(np.int32) for r in rows]
        return data, pos, mirror

    # -- running -----------------------------------------------------------------

    def windows(self, plan: PatchPlan) -> Iterator[torch.Tensor]:
        """Yield each window of ``plan`` as ``[n * P, 3, S, S]`` on the target device."""
        depth = self.settings.dali_prefetch
        self.plan = plan
        self.reads = _FileReads(plan, self.paths, self.reader)
        # The first schedule_run asks for `depth` windows at once: read them (and
        # the read-ahead after them) in parallel before it does.
        self.reads.submit(range(depth + READ_AHEAD))
        done = False
        try:
            # The first call fills DALI's queue with `dali_prefetch` windows.
            self._guard(self.pipe.schedule_run, plan, range(depth))
            for w, (rows, _) in enumerate(plan.windows()):
                # The stream that consumes this window: the caller's current stream
                # (None on the CPU, where the outputs are plain host memory).
                stream = torch.cuda.current_stream(self.settings.device) if self.gpu else None
                share = functools.partial(self.pipe.share_outputs, cuda_stream=stream)
                outputs = self._guard(share, plan, range(w, w + 1))
                patches = self._to_torch(outputs[0], stream)
                del outputs  # our last reference to DALI's buffer (see _to_torch)
                self.pipe.release_outputs()
                # Queue the next window now, so it decodes while this one trains.
                self._guard(self.pipe.schedule_run, plan, range(w + 1, w + 1 + depth))
                n = rows.stop - rows.start
                yield patches.view(n * plan.patches_per_image, 3, plan.patch_size, plan.patch_size)
            done = True
        finally:
            if not self.broken:
                self._end_epoch(drain=not done)
            else:
                self._drop_plan()

    def _drop_plan(self) -> None:
        self.plan = None  # any further source call ends DALI's epoch
        if self.reads is not None:
            self.reads.cancel()
            self.reads = None

    def _end_epoch(self, drain: bool) -> None:
        """Leave the pipeline ready for the next plan, also when a consumer stopped early."""
        self._drop_plan()
        if self.pipe is None:  # closed while an epoch was suspended
            return
        try:
            if drain:
                # Windows already scheduled must be consumed, or the next epoch
                # would receive them first.
                while not self.pipe.empty():
                    self.pipe.share_outputs()
                    self.pipe.release_outputs()
                self.pipe.schedule_run()  # reaches the source, which now stops
            self.pipe.reset()
        except Exception as e:
            # A window decoded ahead but never consumed failed (or the consumer
            # stopped because of an error). Nobody asked for that window, so don't
            # raise from here (this runs while a generator closes); the next epoch
            # builds a fresh pipeline and reports the file if it is still bad.
            self.broken = True
            log.warning(
                "DALI loader: ending an epoch early failed (%s); the next epoch builds "
                "a fresh pipeline",
                _one_line(e),
            )

    def close(self) -> None:
        # The DALI pipeline holds our source callback and we hold it: drop our side
        # so it shuts down (threads, device memory) now rather than at a GC pass.
        self._drop_plan()
        self.pipe, self.broken = None, True

    def _guard(self, call: Callable[[], T], plan: PatchPlan, windows: range) -> T:
        """Run a pipeline call; on failure mark the pipeline dead and name the bad file.

        ``windows`` are the plan windows the call may be working on: the one whose
        outputs it returns, or the ones it schedules.
        """
        try:
            return call()
        except LoaderError:
            self.broken = True
            raise
        except RuntimeError as e:
            self.broken = True
            if not _DECODER_FAILED.search(str(e)):
                raise
            start = windows.start * plan.window
            stop = min(windows.stop * plan.window, plan.num_images)
            paths = [self.paths[i] for i in plan.order[start:stop]]
            # "sample #k" counts within one window, so it only helps when there is one.
            in_window = paths if len(windows) == 1 else None
            raise LoaderError(_decode_error_message(str(e), paths, in_window)) from None

    def _to_torch(self, output, stream: torch.cuda.Stream | None) -> torch.Tensor:
        """Copy one window out of DALI's buffer into a fresh ``[n, P, 3, S, S]`` tensor.

        GPU: everything happens in the order of ``stream``, the consumer's current
        stream, and the host waits for nothing:

        - ``share_outputs(cuda_stream=stream)`` (the dynamic executor) bound the
          window to ``stream``: DALI queued a wait in ``stream`` for its own
          kernels instead of blocking the host until they finish.
        - The destination is allocated by PyTorch's caching allocator while
          ``stream`` is current, and the copy is queued on ``stream``; the shuffle
          that reads the tensor runs on ``stream`` too. Allocation, write and every
          read share one stream, so no ``record_stream`` is needed: when the
          tensor dies, the allocator reuses its block only for work queued after
          everything already in that stream. (``record_stream`` is for a tensor
          made on one stream and used on another, as with a side copy stream.)
        - DALI's buffer: a non-blocking ``copy_to_external`` makes the buffer's own
          order wait for the copy, and DALI frees device memory in stream order,
          so our reference can go as soon as the copy is queued, whether or not
          the buffer is recycled (the dynamic executor never recycles outputs on
          release_outputs; with ``dali_prefetch`` windows decoded ahead, each one
          lives in its own buffer until its copy has run).

        A copy, not a zero-copy DLPack view: the view would end its life in
        DALI's pool when PyTorch drops it, and is safe only if DALI frees it in
        the consuming stream's order -- an executor detail this code cannot
        check without a GPU -- while the copy is safe by ``copy_to_external``'s
        contract. It costs one device-to-device pass over the window (0.7 GB in
        fp16 for 96 images x 25 patches: by H100 memory bandwidth, about half a
        millisecond, against the hundreds of milliseconds its 25 training steps take).
        """
        n = len(output)
        p, s = self.key.patches_per_image, self.key.patch_size
        shapes = {tuple(shape) for shape in output.shape()}
        if shapes != {(p, 3, s, s)}:
            raise RuntimeError(f"DALI gave window samples of shapes {sorted(shapes)}")
        if output.dtype != _DALI_DTYPES[self.out_dtype]:
            raise RuntimeError(f"DALI gave {output.dtype}, wanted {self.out_dtype}")
        out = torch.empty((n, p, 3, s, s), dtype=self.out_dtype, device=self.settings.device)
        dst = ctypes.c_void_p(out.data_ptr())
        if stream is None:
            output.copy_to_external(dst)  # host memory: a plain, synchronous copy
        else:
            output.copy_to_external(dst, ctypes.c_void_p(stream.cuda_stream), non_blocking=True)
        return out


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, for a log line. Of DALI's pipeline errors only the
    lines that say what failed are kept, not the pipeline definition's traceback."""
    kept: list[str] = []
    for line in str(e).splitlines():
        said = line.strip()
        if (
            said
            and not line[0].isspace()
            and not _DALI_BOILERPLATE.match(line)
            and said not in kept
        ):
            kept.append(said)
    text = f"{type(e).__name__}: {' '.join(kept)}" if kept else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise LoaderError(f"cannot read image {path}: {e.strerror or e}") from None


def _decode_error_message(
    dali_message: str, candidates: list[Path], window: list[Path] | None
) -> str:
    """Name the file DALI failed on: from its message if it says, else by probing with Pillow."""
    culprit: Path | None = None
    match = re.search(r"sample #(\d+)", dali_message)
    if window is not None and match and int(match.group(1)) < len(window):
        # The error may belong to a window decoded ahead: trust the index only
        # when that file really is bad.
        named = window[int(match.group(1))]
        culprit = named if check_image(named) is not None else None
    if culprit is None:
        culprit = next((p for p in candidates if check_image(p) is not None), None)
    if culprit is not None:
        return f"DALI cannot decode image {culprit} (corrupt or unsupported file)"
    names = ", ".join(str(p) for p in candidates)
    return f"DALI cannot decode one of these images (corrupt or unsupported file): {names}"


class DaliLoader:
    """Decode, resize and cut patches with DALI; shuffle and batch on the device."""

    name = "dali"

    def __init__(self, paths: Sequence[Path], settings: LoaderSettings) -> None:
        self.paths = [Path(p) for p in paths]
        self.settings = settings
        # Reads the next windows' files in parallel while the trainer runs (_FileReads).
        self._reader = ThreadPoolExecutor(max_workers=settings.dali_threads)
        # Building a pipeline is expensive: one per graph shape, reused every epoch.
        self._pipelines: dict[_GraphKey, _WindowPipeline] = {}

    def use_paths(self, paths: Sequence[Path]) -> None:
        # The built pipelines stay (building one takes far longer than a window);
        # they read files through self.paths, now the new list.
        self.paths = [Path(p) for p in paths]
        for pipe in self._pipelines.values():
            pipe.paths = self.paths

    def _pipeline(self, plan: PatchPlan) -> _WindowPipeline:
        key = _GraphKey(plan.window, plan.patches_per_image, plan.patch_size)
        pipe = self._pipelines.get(key)
        if pipe is None or pipe.broken:
            if pipe is not None:
                pipe.close()
            pipe = _WindowPipeline(key, self.paths, self.settings, self._reader)
            self._pipelines[key] = pipe
        return pipe

    def _check(self, plan: PatchPlan) -> None:
        height, width = self.settings.resize
        s = plan.patch_size
        if plan.num_images == 0:
            return
        if plan.tops.min() < 0 or plan.lefts.min() < 0:
            raise ValueError("plan has negative crop offsets")
        if plan.tops.max() + s > height or plan.lefts.max() + s > width:
            raise ValueError(f"plan crops fall outside the resized {height}x{width} image")
        if plan.order.max() >= len(self.paths):
            raise ValueError("plan refers to images this loader does not have")

    def batches(self, plan: PatchPlan) -> Iterator[PatchBatch]:
        self._check(plan)
        pipe = self._pipeline(plan)
        dtype = self.settings.dtype
        finish = (lambda x: x) if pipe.out_dtype == dtype else (lambda x: x.to(dtype))
        yield from shuffle_into_batches(plan, pipe.windows(plan), self.settings.batch_size, finish)

    def close(self) -> None:
        for pipe in self._pipelines.values():
            pipe.close()
        self._pipelines.clear()
        self._reader.shutdown(wait=True, cancel_futures=True)
