"""Tests for hyperiqa.config: the training defaults (the original release's), flag checks, demo
overrides, the run-folder name, and ``resolve`` into the run's RunSpec (args.json)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from hyperiqa.arg_types import HelpFormatter
from hyperiqa.config import (
    DEFAULT_CHECKPOINTS,
    DEMO_DEFAULTS,
    DEMO_VAL_SPLIT,
    build_parser,
    format_lr,
    parse_args,
    resolve,
)
from hyperiqa.spec import RunSpec


def spec_of(*argv: str) -> RunSpec:
    return resolve(parse_args(list(argv)))


@pytest.fixture(scope="module")
def defaults() -> argparse.Namespace:
    return parse_args([])


# -- defaults -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("dataset_root", "../datasets/"),
        ("train_json", "../datasets/metas/koniq_train.json"),
        ("val_split", None),  # resolved: 0.1, or 0 with --val_json
        ("lr", 2e-5),
        ("lr_ratio", 10.0),
        ("weight_decay", 5e-4),
        ("batch_size", 96),
        ("epochs", 16),
        ("seed", 42),
        ("patch_size", 224),
        ("train_patch_num", 25),
        ("val_patch_num", 25),
        ("resize", (384, 512)),
        ("loader", "auto"),
        ("device", "auto"),
        ("checkpoint_dir", None),
        ("save_all_epochs", False),
        ("overwrite", False),
        ("resume", False),
        ("demo", False),
    ],
)
def test_training_defaults(defaults: argparse.Namespace, field: str, expected) -> None:
    assert getattr(defaults, field) == expected
    assert type(getattr(defaults, field)) is type(expected)


def test_defaults_resolve_to_the_paper_run_on_this_cpu() -> None:
    spec = spec_of("--device", "cpu")
    assert spec.val_split == 0.1 and spec.shuffle_window == 96
    assert spec.run_dir == DEFAULT_CHECKPOINTS / "lr2e-5_bs96_ep16_val0.1_seed42"
    assert spec.run_dir == Path("../checkpoints/lr2e-5_bs96_ep16_val0.1_seed42")
    rt = spec.runtime
    assert (rt.device.type, rt.loader, rt.amp_name, rt.num_workers) == ("cpu", "pillow", "off", 0)


def test_every_parser_flag_reaches_args_json() -> None:
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    resolved_only = {"world_size"}  # set from torchrun's environment, not a flag
    assert set(spec_of("--device", "cpu").to_json()) == dests | resolved_only


def test_valid_values_parse() -> None:
    cfg = spec_of(
        "--val_split",
        "0",
        "--resize",
        "512x384",
        "--batch_size",
        "1",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--loader",
        "pillow",
        "--device",
        "cpu",
        "--weight_decay",
        "0",
        "--seed",
        "0",
    )
    assert cfg.val_split == 0.0
    assert cfg.resize == (512, 384)
    assert cfg.batch_size == 1
    assert cfg.epochs == 1
    assert cfg.lr == 1e-3
    assert cfg.runtime.loader == "pillow"
    assert cfg.runtime.device.type == "cpu"
    assert cfg.weight_decay == 0.0
    assert cfg.seed == 0


def test_resize_accepts_uppercase_x() -> None:
    assert parse_args(["--resize", "256X320"]).resize == (256, 320)


def test_patch_size_equal_to_resize_side_is_allowed() -> None:
    cfg = parse_args(["--resize", "224x300", "--patch_size", "224"])
    assert cfg.patch_size == 224


# -- invalid values: argparse errors naming the flag -------------------------------


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--val_split", "1"], "--val_split"),
        (["--val_split", "-0.1"], "--val_split"),
        (["--val_split", "abc"], "--val_split"),
        (["--val_split", "1.5"], "--val_split"),
        (["--batch_size", "0"], "--batch_size"),
        (["--batch_size", "-4"], "--batch_size"),
        (["--batch_size", "2.5"], "--batch_size"),
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-1e-5"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--lr_ratio", "0"], "--lr_ratio"),
        (["--weight_decay", "-1"], "--weight_decay"),
        (["--seed", "-1"], "--seed"),
        (["--resize", "384"], "--resize"),
        (["--resize", "0x5"], "--resize"),
        (["--resize", "5x0"], "--resize"),
        (["--resize", "axb"], "--resize"),
        (["--resize", "384x512x3"], "--resize"),
        (["--resize", "-384x512"], "--resize"),
        (["--patch_size", "0"], "--patch_size"),
        (["--train_patch_num", "0"], "--train_patch_num"),
        (["--val_patch_num", "0"], "--val_patch_num"),
        (["--loader", "foo"], "--loader"),
        (["--device", "tpu"], "--device"),
        (["--amp", "fp8"], "--amp"),
        (["--dali_hw_decoder_load", "1.5"], "--dali_hw_decoder_load"),
        (["--num_workers", "-1"], "--num_workers"),
        (["--patch_size", "385"], "--patch_size"),
        (["--resize", "200x300"], "--patch_size"),  # default 224 no longer fits
        (["--resize", "300x200", "--patch_size", "224"], "--patch_size"),
        (["--resume", "--overwrite"], "--resume"),
    ],
)
def test_invalid_value_is_an_argparse_error_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert "Traceback" not in err


def test_resume_with_overwrite_error_names_both(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--overwrite", "--resume"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


def test_patch_size_error_mentions_resize(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--resize", "100x120"])
    err = capsys.readouterr().err
    assert "224" in err and "100x120" in err


@pytest.mark.parametrize("size", ["112", "200", "256"])
def test_patch_size_other_than_224_is_a_flag_error(
    size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The LDA branches pool 56/28/14/7 maps of a 224 patch: other sizes crash mid-run."""
    with pytest.raises(SystemExit) as exc:
        parse_args(["--patch_size", size, "--resize", "256x256"])
    assert exc.value.code == 2
    assert f"--patch_size: HyperIQA's architecture needs 224, got {size}" in capsys.readouterr().err


def test_unknown_flag_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--no_such_flag"])
    assert exc.value.code == 2
    assert "--no_such_flag" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--eval_json", "c=a.json", "--eval_json", "c=b.json"], "--eval_json: the name 'c'"),
        (["--eval_json", "c=a.json", "--eval_root", "c=/x", "--eval_root", "c=/y"],
         "--eval_root: the name 'c' is used twice"),
        (["--eval_root", "k=/x"], "--eval_root: no --eval_json named 'k'"),
        (["--eval_json", "val=v.json"], "'val' names the run's own val set"),
    ],
)  # fmt: skip
def test_held_out_set_names_are_checked(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert error in capsys.readouterr().err


# -- demo -----------------------------------------------------------------------


def test_demo_applies_demo_defaults() -> None:
    cfg = parse_args(["--demo"])
    assert cfg.demo is True
    for key, value in DEMO_DEFAULTS.items():
        assert getattr(cfg, key) == value, key
    assert resolve(cfg).run_dir.name == "demo_lr1e-4_bs16_ep4_val0.333_seed42"


@pytest.mark.parametrize(
    "argv",
    [
        ["--demo", "--epochs", "3"],
        ["--demo", "--epochs=3"],
        ["--epochs", "3", "--demo"],
        ["--epochs=3", "--demo"],
    ],
)
def test_demo_explicit_flags_win(argv: list[str]) -> None:
    cfg = parse_args(argv)
    assert cfg.epochs == 3
    # The other demo defaults still apply.
    assert cfg.batch_size == DEMO_DEFAULTS["batch_size"]
    assert cfg.resize == DEMO_DEFAULTS["resize"]
    assert cfg.lr == DEMO_DEFAULTS["lr"]


def test_demo_explicit_resize_and_lr_win() -> None:
    cfg = spec_of("--demo", "--resize=300x400", "--lr", "3e-4", "--val_split", "0")
    assert cfg.resize == (300, 400)
    assert cfg.lr == 3e-4
    assert cfg.val_split == 0.0
    assert cfg.epochs == DEMO_DEFAULTS["epochs"]


def test_demo_splits_a_third_for_validation_unless_val_json_is_given() -> None:
    assert spec_of("--demo").val_split == DEMO_VAL_SPLIT
    cfg = spec_of("--demo", "--val_json", "held_out.json")
    assert (cfg.val_json, cfg.val_split) == ("held_out.json", 0.0)


def test_demo_explicit_value_equal_to_the_normal_default_wins() -> None:
    # --batch_size 96 is the normal default, but typed explicitly it must beat the demo's 16.
    assert parse_args(["--demo", "--batch_size", "96"]).batch_size == 96


def test_demo_resize_is_checked_against_patch_size(capsys: pytest.CaptureFixture[str]) -> None:
    # Demo resize is 256x320; a 300 patch does not fit it.
    with pytest.raises(SystemExit) as exc:
        parse_args(["--demo", "--patch_size", "300"])
    assert exc.value.code == 2
    assert "argument --patch_size" in capsys.readouterr().err


def test_demo_keeps_non_demo_flags() -> None:
    cfg = parse_args(["--demo", "--checkpoint_dir", "runs/x", "--seed", "3"])
    assert cfg.checkpoint_dir == "runs/x"
    assert cfg.seed == 3
    assert cfg.dataset_root == DEMO_DEFAULTS["dataset_root"]


def test_abbreviated_flags_are_refused() -> None:
    # --demo must know which flags were typed; an abbreviation would slip past it.
    with pytest.raises(SystemExit) as exc:
        parse_args(["--demo", "--epoch", "3"])
    assert exc.value.code == 2


# -- naming ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lr", "text"),
    [
        (2e-5, "2e-5"),
        (1e-4, "1e-4"),
        (2.5e-5, "2.5e-5"),
        (0.001, "1e-3"),
        (3e-4, "3e-4"),
        (1.0, "1e0"),
        (0.5, "5e-1"),
        (1.25e-6, "1.25e-6"),
        (12.0, "1.2e1"),
    ],
)
def test_format_lr(lr: float, text: str) -> None:
    assert format_lr(lr) == text


@pytest.mark.parametrize(
    ("val_split", "text"),
    [("0.1", "val0.1"), ("0", "val0"), ("0.25", "val0.25"), ("0.2", "val0.2")],
)
def test_run_name_val(val_split: str, text: str) -> None:
    assert f"_{text}_" in spec_of("--val_split", val_split).run_dir.name


def test_run_name_full() -> None:
    spec = spec_of("--lr", "1e-4", "--batch_size", "32", "--epochs", "8", "--val_split", "0",
                   "--seed", "7")  # fmt: skip
    assert spec.run_dir.name == "lr1e-4_bs32_ep8_val0_seed7"


def test_run_name_from_flags() -> None:
    spec = spec_of("--lr", "2.5e-5", "--batch_size", "48", "--epochs", "10", "--seed", "1")
    assert spec.run_dir.name == "lr2.5e-5_bs48_ep10_val0.1_seed1"


def test_run_path_with_checkpoint_dir(tmp_path: Path) -> None:
    assert spec_of("--checkpoint_dir", str(tmp_path / "myrun")).run_dir == tmp_path / "myrun"


def test_run_path_without_checkpoint_dir() -> None:
    assert (
        spec_of("--lr", "3e-4").run_dir == Path("../checkpoints") / "lr3e-4_bs96_ep16_val0.1_seed42"
    )


# -- args.json --------------------------------------------------------------------


def test_args_json_records_what_the_run_used() -> None:
    spec = spec_of("--resize", "384x512", "--lr", "1e-4", "--checkpoint_dir", "x",
                   "--device", "cpu", "--eval_json", "c=c.json")  # fmt: skip
    d = spec.to_json()
    assert json.loads(json.dumps(d)) == d  # JSON as it is
    assert d["resize"] == "384x512" and d["eval_json"] == ["c=c.json"]
    # Every "auto" and every dependent default is replaced by what was decided.
    assert (d["device"], d["loader"], d["amp"], d["num_workers"]) == ("cpu", "pillow", "off", 0)
    assert (d["val_split"], d["shuffle_window"], d["world_size"]) == (0.1, 96, 1)
    assert d["checkpoint_dir"] == "x" and d["backbone"] == "resnet50"


def test_the_spec_is_frozen() -> None:
    spec = spec_of("--device", "cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0  # type: ignore[misc]


def test_help_shows_a_zero_default() -> None:
    """0 == False in Python: the help must still show an int default of 0."""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--workers", type=int, default=0, help="processes")
    parser.add_argument("--fast", action="store_true", help="a switch")
    text = parser.format_help()
    assert "processes (default: 0)" in text
    assert "a switch (default" not in text
