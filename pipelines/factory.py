"""One place that builds a loader by name; the trainer never knows which one it got."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from pipelines.errors import LoaderError
from pipelines.loader import LoaderSettings, PatchLoader

# Loaders a user can pick; "synthetic" (no files read) is the benchmark's ceiling.
LOADERS = ("pillow", "dali")
ALL_LOADERS = (*LOADERS, "synthetic")

DALI_PACKAGES = "nvidia-dali-cuda120 (CUDA 12 driver) or nvidia-dali-cuda130 (CUDA 13 driver)"


def dali_available() -> bool:
    """Is NVIDIA DALI importable? (Checked without importing it: that takes seconds.)"""
    return importlib.util.find_spec("nvidia") is not None and (
        importlib.util.find_spec("nvidia.dali") is not None
    )


def make_loader(kind: str, paths: Sequence[Path], settings: LoaderSettings) -> PatchLoader:
    """Build the loader ``kind`` over one list of images.

    Each loader module is imported only when asked for: DALI is optional and
    slow to import.
    """
    if kind == "pillow":
        from pipelines.pillow import PillowLoader

        return PillowLoader(paths, settings)
    if kind == "dali":
        try:
            from pipelines.dali import DaliLoader
        except (ImportError, OSError) as e:
            # Installed but unloadable: typically a DALI build for another CUDA.
            raise LoaderError(
                f"NVIDIA DALI is installed but does not load ({e}); install "
                f"{DALI_PACKAGES} to match your driver, or use --loader pillow"
            ) from None
        return DaliLoader(paths, settings)
    if kind == "synthetic":
        from pipelines.synthetic import SyntheticLoader

        return SyntheticLoader(paths, settings)
    raise ValueError(f"unknown loader {kind!r}; one of {', '.join(ALL_LOADERS)}")
