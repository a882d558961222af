"""Runs that survive a kill: SIGKILL, SIGTERM and Ctrl-C mid-run, then --resume.

Every interrupted run here is resumed to completion and compared with one
uninterrupted run of the same flags: metrics.json field by field (timings
aside) and best_model.pkl tensor by tensor. All runs are real processes, so
they share torch's thread count (and with it the float summation order).
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import train
from hyperiqa.fit import Trainer
from hyperiqa.model import ModelLoadError
from hyperiqa.stopping import Interrupted, StopSignals
from tests.conftest import FINISHED_WITH_VAL, ROOT, make_dataset, read_json, tiny_train_args

EPOCHS = 3
TIMING_FIELDS = {"epoch_seconds", "train_seconds", "train_patches_per_s"}
RESUME = "resume_state.pt"


def set_flag(args: list[str], flag: str, value: str) -> list[str]:
    args[args.index(flag) + 1] = value
    return args


def three_epoch_args(data: Path, run: Path, *extra: str) -> list[str]:
    """As little compute as still tests the point: per epoch 2 train steps of one
    patch (so a stop can land between steps) and one validation batch."""
    args = tiny_train_args(data, run, *extra)
    for flag, value in [("--epochs", str(EPOCHS)), ("--val_split", "0.5"),
                        ("--batch_size", "1"), ("--val_patch_num", "1")]:  # fmt: skip
        set_flag(args, flag, value)
    return args


# One torch thread per run: every run of a comparison must use the same count (it
# sets the float summation order), and on a shared 2-core machine two spinning
# OpenMP threads per process run several times slower than one.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_train(args: list[str], launch: str | None = None, **popen: object) -> subprocess.Popen:
    """train.py in a new process; ``launch``: Python code to run it with instead."""
    return subprocess.Popen(
        [sys.executable, *(["-c", launch] if launch else ["train.py"]), *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until ``ready()``; fail if the process ends first (it was meant to be killed)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"train.py ended (rc {proc.returncode}) before the kill point:\n{out}\n{err}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the kill point")
        time.sleep(0.02)


def finish(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def without_timings(metrics: dict) -> dict:
    rows = [{k: v for k, v in e.items() if k not in TIMING_FIELDS} for e in metrics["epochs"]]
    return {**metrics, "epochs": rows}


def assert_same_run(run: Path, reference: Path) -> None:
    """The folder of a finished run equals the uninterrupted one, timings aside."""
    assert {p.name for p in run.iterdir()} == FINISHED_WITH_VAL  # dotfiles (temp files) included
    assert without_timings(read_json(run / "metrics.json")) == without_timings(
        read_json(reference / "metrics.json")
    )
    got = torch.load(run / "best_model.pkl", weights_only=True)
    want = torch.load(reference / "best_model.pkl", weights_only=True)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def epochs_done(run: Path) -> list[int]:
    if not (run / "metrics.json").is_file():
        return []
    return [e["epoch"] for e in read_json(run / "metrics.json")["epochs"]]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four images: two to train on, two to validate (val SRCC is defined)."""
    root = tmp_path_factory.mktemp("four")
    make_dataset(root, 4)
    return root


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    finish(three_epoch_args(data, run))
    return run


# -- SIGKILL -----------------------------------------------------------------------------------


def temp_files(run: Path) -> set[str]:
    return {p.name for p in run.glob(".*.tmp")}


@pytest.mark.slow
def test_sigkill_three_times_then_resume_reproduces_the_run(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    rng = random.Random(20240605)  # the kill moments: random, but the same on every test run
    run = tmp_path / "run"
    args = three_epoch_args(data, run)

    # Kill 1, in epoch 1: args.json is written, no epoch is complete yet.
    proc = start_train(args)
    wait_until(lambda: (run / "args.json").is_file(), proc)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.kill()
    proc.wait()
    assert not (run / RESUME).exists(), "kill 1 was meant to land before epoch 1 ended"

    # Kill 2: resume with nothing saved starts over; the kill lands at a random
    # moment of epoch 2's steps, scaled by epoch 1's length so that it does on
    # fast and slow machines alike.
    proc = start_train([*args, "--resume"])
    wait_until(lambda: (run / RESUME).is_file(), proc)
    epoch_seconds = read_json(run / "metrics.json")["epochs"][0]["epoch_seconds"]
    delay = rng.uniform(0.0, 0.5) * epoch_seconds
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before kill 2"
    proc.kill()
    proc.wait()
    print(f"kill 2: {delay:.2f}s into epoch 2 (epoch 1 took {epoch_seconds}s)")
    assert epochs_done(run) == [1] and (run / RESUME).is_file()

    # Kill 3, inside a write: while epoch 2's resume state is half written.
    before = temp_files(run)
    proc = start_train([*args, "--resume"])
    wait_until(lambda: any(n.startswith(f".{RESUME}.") for n in temp_files(run) - before), proc)
    proc.kill()
    proc.wait()
    assert epochs_done(run) == [1, 2] and temp_files(run), "kill 3 was meant to leave a temp file"

    finish([*args, "--resume"])
    assert_same_run(run, reference)  # redoes epoch 2 identically; no temp file is left


# -- SIGTERM and Ctrl-C ------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


def worker_alive(pid: int, forkserver: bool = False) -> bool:
    """A DataLoader worker runs (the training loop is under way): a child of train.py,
    or with a fork server a grandchild (the server's other sibling has no children)."""
    kids = children(pid)
    return any(children(k) for k in kids) if forkserver else bool(kids)


# Decode workers started by a fork server, as Python 3.14 does by default on
# Linux: unlike forked ones they import for a second or so before they can
# ignore Ctrl-C, so a Ctrl-C soon after an epoch starts kills one. It must still
# end as a clean stop.
LAUNCH_WITH_FORKSERVER = (
    "import multiprocessing, sys, train; "
    "multiprocessing.set_start_method('forkserver'); sys.exit(train.main())"
)


def stop_line(out: str) -> str:
    lines = [line for line in out.splitlines() if "resume with: " in line]
    assert len(lines) == 1, out
    return lines[0]


def printed_command(line: str) -> list[str]:
    command = shlex.split(line.split("resume with: ", 1)[1])
    # The interpreter that ran (this venv's), so the command works as printed.
    assert os.path.samefile(ROOT / command[0], sys.executable)
    assert command[1] == "train.py" and "--resume" in command
    return command[2:]


def assert_stopped_cleanly(proc: subprocess.Popen, run: Path, signal_name: str) -> list[str]:
    """Exit 130 without a traceback, a resumable folder; returns the printed command's args."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err + out, err
    assert f"{signal_name}: stopping at the next safe point" in err  # said at once
    assert (run / RESUME).is_file() and not read_json(run / "metrics.json")["completed"]
    line = stop_line(out)
    assert f"stopped after epoch {epochs_done(run)[-1]};" in line
    assert line in (run / "train.log").read_text()
    return printed_command(line)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to see workers")
@pytest.mark.slow
def test_ctrl_c_and_sigterm_stop_cleanly_and_the_printed_command_resumes(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    # A terminal's Ctrl-C reaches the whole process group: decode workers too,
    # here one that has only just started (epoch 2's first).
    args = three_epoch_args(data, run, "--num_workers", "1")
    proc = start_train(args, start_new_session=True, launch=LAUNCH_WITH_FORKSERVER)
    wait_until(lambda: (run / RESUME).is_file() and worker_alive(proc.pid, True), proc)
    os.killpg(proc.pid, signal.SIGINT)
    resume = assert_stopped_cleanly(proc, run, "SIGINT")
    assert resume == [*args, "--resume"]

    # The printed command continues the run; SIGTERM (a scheduler's stop) stops it again.
    proc = start_train(resume)
    log = run / "train.log"
    wait_until(lambda: "resuming" in log.read_text() and worker_alive(proc.pid), proc)
    proc.send_signal(signal.SIGTERM)
    resume = assert_stopped_cleanly(proc, run, "SIGTERM")

    finish(resume)
    assert_same_run(run, reference)


def test_a_second_signal_stops_at_once(capfd: pytest.CaptureFixture) -> None:
    with StopSignals() as stop, stop.deferred():
        os.kill(os.getpid(), signal.SIGINT)  # the first one only asks
        assert stop.requested == signal.SIGINT
        assert "SIGINT: stopping at the next safe point" in capfd.readouterr().err
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_signal_during_setup_stops_at_once() -> None:
    with StopSignals() as stop, pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested is None


def test_ctrl_c_during_setup_is_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the images are being checked

    monkeypatch.setattr(train, "check_dataset", interrupted)
    assert train.main(three_epoch_args(data, tmp_path / "run")) == 130
    assert capsys.readouterr().err == "train.py: interrupted during setup, before any epoch ran\n"


@pytest.mark.slow
def test_ctrl_c_while_the_folder_is_prepared_stops_with_a_resume_command(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is prepared whole (the signal waits), then the run stops and says
    how to resume; --resume then trains the run to its end."""
    real_begin = train.RunFolder.begin

    def begin_then_ctrl_c(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # lands in the middle of writing the folder
        real_begin(*args, **kwargs)

    monkeypatch.setattr(train.RunFolder, "begin", begin_then_ctrl_c)
    run = tmp_path / "run"
    args = three_epoch_args(data, run)
    assert train.main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted during setup" not in err
    log = (run / "train.log").read_text()
    assert "stopped after epoch 0; resume with:" in log
    assert (run / "args.json").is_file() and (run / "data.json").is_file()
    monkeypatch.undo()

    # Resumed, then stopped in epoch 2 (at its next step: epoch 1 is the last one done).
    real_epoch = Trainer.run_epoch

    def ctrl_c_in_epoch_2(self, epoch: int) -> dict:
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", ctrl_c_in_epoch_2)
    assert train.main([*args, "--resume"]) == 130
    monkeypatch.undo()
    # Resumed again and stopped while the folder is prepared: the log names epoch 1,
    # not the 0 of a fresh history.
    monkeypatch.setattr(train.RunFolder, "begin", begin_then_ctrl_c)
    assert train.main([*args, "--resume"]) == 130
    monkeypatch.undo()
    log = (run / "train.log").read_text()
    stops = [line for line in log.splitlines() if "stopped after epoch " in line]
    # (the log restarts with the run when it starts over from no resume state)
    assert [line.split("stopped after epoch ")[1][:2] for line in stops[-2:]] == ["1;", "1;"]

    # A Ctrl-C during the final write lets the run end: complete, no resume state left.
    real_finish = train.RunFolder.finish

    def ctrl_c_then_finish(self, held_out: dict) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_finish(self, held_out)

    monkeypatch.setattr(train.RunFolder, "finish", ctrl_c_then_finish)
    assert train.main([*args, "--resume"]) == 0
    assert read_json(run / "metrics.json")["completed"] is True
    assert not (run / "resume_state.pt").exists()


# -- refusals (in-process: they stop before any training) --------------------------------------


def copy_files(src: Path, dst: Path, *names: str) -> Path:
    dst.mkdir(parents=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


def test_resume_with_changed_hyperparameters_is_refused_listing_them(
    data: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = copy_files(reference, tmp_path / "run", "args.json", "metrics.json")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    args = three_epoch_args(data, run, "--resume", "--lr", "1e-4", "--batch_size", "4")
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert "--resume: flags differ" in err
    assert "lr: 2e-05 -> 0.0001" in err and "batch_size: 1 -> 4" in err
    assert "shuffle_window: 1 -> 4" in err  # resolved values are compared too
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_may_change_flags_that_do_not_change_results(
    data: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Same run, more workers, no data check: accepted, and refused only because it is complete.
    run = copy_files(reference, tmp_path / "run", "args.json", "data.json", "metrics.json")
    extra = ("--resume", "--num_workers", "2", "--skip_check", "--save_all_epochs")
    assert train.main(three_epoch_args(data, run, *extra)) == 1
    err = capsys.readouterr().err
    assert "flags differ" not in err and "already complete" in err and str(run) in err


def test_resume_with_nothing_there_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "nothing"
    assert train.main(three_epoch_args(data, run, "--resume")) == 1
    err = capsys.readouterr().err
    assert "holds no run to continue" in err and str(run) in err


def test_unreadable_resume_state_is_a_clean_error(
    data: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = copy_files(reference, tmp_path / "run", "args.json")
    (run / RESUME).write_bytes(b"not a checkpoint")
    assert train.main(three_epoch_args(data, run, "--resume")) == 1
    err = capsys.readouterr().err
    assert f"{run / RESUME} is not a resume state written by train.py" in err
    assert "--overwrite" in err
    assert (run / RESUME).read_bytes() == b"not a checkpoint"


# -- --overwrite --------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["malformed JSON", "bad image", "missing backbone weights"])
def test_overwrite_leaves_the_old_run_alone_when_setup_fails(
    failure: str,
    data: Path,
    reference: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    run = copy_files(reference, tmp_path / "run", "args.json", "metrics.json", "train.log")
    (run / "best_model.pkl").write_bytes(b"the old weights")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    args = three_epoch_args(data, run, "--overwrite")
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    if failure == "malformed JSON":
        (copy / "demo.json").write_text('[{"image": "images/a.jpg", "score": 1.0},')
        culprit = "malformed metadata JSON"
    elif failure == "bad image":
        bad = sorted((copy / "images").iterdir())[0]
        bad.write_bytes(bad.read_bytes()[:500])
        culprit = bad.name
    else:
        args = [*args, "--backbone_weights", str(tmp_path / "no_such_resnet.pth")]
        set_flag(args, "--backbone", "resnet50")  # the one backbone with weights to load
        culprit = "no_such_resnet.pth"
    set_flag(args, "--dataset_root", str(copy))
    set_flag(args, "--train_json", str(copy / "demo.json"))

    assert train.main(args) == 1
    assert culprit in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# What an entry point does on Ctrl-C while it still imports torch (seconds): the
# signal is sent by an import hook the moment torch's import begins.
INTERRUPT_WHILE_IMPORTING = """
import builtins, os, runpy, signal, sys
real_import = builtins.__import__
def hooked(name, *args, **kwargs):
    if name == "torch":
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = hooked
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(
    ("program", "line"),
    [
        ("train.py", "train.py: interrupted during setup, before any epoch ran\n"),
        ("evaluate.py", "evaluate.py: interrupted; nothing was written\n"),
        ("predict.py", "predict.py: interrupted; nothing was written\n"),
        ("scripts/run_protocol.py", "run_protocol: interrupted before any split started\n"),
    ],
)
@pytest.mark.slow
def test_ctrl_c_while_importing_is_one_line_and_exit_130(program: str, line: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPT_WHILE_IMPORTING, program],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (130, line)


@pytest.mark.slow
def test_a_resume_builds_no_backbone_weights_it_would_overwrite(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights come from the resume state: nothing is downloaded or read, and no
    'ImageNet weights unavailable' line misleads the log of the resumed run."""
    built: list[tuple] = []
    real_build = train.build_model

    def offline_build(weights: str, *args: object) -> object:
        built.append((weights, *args))
        if weights == "imagenet":  # as without internet, and without downloading here
            raise ModelLoadError("could not download torchvision's ImageNet ResNet-50 weights")
        return real_build(weights, *args)

    monkeypatch.setattr(train, "build_model", offline_build)
    run = tmp_path / "run"
    args = three_epoch_args(data, run, "--backbone_weights", "auto", "--epochs", "2")
    set_flag(args, "--backbone", "resnet50")
    real_epoch = Trainer.run_epoch

    def stop_after_epoch_1(self: Trainer, epoch: int) -> object:
        record = real_epoch(self, epoch)
        os.kill(os.getpid(), signal.SIGINT)  # noted; the run stops after this epoch
        return record

    monkeypatch.setattr(Trainer, "run_epoch", stop_after_epoch_1)
    assert train.main(args) == 130
    first_log = (run / "train.log").read_text()
    assert "ImageNet weights unavailable" in first_log
    monkeypatch.setattr(Trainer, "run_epoch", real_epoch)
    assert train.main([*args, "--resume"]) == 0
    assert [call[0] for call in built] == ["imagenet", "none", "none"]
    assert built[-1][1] is None  # no --init_checkpoint read either
    resumed = (run / "train.log").read_text()[len(first_log) :]
    assert "resuming" in resumed and "ImageNet weights unavailable" not in resumed
