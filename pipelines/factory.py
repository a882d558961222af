"""One place that picks and builds a loader; the trainer never knows which one it got."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperiqa.errors import UserError
from pipelines.batching import PatchLoader

LOADERS = ("auto", "pillow", "dali")

DALI_MISSING = (
    "--loader dali needs NVIDIA DALI, which is not installed: "
    "pip install nvidia-dali-cuda120 (or use --loader pillow, which needs nothing more)"
)


@dataclass(frozen=True)
class LoaderSettings:
    resize: tuple[int, int]  # (H, W) every image is resized to before cropping
    batch_size: int  # patches per batch (per process)
    device: torch.device  # where batches are delivered
    num_workers: int = 0  # Pillow decode processes
    dtype: torch.dtype = torch.float32  # dtype of the delivered images
    dali_threads: int = 4  # DALI CPU threads (file reading; decoding too on the CPU backend)
    dali_hw_decoder_load: float = 0.65  # share of JPEGs for the hardware decoder (A100/H100)
    dali_prefetch: int = 2  # DALI pipeline depth: windows decoded ahead of training


def resolve_device(requested: str) -> torch.device:
    """``--device auto|cuda|cpu`` -> the device used; cuda without a GPU is the user's error."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    if requested == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    return torch.device(requested)


def delivery_dtype(device: torch.device, amp: str | None) -> torch.dtype:
    """The dtype loaders hand to the model: half the bytes under autocast on CUDA
    (the convolutions run in bf16/fp16 anyway), fp32 when the model runs in fp32."""
    if device.type == "cuda" and amp in ("bf16", "fp16"):
        return torch.float16
    return torch.float32


def default_workers(device: torch.device) -> int:
    """Pillow decode processes when --num_workers is not given.

    On a GPU the CPU only feeds it: use the cores (at most 8). On the CPU the
    model needs both cores and decoding once per image costs about 0.6 ms per
    patch against some 200 ms of ResNet-50 work: a worker process only adds
    transfer cost and a forked copy of the trainer's memory (measured with
    bench/throughput.py --worker_sweep 0,1,2 on 2 cores: 0 workers was fastest).
    """
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, 8)


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia") is not None and (
        importlib.util.find_spec("nvidia.dali") is not None
    )


def resolve_loader(requested: str, device: torch.device) -> tuple[str, str]:
    """Turn ``--loader auto|pillow|dali`` into a concrete loader, with a line saying why."""
    if requested not in LOADERS:
        raise UserError(f"--loader must be one of {', '.join(LOADERS)}, got {requested!r}")
    if requested == "pillow":
        return "pillow", "loader: pillow (as requested)"
    has_dali = dali_available()
    if requested == "dali":
        if not has_dali:
            raise UserError(DALI_MISSING)
        backend = "GPU" if device.type == "cuda" else "CPU"
        return "dali", f"loader: dali on the {backend} backend"
    if device.type == "cuda" and has_dali:
        return "dali", "loader: dali on the GPU backend (auto: CUDA and DALI present)"
    why = "no CUDA device in use" if device.type != "cuda" else "DALI not installed"
    return "pillow", f"loader: pillow (auto: {why})"


def make_loader(
    kind: str, paths: Sequence[Path], scores: Sequence[float], settings: LoaderSettings
) -> PatchLoader:
    """Build the loader ``kind`` ("pillow" or "dali") over one list of images."""
    if kind == "pillow":
        from pipelines.pillow import PillowLoader

        return PillowLoader(
            paths,
            scores,
            resize=settings.resize,
            batch_size=settings.batch_size,
            device=settings.device,
            num_workers=settings.num_workers,
            dtype=settings.dtype,
        )
    if kind == "dali":
        if not dali_available():
            raise UserError(DALI_MISSING)
        from pipelines.dali import DaliLoader

        return DaliLoader(paths, scores, settings)
    raise UserError(f"unknown loader {kind!r}")
