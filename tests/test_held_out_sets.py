"""--val_json, --test_json and --eval_json: validation on a given file, and the
test sets scored with best_model.pkl at the end of the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import evaluate
import train
from hyperiqa.config import parse_args, resolve
from hyperiqa.spec import HeldOutSet
from tests.conftest import make_dataset, read_json, tiny_train_args

TEST_KEYS = {"epoch", "srcc", "plcc", "krcc", "num_images"}


def write_json(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One dataset cut into train / val / test / cross JSON files (disjoint by image)."""
    root = tmp_path_factory.mktemp("sets")
    make_dataset(root, 12)
    entries = read_json(root / "demo.json")
    files = {"root": root}
    for name, part in [("train", entries[:6]), ("val", entries[6:8]),
                       ("test", entries[8:10]), ("cross", entries[10:])]:  # fmt: skip
        files[name] = write_json(root / f"{name}.json", part)
    return files


def held_out_args(sets: dict[str, Path], run: Path, *extra: str) -> list[str]:
    args = tiny_train_args(sets["root"], run, *extra)
    i = args.index("--val_split")
    del args[i : i + 2]
    args[args.index("--train_json") + 1] = str(sets["train"])
    return [*args, "--val_json", str(sets["val"]), "--test_json", str(sets["test"]),
            "--eval_json", f"cross={sets['cross']}"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    assert train.main(held_out_args(sets, run)) == 0
    return run


def test_val_json_is_the_validation_set(finished: Path, sets: dict[str, Path]) -> None:
    args = read_json(finished / "args.json")
    assert args["val_json"] == str(sets["val"]) and args["val_split"] == 0
    val = read_json(finished / "val_images.json")
    assert val == [{"image": e["image"], "score": e["score"]} for e in read_json(sets["val"])]
    data = read_json(finished / "data.json")
    assert {k: v["images"] for k, v in data.items()} == {
        "train": 6, "val": 2, "test": 2, "cross": 2,
    }  # fmt: skip
    assert "images: 6 train, 2 val, 2 test, 2 cross" in (finished / "train.log").read_text()


def test_test_and_eval_blocks_equal_a_separate_evaluation(
    finished: Path, sets: dict[str, Path], tmp_path: Path
) -> None:
    metrics = read_json(finished / "metrics.json")
    assert metrics["completed"] is True
    assert set(metrics["test"]) == TEST_KEYS and set(metrics["eval"]["cross"]) == TEST_KEYS
    assert metrics["test"]["epoch"] == metrics["best"]["epoch"]
    assert metrics["test"]["num_images"] == 2
    for name, block in [("test", metrics["test"]), ("cross", metrics["eval"]["cross"])]:
        out = tmp_path / f"{name}.json"
        argv = [
            "--checkpoint", str(finished / "best_model.pkl"), "--test_json", str(sets[name]),
            "--dataset_root", str(sets["root"]), "--resize", "240x256", "--patch_num", "2",
            "--device", "cpu", "--loader", "pillow", "--output", str(out),
        ]  # fmt: skip
        assert evaluate.main(argv) == 0
        result = read_json(out)
        for key in ("srcc", "plcc", "krcc"):
            assert block[key] == pytest.approx(result[key], abs=1e-6), (name, key)
    log = (finished / "train.log").read_text()
    assert "test (best_model.pkl, epoch" in log and "cross (best_model.pkl, epoch" in log


def test_a_run_killed_while_scoring_resumes_to_the_same_numbers(
    finished: Path, sets: dict[str, Path], tmp_path: Path
) -> None:
    """After the last epoch metrics.json says not completed and has no test block
    (what a kill during the final scoring leaves); --resume scores and finishes."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    metrics = read_json(run / "metrics.json")
    reference = {k: metrics.pop(k) for k in ("test", "eval")}
    metrics["completed"] = False
    (run / "metrics.json").write_text(json.dumps(metrics))
    args = held_out_args(sets, run, "--resume")
    args[args.index("--checkpoint_dir") + 1] = str(run)
    assert train.main(args) == 0
    resumed = read_json(run / "metrics.json")
    assert resumed["completed"] is True
    assert {k: resumed[k] for k in ("test", "eval")} == reference
    assert "every epoch is done, scoring the test sets" in (run / "train.log").read_text()


def test_a_test_image_that_is_also_a_training_image_is_refused(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    leaky = write_json(
        tmp_path / "leaky.json", read_json(sets["test"]) + read_json(sets["train"])[:1]
    )
    args = held_out_args(sets, tmp_path / "run")
    args[args.index("--test_json") + 1] = str(leaky)
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert "1 images of the test set are also in the train set" in err
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing behind


def test_val_json_with_val_split_is_a_flag_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--val_json", "v.json", "--val_split", "0.2"])
    assert exc.value.code == 2
    assert "--val_split: not allowed with argument --val_json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eval_json", "clive"], "expected NAME=PATH"),
        (["--eval_json", "a=x.json", "--eval_json", "a=y.json"], "'a' is used twice"),
        (["--eval_json", "test=x.json"], "'test' names the run's own test set"),
        (["--eval_json", "train=x.json"], "'train' names the run's own train set"),
        (["--eval_json", "val=x.json"], "'val' names the run's own val set"),
        (["--eval_root", "b=dir"], "no --eval_json named 'b'"),
    ],
)
def test_bad_eval_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_run_name_uses_the_val_file(tmp_path: Path) -> None:
    spec = resolve(parse_args(["--val_json", str(tmp_path / "koniq_val.json")]))
    assert spec.run_dir.name == "lr2e-5_bs96_ep16_valkoniq_val_seed42"
    assert resolve(parse_args([])).run_dir.name == "lr2e-5_bs96_ep16_val0.1_seed42"


def test_eval_root_gives_a_set_its_own_image_folder(tmp_path: Path) -> None:
    spec = resolve(parse_args(["--eval_json", "c=c.json", "--eval_root", "c=/data/clive",
                               "--test_json", "t.json", "--dataset_root", "/data"]))  # fmt: skip
    assert spec.held_out_sets() == {
        "test": HeldOutSet("t.json", "/data"),
        "c": HeldOutSet("c.json", "/data/clive"),
    }
