"""Shared fixtures: small generated IQA datasets (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyperiqa.demo_data import write_demo_dataset
from scripts.gpu_check import has_gpu_marks

ROOT = Path(__file__).resolve().parents[1]

# Tests share 2 cores with DataLoader workers; more torch threads only contend.
torch.set_num_threads(min(2, os.cpu_count() or 1))


# -- gpu tests: skipped without CUDA, except in a strict GPU run -------------------------
#
# scripts/gpu_check.sh sets HYPERIQA_GPU_STRICT=1: a GPU check must not pass by
# skipping, so there a gpu-marked test that skips (no CUDA, DALI missing, any
# skip marker or pytest.skip) is reported as a failure, and so is a test module
# skipped while collecting if its source marks tests gpu (those tests would
# silently not run); any other test and module may still skip. The run ends with
# one line that counts what ran ("strict gpu run: ...", copied to the summary).

STRICT_GPU = "HYPERIQA_GPU_STRICT"
_strict_results: dict[str, tuple[bool, str]] = {}  # nodeid -> (gpu-marked, outcome)


def strict_gpu_run() -> bool:
    return os.environ.get(STRICT_GPU, "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _holds_gpu_tests(path: Path) -> bool:
    """Read, not imported (the module skipped): does its source mark tests gpu? A
    folder does when any test file in it does."""
    files = sorted(path.rglob("test_*.py")) if path.is_dir() else [path]
    return any(has_gpu_marks(f) for f in files if f.suffix == ".py")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if strict_gpu_run() and report.skipped and _holds_gpu_tests(collector.path):
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid} was skipped while collecting ({_skip_reason(report)}); "
            f"under {STRICT_GPU}=1 its gpu tests would silently not run"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if not strict_gpu_run():
        return
    report = outcome.get_result()
    gpu = "gpu" in item.keywords
    _, status = _strict_results.get(item.nodeid, (gpu, ""))
    if hasattr(report, "wasxfail"):
        status = "xfail"  # expected to fail: neither counted as run nor as skipped
    elif report.skipped:
        status = "skipped"
        if gpu:
            report.outcome = "failed"
            report.longrepr = (
                f"gpu test skipped under {STRICT_GPU}=1 (a GPU check may not pass by "
                f"skipping): {_skip_reason(report)}"
            )
    elif report.when == "call":
        status = "passed" if report.passed else "failed"
    elif report.failed and status in ("", "passed"):
        status = "error"  # setup or teardown failed
    _strict_results[item.nodeid] = (gpu, status)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not strict_gpu_run():
        return
    results = list(_strict_results.values())
    count = {s: sum(1 for _, status in results if status == s) for s in ("passed", "failed")}
    skipped = sum(1 for _, status in results if status == "skipped")
    errors = sum(1 for _, status in results if status == "error")
    ran = count["passed"] + count["failed"]
    gpu_ran = sum(1 for gpu, status in results if gpu and status in ("passed", "failed"))
    terminalreporter.write_line(
        f"strict gpu run: {ran} tests ran, {gpu_ran} of them gpu-marked; "
        f"{count['passed']} passed, {count['failed']} failed, {skipped} skipped "
        f"(failures when gpu-marked), {errors} errors"
    )


def make_dataset(root: Path, num_images: int, size: tuple[int, int] = (240, 256)) -> Path:
    """A learnable demo-style dataset: ``root/demo.json`` + ``root/images/*.jpg``."""
    return write_demo_dataset(root, num_images=num_images, height=size[0], width=size[1], seed=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny-backbone HyperNet (seed 0), alone in its folder (no args.json):
    for tests of scoring, not of the architecture."""
    from hyperiqa.model import HyperNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pkl"
    torch.save(HyperNet(backbone="tiny").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 240x256 JPEGs with scores; returns the dataset root (JSON at root/demo.json)."""
    root = tmp_path_factory.mktemp("tiny")
    make_dataset(root, 6)
    return root


def dataset_fixtures(num_images: int) -> tuple:
    """(good, data) fixtures for a test module: a demo-style dataset made once per
    module, and a fresh copy of it per test that the test may break.

        good, data = dataset_fixtures(4)
    """

    @pytest.fixture(scope="module")
    def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
        root = tmp_path_factory.mktemp("good")
        make_dataset(root, num_images)
        return root

    @pytest.fixture
    def data(good: Path, tmp_path: Path) -> Path:
        return Path(shutil.copytree(good, tmp_path / "data"))

    return good, data


def tiny_train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """Flags for a CPU training run that takes seconds: few patches, small images,
    the tiny backbone (the run, not the architecture, is under test)."""
    return [
        "--dataset_root", str(data),
        "--train_json", str(data / "demo.json"),
        "--checkpoint_dir", str(run_dir),
        "--backbone", "tiny",
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
