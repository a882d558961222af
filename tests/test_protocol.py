"""The N-split protocol: hyperiqa/protocol.py's statistics on fabricated run folders,
and scripts/run_protocol.py's commands, settings, signals and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest

from hyperiqa.protocol import format_summary, parse_seeds, summarize, write_summary
from hyperiqa.protocol import statistics as protocol_statistics
from hyperiqa.stopping import Interrupted
from tests.conftest import ROOT, make_dataset, read_json, run_cli, tiny_train_args

SCRIPT = "scripts/run_protocol.py"
spec = importlib.util.spec_from_file_location("run_protocol", ROOT / SCRIPT)
run_protocol = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_protocol)

SCORES_HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"


def tiny_flags() -> list[str]:
    """conftest's tiny training flags for train.py, less those the runner sets, 1 epoch."""
    args = tiny_train_args(Path("data"), Path("run"))
    out, skip = [], False
    for token in args:
        if skip:
            skip = False
        elif token in run_protocol.RESERVED:
            skip = True  # and its value
        else:
            out.append(token)
    out[out.index("--epochs") + 1] = "1"
    return out


# -- fabricated run folders -------------------------------------------------------------------


def fake_run(
    folder: Path,
    test: dict | None = None,
    completed: bool = True,
    resumable: bool = False,
    cross: dict | None = None,
) -> Path:
    """A run folder as train.py leaves it: one epoch, and a test block when given."""
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps({"epochs": 2, "seed": 0, "lr": 2e-5}))
    epoch = {"epoch": 1, "train_loss": 1.0, "train_srcc": 0.5, "val_srcc": 0.7, "val_plcc": 0.72}
    metrics = {"epochs_planned": 1 if completed else 2, "completed": completed,
               "best": {"epoch": 1, "val_srcc": 0.7, "val_plcc": 0.72}, "epochs": [epoch]}  # fmt: skip
    if test is not None:
        metrics["test"] = {"epoch": 1, "num_images": 20, **test}
    if cross is not None:
        metrics["eval"] = {"cross": {"epoch": 1, "num_images": 5, **cross}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if resumable:
        (folder / "resume_state.pt").write_bytes(b"state")
    return folder


def scores(srcc: float | None, plcc: float, krcc: float) -> dict:
    return {"srcc": srcc, "plcc": plcc, "krcc": krcc}


# -- seeds and statistics ---------------------------------------------------------------------


def test_seeds_as_ranges_and_lists() -> None:
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds(" 0-2, 7") == [0, 1, 2, 7]
    assert parse_seeds("4") == [4]
    for bad, message in [("3-1", "backwards"), ("0-2,2", "listed twice"), ("a", "such as"),
                         ("", "such as"), ("-1", "such as"), ("1-", "such as")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_seeds(bad)


def test_statistics_on_known_numbers() -> None:
    values = [0.9, 0.8, 0.85, 0.95]
    out = protocol_statistics(values)
    assert out["n"] == 4
    assert out["median"] == pytest.approx(0.875) and out["mean"] == pytest.approx(0.875)
    # The sample std (ddof=1): sqrt(0.0125 / 3), not the population's sqrt(0.0125 / 4).
    assert out["std"] == pytest.approx((0.0125 / 3) ** 0.5)
    assert protocol_statistics([0.5, 0.7, 0.6])["median"] == pytest.approx(0.6)  # odd count
    assert protocol_statistics([0.9]) == {"n": 1, "median": 0.9, "mean": 0.9, "std": None}
    assert protocol_statistics([]) == {"n": 0, "median": None, "mean": None, "std": None}


def test_summary_counts_finished_splits_only(tmp_path: Path) -> None:
    runs = {
        0: fake_run(tmp_path / "seed0", scores(0.90, 0.91, 0.75), cross=scores(0.6, 0.62, 0.4)),
        1: fake_run(tmp_path / "seed1", scores(0.80, 0.83, 0.65), cross=scores(0.7, 0.71, 0.5)),
        2: fake_run(tmp_path / "seed2", scores(0.85, None, 0.70)),  # PLCC undefined
        3: fake_run(tmp_path / "seed3", completed=False, resumable=True),
        4: tmp_path / "seed4",  # never started
        5: fake_run(tmp_path / "seed5"),  # finished, but trained without --test_json
        6: fake_run(tmp_path / "seed6", scores(0.10, 0.1, 0.1)),  # failed in this protocol run
    }
    summary = summarize(runs, failures={6: "train.py exit code 1"})
    assert (summary["counted"], summary["excluded"]) == (3, 4)
    status = {row["seed"]: row["status"] for row in summary["splits"]}
    assert status == {
        0: "finished", 1: "finished", 2: "finished",
        3: "unfinished (1/2 epochs), resumable", 4: "not started",
        5: "finished without a test score", 6: "failed: train.py exit code 1",
    }  # fmt: skip
    test = summary["statistics"]["test"]
    assert test["srcc"]["n"] == 3 and test["srcc"]["median"] == pytest.approx(0.85)
    assert test["srcc"]["mean"] == pytest.approx(0.85)
    assert test["srcc"]["std"] == pytest.approx(statistics.stdev([0.9, 0.8, 0.85]))
    assert test["plcc"]["n"] == 2 and test["plcc"]["median"] == pytest.approx(0.87)
    assert test["krcc"]["mean"] == pytest.approx(0.7)
    cross = summary["statistics"]["cross"]
    assert cross["srcc"]["n"] == 2 and cross["srcc"]["median"] == pytest.approx(0.65)
    assert list(summary["statistics"]) == ["test", "cross"]
    row = summary["splits"][0]
    assert row["run"] == str(tmp_path / "seed0") and row["best_epoch"] == 1
    assert (row["val_srcc"], row["test_srcc"], row["test_images"]) == (0.7, 0.9, 20)
    assert "ddof=1" in summary["std"]

    table = format_summary(summary)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["seed", "run", "best", "ep"]
    assert [line.split()[0] for line in lines if line.split()[0] in ("median", "mean", "std")] == [
        "median", "mean", "std",
    ]  # fmt: skip
    median = next(line for line in lines if line.startswith("median")).split()
    assert median[1:] == ["0.8500", "0.8700", "0.7000"]
    assert "eval cross (2 splits): SRCC median 0.6500" in table
    assert lines[-1] == (
        "3 of 7 splits counted, 4 excluded (not finished with a test score); std: sample (ddof=1)"
    )


def test_summary_is_written_atomically_as_json(tmp_path: Path) -> None:
    summary = summarize({0: fake_run(tmp_path / "seed0", scores(0.9, 0.9, 0.8))})
    write_summary(tmp_path / "summary.json", summary)
    assert read_json(tmp_path / "summary.json") == summary
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- the runner's commands and settings -------------------------------------------------------


def runner_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--koniq_root", str(tmp_path / "koniq10k"), "--dataset_root", str(tmp_path),
            "--out", str(tmp_path / "proto"), *extra]  # fmt: skip


def test_train_command_one_gpu_and_torchrun(tmp_path: Path) -> None:
    args = run_protocol.parse_args(runner_args(tmp_path, "--seeds", "3", "--", "--lr", "1e-4"))
    cmd = run_protocol.train_command(args, 3, resume=False)
    train_py = str(ROOT / "train.py")
    assert cmd[:2] == [sys.executable, train_py]
    flags = cmd[2:]
    split = tmp_path / "proto" / "splits" / "seed3"
    assert flags[flags.index("--train_json") + 1] == str(split / "koniq_train.json")
    assert flags[flags.index("--val_json") + 1] == str(split / "koniq_val.json")
    assert flags[flags.index("--test_json") + 1] == str(split / "koniq_test.json")
    assert flags[flags.index("--checkpoint_dir") + 1] == str(tmp_path / "proto" / "seed3")
    assert flags[flags.index("--seed") + 1] == "3" and flags[-2:] == ["--lr", "1e-4"]
    assert "--resume" in run_protocol.train_command(args, 3, resume=True)

    args = run_protocol.parse_args(runner_args(tmp_path, "--gpus", "4"))
    cmd = run_protocol.train_command(args, 0, resume=True)
    assert cmd[: cmd.index(train_py)] == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
    ]  # fmt: skip
    assert cmd[-1] == "--resume"


def test_prepare_command_random_and_official(tmp_path: Path) -> None:
    args = run_protocol.parse_args(runner_args(tmp_path, "--test_fraction", "0.3"))
    cmd = run_protocol.prepare_command(args, 5)
    assert cmd[1] == str(ROOT / "scripts" / "prepare_koniq.py")
    assert cmd[cmd.index("--out_dir") + 1] == str(tmp_path / "proto" / "splits" / "seed5")
    assert cmd[cmd.index("--seed") + 1] == "5" and cmd[cmd.index("--split") + 1] == "random"
    assert cmd[cmd.index("--test_fraction") + 1] == "0.3"
    assert cmd[cmd.index("--val_fraction") + 1] == "0.1"
    # The official split is one split: every seed trains on OUT/splits/official.
    args = run_protocol.parse_args(runner_args(tmp_path, "--split", "official"))
    for seed in (0, 1):
        cmd = run_protocol.prepare_command(args, seed)
        assert cmd[cmd.index("--out_dir") + 1] == str(tmp_path / "proto" / "splits" / "official")
        assert "--seed" not in cmd and "--test_fraction" not in cmd


@pytest.mark.parametrize(
    ("train_flags", "needle"),
    [
        (["--seed", "3"], "--seed after -- is set by run_protocol"),
        (["--checkpoint_dir=x"], "--checkpoint_dir after --"),
        (["--dataset_root", "x"], "give it before --"),
        (["--lr", "-1"], "train.py flags after --: argument --lr: must be a positive number"),
        (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    ],
)
def test_bad_train_flags_are_one_line_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture, train_flags: list[str], needle: str
) -> None:
    (tmp_path / "koniq10k").mkdir()
    assert run_protocol.main(runner_args(tmp_path, "--", *train_flags)) == 1
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "proto").exists()


def test_a_protocol_with_other_settings_is_refused(tmp_path: Path) -> None:
    first = run_protocol.parse_args(runner_args(tmp_path, "--", "--lr", "1e-4"))
    run_protocol.claim_protocol(first.out, run_protocol.protocol_settings(first))
    # Other seeds and speed-only flags are the same protocol.
    same = run_protocol.parse_args(runner_args(tmp_path, "--seeds", "10-12", "--",
                                               "--lr", "1e-4", "--num_workers", "3"))  # fmt: skip
    run_protocol.claim_protocol(same.out, run_protocol.protocol_settings(same))
    other = run_protocol.parse_args(runner_args(tmp_path, "--val_fraction", "0.2"))
    with pytest.raises(run_protocol.ProtocolError) as caught:
        run_protocol.claim_protocol(other.out, run_protocol.protocol_settings(other))
    message = str(caught.value)
    assert "train.lr: 0.0001 -> 2e-05" in message and "val_fraction: 0.1 -> 0.2" in message
    assert "use another --out" in message


def test_what_each_split_folder_needs(tmp_path: Path) -> None:
    step = run_protocol.next_step
    assert step(fake_run(tmp_path / "done", scores(0.9, 0.9, 0.8))) == "skip"
    assert step(fake_run(tmp_path / "no_test")) == "foreign"
    assert step(fake_run(tmp_path / "half", completed=False, resumable=True)) == "resume"
    started = tmp_path / "started"  # stopped before its first epoch ended
    started.mkdir()
    (started / "args.json").write_text("{}")
    assert step(started) == "resume"
    (tmp_path / "empty").mkdir()
    assert step(tmp_path / "empty") == "train" and step(tmp_path / "absent") == "train"


# -- finished splits must belong to the protocol ----------------------------------------------


def claimed_protocol(tmp_path: Path, *extra: str):
    """A protocol folder whose protocol.json was written by a start with ``extra``."""
    (tmp_path / "koniq10k").mkdir(exist_ok=True)  # no CSV: preparing a split fails
    args = run_protocol.parse_args(runner_args(tmp_path, *extra))
    run_protocol.claim_protocol(args.out, run_protocol.protocol_settings(args))
    return args


def recorded_args(args, seed: int, device: str = "cpu") -> dict:
    """args.json as train.py writes it for split ``seed``: the flags the runner
    gives, with every ``auto`` resolved as on a CPU (or a CUDA machine with DALI)."""
    flags = [*run_protocol.split_flags(args, seed), *args.train_flags]
    recorded = run_protocol.flags_json(run_protocol.parse_train_args(flags))
    cuda = device == "cuda"
    recorded.update(device=device, loader="dali" if cuda else "pillow",
                    amp="bf16" if cuda else "off", channels_last=cuda, num_workers=0,
                    shuffle_window=recorded["batch_size"], cudnn_benchmark=cuda)  # fmt: skip
    return recorded


def finished_split(
    args, seed: int, srcc: float = 0.9, device: str = "cpu", changes: dict | None = None
) -> Path:
    """A split folder that finished with a test score, its args.json changed as ``changes`` say."""
    folder = fake_run(args.out / f"seed{seed}", scores(srcc, srcc, srcc - 0.1))
    recorded = {**recorded_args(args, seed, device), **(changes or {})}
    (folder / "args.json").write_text(json.dumps(recorded))
    return folder


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        ({"lr": 1e-4}, "lr: 2e-05 -> 0.0001"),
        ({"eval_json": ["clive=c.json"]}, "eval_json: [] -> ['clive=c.json']"),
        ({"seed": 7}, "seed: 1 -> 7"),  # a split copied from another folder
        ({"amp": "bf16", "device": "cuda", "channels_last": True}, "amp: 'off' -> 'bf16'"),
        (None, "has no args.json"),
    ],
)
@pytest.mark.parametrize("summary_only", [True, False])
def test_a_finished_split_with_other_settings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, tamper: dict | None, needle: str,
    summary_only: bool,
) -> None:  # fmt: skip
    """A split trained under other settings (an older protocol, a folder copied in)
    must not enter the summary: one line naming the split and the flag, before any
    training, and no summary.json."""
    args = claimed_protocol(tmp_path, "--seeds", "0-2", "--", "--amp", "off")
    finished_split(args, 0)
    seed1 = finished_split(args, 1, changes=tamper)
    if tamper is None:
        (seed1 / "args.json").unlink()
    argv = runner_args(tmp_path, "--seeds", "0-2", "--", "--amp", "off")
    if summary_only:
        argv = ["--out", str(args.out), "--seeds", "0-2", "--summary_only"]
    assert run_protocol.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"run_protocol: error: seed 1 ({seed1}) ")
    assert needle in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "preparing" not in captured.out  # refused before seed 2 is touched
    assert not (args.out / "summary.json").exists()


@pytest.mark.slow
def test_splits_trained_as_the_protocol_says_count(tmp_path: Path) -> None:
    """A split's args.json holds what train.py decided (device, loader, amp, ...),
    protocol.json the flags as given: auto and the defaults match their outcome."""
    args = claimed_protocol(tmp_path, "--seeds", "0,1")
    finished_split(args, 0, srcc=0.9)  # on a CPU
    finished_split(args, 1, srcc=0.8, device="cuda")
    proc = run_cli(SCRIPT, "--out", str(args.out), "--seeds", "0,1", "--summary_only")
    assert proc.returncode == 0, proc.stderr
    assert read_json(args.out / "summary.json")["counted"] == 2


@pytest.mark.slow
def test_the_summary_covers_every_split_of_the_protocol(tmp_path: Path) -> None:
    """Splits 0-1 from an earlier start stay in the summary of a start with --seeds 2."""
    args = claimed_protocol(tmp_path, "--seeds", "2")
    for seed, srcc in ((0, 0.9), (1, 0.8), (2, 0.85)):
        finished_split(args, seed, srcc=srcc)
    (args.out / "seed01").mkdir()  # not a split folder of the runner's: ignored
    proc = run_cli(SCRIPT, "--out", str(args.out), "--seeds", "2", "--summary_only")
    assert proc.returncode == 0, proc.stderr
    summary = read_json(args.out / "summary.json")
    assert [row["seed"] for row in summary["splits"]] == [0, 1, 2]
    assert summary["counted"] == 3 and summary["statistics"]["test"]["srcc"]["n"] == 3
    assert "also seed 0, 1" in proc.stdout and "3 of 3 splits counted" in proc.stdout


@pytest.mark.slow
def test_without_protocol_json_the_splits_are_compared_with_each_other(tmp_path: Path) -> None:
    fake_run(tmp_path / "seed0", scores(0.9, 0.92, 0.8))
    fake_run(tmp_path / "seed1", scores(0.8, 0.82, 0.7))
    other = json.loads((tmp_path / "seed1" / "args.json").read_text())
    (tmp_path / "seed1" / "args.json").write_text(json.dumps({**other, "lr": 1e-4}))
    proc = run_cli(SCRIPT, "--out", str(tmp_path), "--seeds", "0,1", "--summary_only")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"run_protocol: error: seed 1 ({tmp_path / 'seed1'}) was trained with other settings "
        f"than seed 0 ({tmp_path / 'seed0'}): lr: 2e-05 -> 0.0001; it is not a split of this "
        f"protocol: move it out of {tmp_path} (or use another --out)"
    )
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [("[1, 2]", "is not a protocol record"), ("{not json", "cannot read"),
     ('{"train": 3}', "is not a protocol record"), (None, "protocol.json is not a file")],
)  # fmt: skip
@pytest.mark.slow
def test_a_damaged_protocol_json_is_one_line(
    tmp_path: Path, content: str | None, needle: str
) -> None:
    """Never a traceback, and never taken for "no protocol" (its splits unchecked)."""
    fake_run(tmp_path / "seed0", scores(0.9, 0.92, 0.8))
    protocol = tmp_path / "protocol.json"
    if content is None:
        protocol.mkdir()
    else:
        protocol.write_text(content)
    for argv in (["--summary_only"], ["--koniq_root", str(tmp_path)]):
        proc = run_cli(SCRIPT, "--out", str(tmp_path), "--seeds", "0", *argv)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert protocol.is_dir() if content is None else protocol.read_text() == content
    assert not (tmp_path / "summary.json").exists()


# -- signals ----------------------------------------------------------------------------------

CHILD = """
import pathlib, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda s, f: got.append(s))
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))  # SIGHUP: default, kills it
out = pathlib.Path(sys.argv[1])
out.write_text("ready")
deadline = time.time() + 20
while not got and time.time() < deadline:
    time.sleep(0.02)
time.sleep(0.3)  # a second, duplicate signal would arrive by now
out.write_text(" ".join(map(str, got)))
sys.exit(130)
"""


@pytest.mark.parametrize(
    ("sent", "received"),
    [(signal.SIGINT, signal.SIGINT), (signal.SIGHUP, signal.SIGTERM)],  # a closed terminal
)
def test_a_stop_reaches_the_child_once_then_stops(
    tmp_path: Path, sent: signal.Signals, received: signal.Signals
) -> None:
    """train.py stops at a safe point on SIGINT/SIGTERM; SIGHUP would kill it outright."""
    marker = tmp_path / "child.txt"

    def press_ctrl_c() -> None:
        deadline = time.time() + 20
        while not (marker.is_file() and marker.read_text() == "ready"):
            if time.time() > deadline:
                return
            time.sleep(0.02)
        os.kill(os.getpid(), sent)

    presser = threading.Thread(target=press_ctrl_c)
    with run_protocol.Children() as children:
        presser.start()
        with pytest.raises(Interrupted):
            children.run([sys.executable, "-c", CHILD, str(marker)])
        with pytest.raises(Interrupted):  # no new child starts after a stop
            children.run([sys.executable, "-c", "pass"])
    presser.join()
    assert marker.read_text() == str(int(received))  # once, as the signal train.py handles


def test_ctrl_c_between_children_stops_at_once() -> None:
    with run_protocol.Children(), pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises before this ends


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def koniq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KonIQ-10k-like folder: 8 small JPEGs in 1024x768/ and the scores CSV as released."""
    root = tmp_path_factory.mktemp("data")
    make_dataset(root / "demo", 8)
    image_dir = root / "koniq10k" / "1024x768"
    image_dir.mkdir(parents=True)
    lines = [",".join(f'"{name}"' for name in SCORES_HEADER.split(","))]
    for i, entry in enumerate(read_json(root / "demo" / "demo.json")):
        name = f"{1000 + i}.jpg"
        shutil.copy(root / "demo" / entry["image"], image_dir / name)
        z = entry["score"]
        lines.append(f'"{name}",0,1,2,3,4,10,{1 + z / 25:.4f},0.5,{z}')
    (root / "koniq10k" / "koniq10k_scores_and_distributions.csv").write_text("\n".join(lines))
    return root


@pytest.mark.slow
def test_two_splits_end_to_end_then_skip_and_resume(
    koniq: Path, capfd: pytest.CaptureFixture
) -> None:
    out = koniq / "proto"
    argv = [*runner_args(koniq, "--seeds", "0-1", "--val_fraction", "0.25"), "--", *tiny_flags()]
    proc = run_cli(SCRIPT, *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 2 splits counted; std: sample (ddof=1)" in proc.stdout
    assert f"wrote {out / 'summary.json'}" in proc.stdout

    summary = read_json(out / "summary.json")
    assert summary["protocol"]["split"] == "random" and summary["counted"] == 2
    for seed, row in enumerate(summary["splits"]):
        run = out / f"seed{seed}"
        metrics, args = read_json(run / "metrics.json"), read_json(run / "args.json")
        assert metrics["completed"] and row["status"] == "finished" and row["test_images"] == 2
        assert row["test_srcc"] == metrics["test"]["srcc"] and row["best_epoch"] == 1
        assert args["seed"] == seed and args["test_json"] == str(
            out / "splits" / f"seed{seed}" / "koniq_test.json"
        )
        assert {k: v["images"] for k, v in read_json(run / "data.json").items()} == {
            "train": 4, "val": 2, "test": 2,
        }  # fmt: skip
    tests = [read_json(out / "splits" / f"seed{s}" / "koniq_test.json") for s in (0, 1)]
    assert tests[0] != tests[1]  # each seed is its own split

    # seed1 as a run stopped after its last epoch, before its test scoring: a rerun
    # skips seed0 and resumes seed1, which scores the same best_model.pkl again.
    metrics = read_json(out / "seed1" / "metrics.json")
    test_before = metrics.pop("test")
    metrics["completed"] = False
    (out / "seed1" / "metrics.json").write_text(json.dumps(metrics))
    seed0_written = (out / "seed0" / "metrics.json").stat().st_mtime_ns
    capfd.readouterr()
    assert run_protocol.main(argv) == 0
    printed = capfd.readouterr().out
    assert f"seed 0: finished, skipped ({out / 'seed0'})" in printed
    assert f"seed 1: resuming {out / 'seed1'}" in printed and "preparing" not in printed
    assert (out / "seed0" / "metrics.json").stat().st_mtime_ns == seed0_written
    assert read_json(out / "seed1" / "metrics.json")["test"] == test_before
    assert read_json(out / "summary.json")["counted"] == 2

    # compare_runs reads the same folders, test columns included, and names them
    # after the protocol; its splits/ folder is no run and brings no note.
    proc = run_cli("scripts/compare_runs.py", str(out))
    header, _, *rows = proc.stdout.splitlines()
    assert "test SRCC" in header and "test PLCC" in header
    assert sorted(row.split()[0] for row in rows) == ["proto/seed0", "proto/seed1"]
    assert proc.stderr == ""
    seed1 = next(row for row in rows if row.startswith("proto/seed1 "))
    assert f"{test_before['plcc']:.4f}" in seed1


@pytest.mark.slow
def test_a_failed_split_stops_or_is_skipped_with_keep_going(tmp_path: Path) -> None:
    (tmp_path / "koniq10k").mkdir()  # no CSV: prepare_koniq.py fails for every seed
    argv = runner_args(tmp_path, "--seeds", "0,1", "--", *tiny_flags())
    proc = run_cli(SCRIPT, *argv)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"run_protocol: error: seed 0 failed (prepare_koniq.py exit code 1); run folder "
        f"{tmp_path / 'proto' / 'seed0'}; fix it, then run the same command to go on"
    )
    assert "seed 1" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr

    proc = run_cli(SCRIPT, *argv[: argv.index("--")], "--keep_going", *argv[argv.index("--") :])
    assert proc.returncode == 1 and "going on with the next seed (--keep_going)" in proc.stderr
    summary = read_json(tmp_path / "proto" / "summary.json")
    assert [row["status"] for row in summary["splits"]] == [
        "failed: prepare_koniq.py exit code 1"
    ] * 2
    assert (summary["counted"], summary["excluded"], summary["statistics"]) == (0, 2, {})
    assert "0 of 2 splits counted, 2 excluded" in proc.stdout


@pytest.mark.slow
def test_summary_only_reads_folders_trained_elsewhere(tmp_path: Path) -> None:
    fake_run(tmp_path / "seed0", scores(0.9, 0.92, 0.8))
    fake_run(tmp_path / "seed2", scores(0.8, 0.82, 0.7))
    proc = run_cli(SCRIPT, "--out", str(tmp_path), "--seeds", "0,2", "--summary_only")
    assert proc.returncode == 0, proc.stderr
    summary = read_json(tmp_path / "summary.json")
    assert summary["statistics"]["test"]["srcc"]["median"] == pytest.approx(0.85)
    assert "protocol" not in summary and "2 of 2 splits counted" in proc.stdout


def test_a_seed_range_beyond_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 1000 seeds"):
        parse_seeds("0-100000000000")


def test_a_protocol_or_split_from_before_the_backbone_flag_still_matches() -> None:
    """protocol.json and args.json written before --backbone existed ran resnet50."""
    old = {"split": "random", "train": {"lr": 2e-5}}
    now = {"split": "random", "train": {"lr": 2e-5, "backbone": "resnet50"}}
    assert run_protocol.differences(old, now) == []
    assert run_protocol.differences(old, {**now, "train": {"lr": 2e-5, "backbone": "tiny"}})
    assert run_protocol.split_differences({"lr": 2e-5}, {"lr": 2e-5, "backbone": "resnet50"}) == []
