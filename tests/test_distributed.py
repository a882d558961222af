"""torchrun + DistributedDataParallel on the CPU (gloo): sharding, gathering, one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluate
from hyperiqa.data import load_samples, split_samples
from hyperiqa.distributed import DistInfo, gather_arrays, run_on_main
from hyperiqa.errors import UserError
from tests.conftest import FINISHED_WITH_VAL, ROOT, make_dataset, read_json, tiny_train_args

TRAIN_PATCHES = 2
VAL_PATCHES = 2


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 2-process torchrun training run; returns (dataset, run folder, patch traces)."""
    root = tmp_path_factory.mktemp("ddp")
    data, run, trace = root / "data", root / "run", root / "trace"
    make_dataset(data, 10)
    trace.mkdir()
    args = tiny_train_args(data, run)
    args += ["--batch_size", "4", "--val_split", "0.3", "--train_patch_num", str(TRAIN_PATCHES)]
    args += ["--val_patch_num", str(VAL_PATCHES)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # The driver records each rank's batches from outside the training loop.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # for `import train`
    driver = [str(ROOT / "tests" / "trace_patches.py"), str(trace)]
    proc = subprocess.run(
        [*cmd, *driver, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return data, run, trace


@pytest.mark.slow  # a 2-process torchrun
def test_one_run_folder_with_every_epoch(ddp_run: tuple[Path, Path, Path]) -> None:
    _, run, _ = ddp_run
    assert {p.name for p in run.iterdir()} == FINISHED_WITH_VAL
    metrics = read_json(run / "metrics.json")
    assert metrics["completed"] and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    args = read_json(run / "args.json")
    assert args["world_size"] == 2 and args["batch_size"] == 4  # the global batch
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/2") == 1  # rank 0 alone writes the log


@pytest.mark.slow  # a 2-process torchrun
def test_ranks_see_disjoint_patches_covering_the_plan(ddp_run: tuple[Path, Path, Path]) -> None:
    data, run, trace = ddp_run
    samples = load_samples(data / "demo.json", data)
    train, _ = split_samples(samples, 0.3, 42)
    metrics = read_json(run / "metrics.json")
    for epoch in (1, 2):
        ranks = [np.load(trace / f"rank{r}_epoch{epoch}.npy") for r in (0, 1)]
        assert len(ranks[0]) and len(ranks[1])  # both ranks trained
        # Whole images go to one rank: no image is decoded twice...
        assert not set(ranks[0]) & set(ranks[1])
        # ...and together the ranks cover every planned patch exactly once.
        counts = np.bincount(np.concatenate(ranks), minlength=len(train))
        assert (counts == TRAIN_PATCHES).all()
        assert metrics["epochs"][epoch - 1]["train_patches"] == len(train) * TRAIN_PATCHES


@pytest.mark.slow  # a 2-process torchrun
def test_val_metrics_equal_a_single_process_evaluation(
    ddp_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, run, _ = ddp_run
    samples = load_samples(data / "demo.json", data)
    _, val = split_samples(samples, 0.3, 42)
    val_json = tmp_path / "val.json"
    val_json.write_text(json.dumps([{"image": s.image, "score": s.label} for s in val]))
    out = tmp_path / "eval.json"
    argv = [
        "--checkpoint", str(run / "best_model.pkl"), "--test_json", str(val_json),
        "--dataset_root", str(data), "--resize", "240x256", "--patch_num", str(VAL_PATCHES),
        "--device", "cpu", "--loader", "pillow", "--output", str(out),
    ]  # fmt: skip
    assert evaluate.main(argv) == 0
    result = json.loads(out.read_text())
    best = read_json(run / "metrics.json")["best"]
    assert result["srcc"] == pytest.approx(best["val_srcc"], abs=1e-6)
    assert result["plcc"] == pytest.approx(best["val_plcc"], abs=1e-4)


def test_single_process_helpers_are_no_ops() -> None:
    info = DistInfo()
    a, b = np.arange(3), np.ones(2)
    assert gather_arrays(info, a, b) == (a, b)
    assert run_on_main(info, lambda: 7) == 7
    with pytest.raises(UserError, match="bad"):
        run_on_main(info, lambda: (_ for _ in ()).throw(UserError("bad")))


def test_train_sh_rejects_a_bad_gpu_count() -> None:
    proc = subprocess.run(
        ["bash", "scripts/train.sh", "--gpus", "x"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--gpus needs a positive number" in proc.stderr


def test_resume_command_repeats_the_launcher(tmp_path: Path) -> None:
    from hyperiqa.run_folder import RunFolder, shell_path

    run = RunFolder(tmp_path / "r", epochs=3)
    train_py = ROOT / "train.py"
    single = run.resume_command(train_py, ["--epochs", "3", "--overwrite"])
    # The interpreter that runs now (the venv's), so the command works as printed.
    python = shell_path(Path(sys.executable))
    assert python in (sys.executable, os.path.relpath(sys.executable))
    assert single.startswith(f"{python} train.py --epochs 3 --resume --checkpoint_dir")
    assert "--overwrite" not in single
    assert run.resume_command(train_py, ["--epochs", "3"], world_size=4).startswith(
        f"{python} -m torch.distributed.run --nproc_per_node 4 train.py --epochs 3 --resume"
    )


def test_the_resume_command_names_train_py_as_seen_from_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Launched from another directory, the printed command still finds train.py."""
    from hyperiqa.run_folder import RunFolder

    monkeypatch.chdir(tmp_path)
    command = RunFolder(tmp_path / "r", epochs=3).resume_command(ROOT / "train.py", [])
    assert f" {ROOT / 'train.py'} --resume" in command
