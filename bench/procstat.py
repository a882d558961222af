"""Per-row resource accounting from /proc (Linux), without psutil.

``RowMonitor`` watches one benchmark row:

- peak RSS of this process: ``VmHWM`` after resetting it at the row's start
  (``echo 5 > /proc/self/clear_refs``), so it is the row's own peak, though it
  includes whatever earlier rows left allocated; falls back to sampled ``VmRSS``
  where the reset is not allowed. DALI's threads live in this process.
- peak memory of worker processes (DataLoader workers: all descendants of this
  process), sampled every ``interval`` s as the sum of their private memory
  (USS: Private_Clean + Private_Dirty), so pages a forked worker still shares
  with its parent (the model, the image list) are not counted again.
  (``RUSAGE_CHILDREN`` cannot be reset per row, which is why it is not used.)
- bytes read from files by this process and its descendants between
  ``begin_measure`` and ``end_measure`` (``rchar`` in /proc/PID/io, which also
  counts page-cache hits), minus the monitor's own /proc reads. Divided by the
  mean JPEG size it gives how many times each delivered image was read, i.e.
  decoded: 1 for our loaders, ``patch_num`` for the original's.
- peak device-wide GPU memory in use (``cudaMemGetInfo``), which unlike
  ``torch.cuda.max_memory_allocated`` includes DALI's buffers and CUDA contexts
  (and any other process on the GPU).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

MB = 1024 * 1024


class ProcReader:
    """Reads /proc files with os.read and counts the bytes, which land in our own rchar."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0

    def read(self, path: str) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        chunks = []
        try:
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        with self._lock:
            self.bytes_read += sum(len(c) for c in chunks)
        return b"".join(chunks).decode("ascii", "replace")

    def field_kb(self, path: str, key: str) -> int | None:
        """A ``Key:  N kB`` line of a /proc status-like file, in kB."""
        text = self.read(path)
        if text is None:
            return None
        for line in text.splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return None

    def rchar(self, pid: int | str) -> int | None:
        text = self.read(f"/proc/{pid}/io")
        if text is None or not text.startswith("rchar:"):
            return None
        return int(text.split("\n", 1)[0].split()[1])

    def descendants(self, pid: int) -> list[int]:
        found, todo = [], [pid]
        while todo:
            parent = todo.pop()
            try:
                tasks = os.listdir(f"/proc/{parent}/task")
            except OSError:
                continue
            for tid in tasks:
                text = self.read(f"/proc/{parent}/task/{tid}/children") or ""
                kids = [int(c) for c in text.split()]
                found += kids
                todo += kids
        return found


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS; False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RowMonitor:
    def __init__(self, interval: float = 0.25, gpu_used: Callable[[], int] | None = None) -> None:
        self.interval = interval
        self.gpu_used = gpu_used  # bytes in use on the GPU, device-wide
        self.reader = ProcReader()
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.hwm_reset = False
        self.peak_rss_kb = 0
        self.peak_workers_kb = 0
        self.peak_gpu_bytes = 0
        self._measuring = False
        self._first: dict[int, int] = {}  # child pid -> rchar when first seen while measuring
        self._last: dict[int, int] = {}  # child pid -> rchar when last seen
        self._main_rchar0: int | None = None
        self._own0 = 0

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> RowMonitor:
        self.hwm_reset = reset_peak_rss()
        self._sample()
        self.rss_start_mb = round(self.peak_rss_kb / 1024, 1)
        self._thread = threading.Thread(target=self._run, name="row-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        hwm = self.reader.field_kb("/proc/self/status", "VmHWM")
        if self.hwm_reset and hwm is not None:
            self.peak_rss_kb = max(self.peak_rss_kb, hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        reader = self.reader
        rss = reader.field_kb("/proc/self/status", "VmRSS") or 0
        workers = 0
        kids = reader.descendants(self.pid)
        for pid in kids:
            workers += self._private_kb(pid)
        gpu = 0
        if self.gpu_used is not None:
            try:
                gpu = self.gpu_used()
            except Exception:
                gpu = 0
        with self._lock:
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_workers_kb = max(self.peak_workers_kb, workers)
            self.peak_gpu_bytes = max(self.peak_gpu_bytes, gpu)
            if self._measuring:
                self._track_children(kids)

    def _private_kb(self, pid: int) -> int:
        """Memory only this process holds (USS): pages shared with the parent it was
        forked from (the model, for one) are the parent's, not the worker's."""
        text = self.reader.read(f"/proc/{pid}/smaps_rollup")
        if text is None:
            return 0
        private = [
            int(line.split()[1]) for line in text.splitlines() if line.startswith("Private_")
        ]
        if private:
            return sum(private)
        rss = self.reader.field_kb(f"/proc/{pid}/status", "VmRSS")  # overcounts shared pages
        return rss or 0

    def _track_children(self, kids: list[int]) -> None:
        for pid in kids:
            value = self.reader.rchar(pid)
            if value is None:
                continue
            # A worker born after begin_measure started from 0 at its fork.
            self._first.setdefault(pid, 0)
            self._last[pid] = value

    # -- file bytes read ---------------------------------------------------------

    def begin_measure(self) -> None:
        with self._lock:
            self._first, self._last = {}, {}
            for pid in self.reader.descendants(self.pid):
                value = self.reader.rchar(pid)
                if value is not None:
                    self._first[pid] = self._last[pid] = value
            self._main_rchar0 = self.reader.rchar("self")
            self._own0 = self.reader.bytes_read
            self._measuring = True

    def end_measure(self) -> int | None:
        """File bytes read by this process tree since ``begin_measure`` (None if unknown)."""
        with self._lock:
            self._track_children(self.reader.descendants(self.pid))
            self._measuring = False
            own = self.reader.bytes_read - self._own0
            main1 = self.reader.rchar("self")
            if main1 is None or self._main_rchar0 is None:
                return None
            children = sum(self._last[p] - self._first[p] for p in self._last)
            return max(main1 - self._main_rchar0 - own, 0) + children

    # -- results -----------------------------------------------------------------

    def result(self) -> dict:
        return {
            "peak_rss_mb": round(self.peak_rss_kb / 1024, 1) if self.peak_rss_kb else None,
            "peak_workers_private_mb": round(self.peak_workers_kb / 1024, 1),
            "peak_gpu_device_mb": round(self.peak_gpu_bytes / MB, 1)
            if self.gpu_used is not None
            else None,
            "rss_source": "VmHWM (reset per row)" if self.hwm_reset else "sampled VmRSS",
        }
