"""hyperiqa/run_summary.py, scripts/plot_metrics.py and scripts/compare_runs.py on fake run folders."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hyperiqa.run_summary import RunFolderError, find_runs, load_run
from tests.conftest import assert_clean_error

REPO = Path(__file__).resolve().parents[1]
PLOT = REPO / "scripts" / "plot_metrics.py"
COMPARE = REPO / "scripts" / "compare_runs.py"


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plot_metrics = _load_script(PLOT)
compare_runs = _load_script(COMPARE)


def make_run(
    root: Path,
    name: str,
    val_srcc: list[float | None],
    planned: int | None = None,
    completed: bool | None = None,
    resumable: bool = False,
    lr: float = 2e-5,
    seed: int = 0,
    test: dict | None = None,
) -> Path:
    """A run folder as the trainer writes it, with one epoch per val_srcc entry
    (and ``test`` as metrics.json's test block, when given)."""
    run = root / name
    run.mkdir(parents=True)
    planned = planned if planned is not None else len(val_srcc)
    args = {"lr": lr, "batch_size": 96, "epochs": planned, "seed": seed, "val_split": 0.1,
            "loader": "pillow", "device": "cpu"}  # fmt: skip
    (run / "args.json").write_text(json.dumps(args))
    epochs = []
    for i, srcc in enumerate(val_srcc, start=1):
        epochs.append({
            "epoch": i, "train_loss": 10.0 / i, "train_srcc": 0.5 + 0.05 * i,
            "val_srcc": srcc, "val_plcc": None if srcc is None else srcc + 0.01,
            "lr_backbone": lr, "lr_hypernet": lr * 10, "epoch_seconds": 60.0,
            "train_patches_per_s": 1000.0,
        })  # fmt: skip
    scored = [(s, i) for i, s in enumerate(val_srcc, start=1) if s is not None]
    best = None
    if scored:
        srcc, epoch = max(scored)
        best = {"epoch": epoch, "val_srcc": srcc, "val_plcc": srcc + 0.01}
    if completed is None:
        completed = len(val_srcc) >= planned
    metrics = {"epochs_planned": planned, "completed": completed, "best": best, "epochs": epochs}
    if test is not None:
        metrics["test"] = test
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "train.log").write_text("log\n")
    if resumable:
        (run / "resume_state.pt").write_bytes(b"state")
    return run


def run_cli(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO
    )


# --- hyperiqa.run_summary -------------------------------------------------------------------------


def test_load_run_finished(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "a", [0.8, 0.9, 0.85]))
    assert run.status == "finished"
    assert (run.best_epoch, run.best_val_srcc, run.last_epoch) == (2, 0.9, 3)
    assert run.best_val_plcc == pytest.approx(0.91)
    assert run.series("val_srcc") == ([1, 2, 3], [0.8, 0.9, 0.85])


def test_status_unfinished_and_resumable(tmp_path: Path) -> None:
    plain = load_run(make_run(tmp_path, "a", [0.8, 0.9], planned=16))
    assert plain.status == "unfinished (2/16 epochs)"
    resumable = load_run(make_run(tmp_path, "b", [0.8, 0.9, 0.7], planned=16, resumable=True))
    assert resumable.status == "unfinished (3/16 epochs), resumable"


def test_no_val_metrics(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "a", [None, None]))
    assert run.best_val_srcc is None and run.best_epoch is None
    assert run.series("val_srcc") == ([], [])
    assert run.series("train_loss") == ([1, 2], [10.0, 5.0])


def test_best_computed_when_metrics_lack_it(tmp_path: Path) -> None:
    # The minimal metrics.json the format allows has only "epochs".
    run_dir = make_run(tmp_path, "a", [0.7, 0.95, 0.9])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({"epochs": metrics["epochs"]}))
    run = load_run(run_dir)
    assert (run.best_epoch, run.best_val_srcc) == (2, 0.95)
    assert run.epochs_planned == 3 and run.status == "finished"  # planned from args.json


TEST_BLOCK = {"epoch": 2, "srcc": 0.87, "plcc": 0.89, "krcc": 0.7, "num_images": 20}


def test_load_run_reads_the_test_and_eval_blocks(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "a", [0.8, 0.9], test=TEST_BLOCK)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["eval"] = {"clive": {**TEST_BLOCK, "srcc": 0.6}, "bad": "not a block"}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    run = load_run(run_dir)
    assert run.test == TEST_BLOCK and list(run.scores) == ["test", "clive"]
    assert run.scores["clive"]["srcc"] == 0.6
    row = run.row()
    assert (row["test_srcc"], row["test_plcc"], row["test_krcc"], row["test_images"]) == (
        0.87, 0.89, 0.7, 20,
    )  # fmt: skip
    plain = load_run(make_run(tmp_path, "b", [0.8]))
    assert plain.test is None and plain.row()["test_srcc"] is None


def test_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match=r"no metrics\.json"):
        load_run(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        load_run(bad)
    (bad / "metrics.json").write_text('{"epochs_planned": ' + "9" * 5000 + "}")
    with pytest.raises(
        RunFolderError, match=r"not valid JSON: a number has more than 4,300 digits"
    ):
        load_run(bad)  # past Python's integer digit limit: a ValueError, not a JSONDecodeError


def test_find_runs(tmp_path: Path) -> None:
    make_run(tmp_path, "run1", [0.8])
    (tmp_path / "notes").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    runs, skipped = find_runs(tmp_path)
    assert [r.name for r in runs] == ["run1"]
    assert skipped == [(tmp_path / "notes", "no metrics.json")]


# --- plot_metrics --------------------------------------------------------------------------


def test_plot_two_runs(tmp_path: Path) -> None:
    a = make_run(tmp_path, "lr2e-5_seed0", [0.8, 0.85, 0.9])
    b = make_run(tmp_path, "lr1e-4_seed0", [None, None], planned=4)  # val_split 0, unfinished
    out = tmp_path / "curves.png"
    proc = run_cli(PLOT, str(a), str(b), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 10_000
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 800 <= width <= 3000 and 300 <= height <= 2000 and width > height
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_plot_main_single_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, "only", [0.5])
    out = tmp_path / "one.png"
    assert plot_metrics.main([str(run), "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_plot_marks_the_test_score_at_the_best_epoch(tmp_path: Path) -> None:
    tested = load_run(make_run(tmp_path, "tested", [0.8, 0.9, 0.85], test=TEST_BLOCK))
    plain = load_run(make_run(tmp_path, "plain", [0.7, 0.75]))
    fig = plot_metrics.make_figure([tested, plain])
    _, ax_srcc, ax_plcc = fig.axes

    def diamonds(ax) -> list[tuple[float, float]]:
        return [(line.get_xdata()[0], line.get_ydata()[0])
                for line in ax.lines if line.get_marker() == "D"]  # fmt: skip

    assert diamonds(ax_srcc) == [(2, 0.87)] and diamonds(ax_plcc) == [(2, 0.89)]
    assert "test" in ax_srcc.get_title() and "test" in ax_plcc.get_title()
    assert "test" in [text.get_text() for text in ax_srcc.get_legend().get_texts()]
    # Without a test block nothing mentions one.
    fig = plot_metrics.make_figure([plain])
    assert "test" not in fig.axes[1].get_title()
    out = tmp_path / "curves.png"
    assert plot_metrics.main([str(tested.path), str(plain.path), "-o", str(out)]) == 0


def test_plot_skips_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    """A failed start or a stray folder caught by a glob: noted, the runs still drawn."""
    good = make_run(tmp_path, "good", [0.8])
    (tmp_path / "notrun").mkdir()
    out = tmp_path / "curves.png"
    proc = run_cli(PLOT, str(good), str(tmp_path / "notrun"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {tmp_path / 'notrun'}: no metrics.json" in proc.stderr
    assert out.stat().st_size > 0


def test_plot_with_no_run_at_all_fails(tmp_path: Path) -> None:
    (tmp_path / "notrun").mkdir()
    out = tmp_path / "curves.png"
    proc = run_cli(PLOT, str(tmp_path / "notrun"), "-o", str(out))
    assert_clean_error(proc, "none of the 1 folders is a run")
    assert not out.exists()


def test_plot_refuses_to_write_over_its_input(tmp_path: Path) -> None:
    good = make_run(tmp_path, "good", [0.8])
    before = (good / "metrics.json").read_bytes()
    proc = run_cli(PLOT, str(good), "-o", str(good / "metrics.json"))
    assert_clean_error(proc, "would overwrite the input")
    assert (good / "metrics.json").read_bytes() == before


# --- compare_runs --------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_orders_by_best_val_srcc(tmp_path: Path) -> None:
    make_run(tmp_path, "a_mid", [0.85], seed=1)
    make_run(tmp_path, "b_noval", [None])
    make_run(tmp_path, "c_best", [0.7, 0.92], lr=1e-4)
    make_run(tmp_path, "d_low", [0.6, 0.61], planned=16, resumable=True)
    (tmp_path / "scratch").mkdir()
    proc = run_cli(COMPARE, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "lr"]
    names = [line.split()[0] for line in lines[2:]]
    assert names == ["c_best", "a_mid", "d_low", "b_noval"]
    assert "1e-4" in lines[2] and "0.9200" in lines[2] and "finished" in lines[2]
    assert "unfinished (2/16 epochs), resumable" in lines[4]
    assert "skipped scratch: no metrics.json" in proc.stderr


def test_compare_shows_the_test_scores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_run(tmp_path, "tested", [0.8, 0.9], test=TEST_BLOCK)
    make_run(tmp_path, "untested", [0.95])
    assert compare_runs.main([str(tmp_path)]) == 0
    header, _, first, second = capsys.readouterr().out.splitlines()
    assert header.split()[11:15] == ["test", "SRCC", "test", "PLCC"]
    # Ordered by val SRCC, never by test: the untested run (val 0.95) comes first.
    assert first.split()[0] == "untested" and first.split()[8:10] == ["-", "-"]
    assert second.split()[8:10] == ["0.8700", "0.8900"]
    assert compare_runs.main([str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["test_srcc"] == 0.87 and rows[1]["test_krcc"] == 0.7
    assert rows[1]["test_images"] == 20 and rows[0]["test_srcc"] is None


def test_lr_spelled_like_run_folders() -> None:
    assert [compare_runs.format_cell("lr", v) for v in (2e-5, 1e-4, 2.5e-5, 0.001)] == [
        "2e-5", "1e-4", "2.5e-5", "1e-3",
    ]  # fmt: skip


def test_compare_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_run(tmp_path, "low", [0.5])
    make_run(tmp_path, "high", [0.9], planned=3)
    assert compare_runs.main([str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["high", "low"]
    assert rows[0]["best_val_srcc"] == 0.9 and rows[0]["status"] == "unfinished (1/3 epochs)"
    assert {"lr", "batch_size", "epochs", "seed", "best_epoch", "last_epoch"} <= set(rows[0])


@pytest.mark.slow
def test_compare_empty_and_missing(tmp_path: Path) -> None:
    proc = run_cli(COMPARE, str(tmp_path))
    assert proc.returncode == 0 and f"no runs under {tmp_path}" in proc.stdout
    proc = run_cli(COMPARE, str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


# --- protocol folders (scripts/run_protocol.py --out): their splits are runs ------------------


def make_protocol(root: Path, name: str, seeds: list[int], marker: str = "protocol.json") -> Path:
    """A protocol folder as run_protocol.py leaves it: its record, its split files
    and one finished run per seed."""
    protocol = root / name
    protocol.mkdir(parents=True)
    (protocol / marker).write_text(json.dumps({"train": {}}))
    (protocol / "splits" / "seed0").mkdir(parents=True)
    for seed in seeds:
        make_run(protocol, f"seed{seed}", [0.5 + seed / 100], seed=seed, test=TEST_BLOCK)
    return protocol


def test_find_runs_lists_the_splits_of_a_protocol_folder(tmp_path: Path) -> None:
    make_run(tmp_path, "plain", [0.8])
    paper = make_protocol(tmp_path, "protocol_paper", [10, 0, 2])
    (paper / "seed3").mkdir()  # a split whose start failed
    make_protocol(tmp_path, "protocol_empty", [])  # started, no split yet
    make_protocol(tmp_path, "by_hand", [1], marker="summary.json")  # --summary_only
    runs, skipped = find_runs(tmp_path)
    assert [r.name for r in runs] == [
        "by_hand/seed1", "plain",
        "protocol_paper/seed0", "protocol_paper/seed2", "protocol_paper/seed10",
    ]  # fmt: skip
    assert skipped == [
        (tmp_path / "protocol_empty", "a protocol folder without any split run folder (seed<k>)"),
        (paper / "seed3", "no metrics.json"),
    ]


def test_a_seed_folder_outside_a_protocol_is_a_plain_run(tmp_path: Path) -> None:
    make_run(tmp_path, "seed3", [0.8])
    make_run(tmp_path / "experiments", "seed4", [0.7])  # no protocol.json: not a protocol
    runs, skipped = find_runs(tmp_path)
    assert [r.name for r in runs] == ["seed3"]
    assert skipped == [(tmp_path / "experiments", "no metrics.json")]


def test_compare_without_arguments_lists_a_protocol_s_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The default ../checkpoints holding a protocol: its splits, not 'skipped'."""
    checkpoints = tmp_path / "checkpoints"
    make_protocol(checkpoints, "protocol_paper", [0, 1])
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert compare_runs.main([]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[2:]] == [
        "protocol_paper/seed1", "protocol_paper/seed0",
    ]  # fmt: skip
    assert err == ""
    assert compare_runs.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["seed"]) for r in rows] == [
        ("protocol_paper/seed1", 1), ("protocol_paper/seed0", 0),
    ]  # fmt: skip


def test_compare_on_a_protocol_folder_lists_its_splits(tmp_path: Path) -> None:
    paper = make_protocol(tmp_path, "protocol_paper", [0, 1])
    (paper / "seed2").mkdir()
    make_protocol(paper, "seed3", [0])  # a split folder is a run, never a protocol inside one
    proc = run_cli(COMPARE, str(paper))
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[2:]]
    assert names == ["protocol_paper/seed1", "protocol_paper/seed0"]
    # The split files' folder is the protocol's own: no note for it.
    assert proc.stderr.splitlines() == [
        "skipped protocol_paper/seed2: no metrics.json",
        "skipped protocol_paper/seed3: no metrics.json",
    ]
    assert find_runs(tmp_path)[1] == [(paper / "seed2", "no metrics.json"),
                                      (paper / "seed3", "no metrics.json")]  # fmt: skip


def test_plot_draws_a_protocol_s_splits_labelled_like_compare(tmp_path: Path) -> None:
    paper = make_protocol(tmp_path, "protocol_paper", [0, 1])
    other = make_run(tmp_path, "lr1e-4_seed0", [0.6, 0.7])
    out = tmp_path / "curves.png"
    proc = run_cli(PLOT, str(paper), str(other), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "(3 runs)" in proc.stdout
    runs = [load_run(paper / "seed0"), load_run(paper / "seed1"), load_run(other)]
    assert plot_metrics.run_labels(runs) == [
        "protocol_paper/seed0", "protocol_paper/seed1", "lr1e-4_seed0",
    ]  # fmt: skip
    legend = [t.get_text() for t in plot_metrics.make_figure(runs).legends[0].get_texts()]
    assert legend == ["protocol_paper/seed0", "protocol_paper/seed1", "lr1e-4_seed0"]


def test_plot_labels_two_machines_copies_of_one_protocol_apart(tmp_path: Path) -> None:
    a = make_protocol(tmp_path / "machine_a", "protocol_paper", [0])
    b = make_protocol(tmp_path / "machine_b", "protocol_paper", [0])
    runs = [load_run(a / "seed0"), load_run(b / "seed0")]
    assert plot_metrics.run_labels(runs) == [
        "machine_a/protocol_paper/seed0", "machine_b/protocol_paper/seed0",
    ]  # fmt: skip


def test_plot_notes_an_empty_protocol_folder(tmp_path: Path) -> None:
    empty = make_protocol(tmp_path, "protocol_empty", [])
    good = make_run(tmp_path, "good", [0.8])
    out = tmp_path / "curves.png"
    assert plot_metrics.main([str(empty), str(good), "-o", str(out)]) == 0
    proc = run_cli(PLOT, str(empty), "-o", str(out))
    assert_clean_error(proc, "none of the 1 folders is a run")
    assert f"skipped {empty}: a protocol folder without any split run folder" in proc.stderr
