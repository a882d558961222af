"""Shared fixtures: small generated IQA datasets (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.make_demo_dataset import write_demo_dataset

ROOT = Path(__file__).resolve().parents[1]

# Tests share 2 cores with DataLoader workers; more torch threads only contend.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_dataset(root: Path, num_images: int, size: tuple[int, int] = (240, 256)) -> Path:
    """A learnable demo-style dataset: ``root/demo.json`` + ``root/images/*.jpg``."""
    return write_demo_dataset(root, num_images=num_images, height=size[0], width=size[1], seed=1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 240x256 JPEGs with scores; returns the dataset root (JSON at root/demo.json)."""
    root = tmp_path_factory.mktemp("tiny")
    make_dataset(root, 6)
    return root


def tiny_train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """Flags for a CPU training run that takes seconds: few patches, small images."""
    return [
        "--dataset_root", str(data),
        "--train_json", str(data / "demo.json"),
        "--checkpoint_dir", str(run_dir),
        "--backbone_weights", "none",
        "--device", "cpu",
        "--resize", "240x256",
        "--train_patch_num", "1",
        "--val_patch_num", "2",
        "--val_split", "0.34",
        "--batch_size", "2",
        "--epochs", "2",
        "--num_workers", "0",
        "--no_progress",
        *extra,
    ]  # fmt: skip


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a project command in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# What a finished run folder holds (val_images.json only when there is a validation set).
FINISHED_FILES = {"args.json", "data.json", "train.log", "metrics.json", "best_model.pkl"}
FINISHED_WITH_VAL = FINISHED_FILES | {"val_images.json"}


def read_json(path: Path) -> object:
    return json.loads(path.read_text())


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, no traceback, and the culprit named on stderr."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in {proc.stderr!r}"
