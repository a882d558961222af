"""--tensorboard: per-step loss and learning rates, per-epoch metrics, final scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train
from hyperiqa import tensorboard
from tests.conftest import make_dataset, read_json, tiny_train_args

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.slow
def test_a_run_logs_steps_epochs_and_the_test_score(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, 8)
    entries = read_json(data / "demo.json")
    (data / "train.json").write_text(json.dumps(entries[:6]))
    (data / "test.json").write_text(json.dumps(entries[6:]))
    run = tmp_path / "run"
    args = tiny_train_args(data, run, "--tensorboard", "--test_json", str(data / "test.json"))
    for flag, value in [("--train_json", str(data / "train.json")), ("--batch_size", "1"),
                        ("--train_patch_num", "5"), ("--val_split", "0.34")]:  # fmt: skip
        args[args.index(flag) + 1] = value
    assert train.main(args) == 0
    got = scalars(run)
    # 4 training images x 5 patches = 20 steps per epoch: the loss is read every 20th.
    assert [step for step, _ in got["step/train_loss"]] == [20, 40]
    assert [v for _, v in got["step/lr_backbone"]] == pytest.approx([2e-5, 2e-5])
    metrics = read_json(run / "metrics.json")
    assert [v for _, v in got["epoch/train_loss"]] == pytest.approx(
        [e["train_loss"] for e in metrics["epochs"]]
    )
    assert got["test/srcc"] == [(metrics["test"]["epoch"], pytest.approx(metrics["test"]["srcc"]))]


def test_missing_package_is_one_line_before_anything_is_written(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def no_package() -> None:
        raise tensorboard.UserError("--tensorboard needs the tensorboard package: pip install x")

    monkeypatch.setattr(tensorboard, "require", no_package)
    assert train.main(tiny_train_args(tiny_dataset, tmp_path / "run", "--tensorboard")) == 1
    assert "--tensorboard needs the tensorboard package" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
