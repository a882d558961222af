"""scripts/prepare_koniq.py on small KonIQ-10k CSVs in the released format, run as a user would."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, assert_clean_error, run_cli

SCRIPT = "scripts/prepare_koniq.py"
SCORES_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
SETS_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"]
SCORES_CSV = "koniq10k_scores_and_distributions.csv"
SETS_CSV = "koniq10k_distributions_sets.csv"
OUTPUTS = ("koniq_train.json", "koniq_val.json", "koniq_test.json")


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_koniq", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_koniq = _load_script()


def _quoted(fields: list[str]) -> str:
    # The released files quote every header field: "image_name","c1",...
    return ",".join(f'"{field}"' for field in fields)


def make_koniq(
    root: Path,
    n: int,
    sets: list[str] | None = None,
    scores: bool = True,
    missing: tuple[int, ...] = (),
) -> list[str]:
    """A KonIQ folder with n (empty) images in 1024x768/.

    Scores CSV: MOS = 1 + i/n (1-5), MOS_zscore = 100 * i/n. Sets file (when
    ``sets`` is given): MOS = 50 + i/n (0-100), no MOS_zscore, as released.
    """
    (root / "1024x768").mkdir(parents=True, exist_ok=True)
    names = [f"{1000 + i}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        if i not in missing:
            (root / "1024x768" / name).touch()
    if scores:
        lines = [_quoted(SCORES_HEADER)]
        lines += [
            f'"{name}",0,1,2,3,4,10,{1 + i / n},0.5,{100 * i / n}' for i, name in enumerate(names)
        ]
        (root / SCORES_CSV).write_text("\n".join(lines) + "\n")
    if sets is not None:
        lines = [_quoted(SETS_HEADER)]
        lines += [
            f'"{name}",0,1,2,3,4,10,{50 + i / n},0.5,"{label}"'
            for i, (name, label) in enumerate(zip(names, sets, strict=True))
        ]
        (root / SETS_CSV).write_text("\n".join(lines) + "\n")
    return names


def prepare(tmp_path: Path, *extra: str, out: str = "metas"):
    return run_cli(
        SCRIPT,
        "--koniq_root", str(tmp_path / "koniq10k"),
        "--dataset_root", str(tmp_path),
        "--out_dir", str(tmp_path / out),
        *extra,
    )  # fmt: skip


def read_splits(tmp_path: Path, out: str = "metas") -> dict[str, list[dict]]:
    return {
        name.split("_")[1].split(".")[0]: json.loads((tmp_path / out / name).read_text())
        for name in OUTPUTS
    }


def image_names(entries: list[dict]) -> list[str]:
    return [entry["image"].rsplit("/", 1)[1] for entry in entries]


def assert_partition(splits: dict[str, list[dict]], names: list[str]) -> None:
    """train, val and test are disjoint and together hold every name once."""
    parts = [set(image_names(splits[s])) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(names)
    assert set().union(*parts) == set(names)


def assert_one_line_and_nothing_written(proc, tmp_path: Path, *needles: str) -> None:
    assert_clean_error(proc, *needles)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "metas").exists()


def test_official_sets_give_train_val_test(tmp_path: Path) -> None:
    sets = ["training"] * 6 + ["validation"] * 2 + ["test"] * 2
    names = make_koniq(tmp_path / "koniq10k", 10, sets=sets)
    proc = prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    splits = read_splits(tmp_path)
    assert [e["image"] for e in splits["train"]] == [f"koniq10k/1024x768/{n}" for n in names[:6]]
    assert image_names(splits["val"]) == names[6:8]
    assert image_names(splits["test"]) == names[8:]
    # The split comes from the sets file, the score (MOS_zscore) from the scores CSV.
    assert [e["score"] for e in splits["test"]] == pytest.approx([80.0, 90.0])
    assert "official sets" in proc.stdout and f"MOS_zscore (0-100) from {tmp_path}" in proc.stdout
    assert "6 train / 2 val / 2 test" in proc.stdout
    # One entry per line, as the trainer's metadata format shows it.
    lines = (tmp_path / "metas" / "koniq_val.json").read_text().splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 4


@pytest.mark.slow
def test_official_split_of_the_full_release(tmp_path: Path) -> None:
    sets = ["training"] * 7058 + ["validation"] * 1000 + ["test"] * 2015
    names = make_koniq(tmp_path / "koniq10k", len(sets), sets=sets)
    proc = prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    splits = read_splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7058, 1000, 2015]
    assert_partition(splits, names)

    # The paper's protocol on the same images, with the default fractions.
    proc = prepare(tmp_path, "--split", "random", out="random")
    assert proc.returncode == 0, proc.stderr
    assert "10,073 images -> 7,252 train / 806 val / 2,015 test" in proc.stdout
    splits = read_splits(tmp_path, "random")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7252, 806, 2015]
    assert_partition(splits, names)


def test_split_sizes_rounding() -> None:
    assert prepare_koniq.split_sizes(10073, 0.2, 0.1) == (7252, 806, 2015)
    assert prepare_koniq.split_sizes(100, 0.2, 0.1) == (72, 8, 20)
    # Python's round takes a tie to the even neighbour: round(0.5 * 5) is 2.
    assert prepare_koniq.split_sizes(10, 0.5, 0.5) == (3, 2, 5)


def test_random_split_without_sets_file(tmp_path: Path) -> None:
    names = make_koniq(tmp_path / "koniq10k", 100)
    proc = prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "random by image (seed 0" in proc.stdout and "72 train / 8 val / 20 test" in proc.stdout
    splits = read_splits(tmp_path)
    assert_partition(splits, names)
    first = {name: (tmp_path / "metas" / name).read_bytes() for name in OUTPUTS}

    # Same seed, same bytes; another seed, another split.
    assert prepare(tmp_path, "--seed", "0").returncode == 0
    assert {name: (tmp_path / "metas" / name).read_bytes() for name in OUTPUTS} == first
    assert prepare(tmp_path, "--seed", "1").returncode == 0
    assert image_names(read_splits(tmp_path)["test"]) != image_names(splits["test"])


def test_random_split_depends_only_on_names_and_seed() -> None:
    names = [f"{i}.jpg" for i in range(50)]
    split = prepare_koniq.random_split(names, 3, 0.2, 0.1)
    assert split == prepare_koniq.random_split(names[::-1], 3, 0.2, 0.1)
    assert sorted(split.values()).count("test") == 10
    assert sorted(split.values()).count("val") == 4
    # Pinned: numpy's PCG64 stream is the same on every machine, and the test
    # set is the one the earlier 80/20 version of this script chose.
    ordered = sorted(names)
    expected_test = {ordered[i] for i in np.random.default_rng(3).permutation(50)[:10]}
    assert {n for n, s in split.items() if s == "test"} == expected_test


def test_fractions_change_the_counts(tmp_path: Path) -> None:
    names = make_koniq(tmp_path / "koniq10k", 40)
    proc = prepare(tmp_path, "--test_fraction", "0.5", "--val_fraction", "0.25")
    assert proc.returncode == 0, proc.stderr
    splits = read_splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [15, 5, 20]
    assert_partition(splits, names)


@pytest.mark.parametrize("flag", ["--val_fraction", "--test_fraction"])
@pytest.mark.parametrize("value", ["0", "1", "abc"])
def test_fraction_must_be_strictly_between_0_and_1(tmp_path: Path, flag: str, value: str) -> None:
    make_koniq(tmp_path / "koniq10k", 10)
    proc = prepare(tmp_path, flag, value)
    assert_clean_error(proc, flag)
    assert not (tmp_path / "metas").exists()


def test_mos_column_and_relative_paths(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10, sets=["training"] * 4 + ["validation"] + ["test"] * 5)
    proc = prepare(tmp_path, "--score_column", "MOS")
    assert proc.returncode == 0, proc.stderr
    splits = read_splits(tmp_path)
    entries = splits["train"] + splits["val"] + splits["test"]
    assert [e["score"] for e in entries] == pytest.approx([1 + i / 10 for i in range(10)])
    for entry in entries:
        assert set(entry) == {"image", "score"}
        assert "\\" not in entry["image"] and not entry["image"].startswith("/")
        assert (tmp_path / entry["image"]).is_file()


def test_sets_file_alone_gives_its_0_to_100_mos(tmp_path: Path) -> None:
    sets = ["training"] * 6 + ["validation"] * 2 + ["test"] * 2
    make_koniq(tmp_path / "koniq10k", 10, sets=sets, scores=False)
    proc = prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"no {SCORES_CSV}: scores: MOS (0-100)" in proc.stdout
    assert [e["score"] for e in read_splits(tmp_path)["test"]] == pytest.approx([50.8, 50.9])

    # The random split works from the sets file's names and scores too.
    proc = prepare(tmp_path, "--split", "random", out="random")
    assert proc.returncode == 0, proc.stderr
    assert sum(len(v) for v in read_splits(tmp_path, "random").values()) == 10


def test_score_column_needs_the_scores_csv(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10, sets=["training"] * 8 + ["test"] * 2, scores=False)
    proc = prepare(tmp_path, "--score_column", "MOS")
    assert_one_line_and_nothing_written(proc, tmp_path, "--score_column MOS", SCORES_CSV)


def test_explicit_official_split_needs_the_sets_file(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10)
    proc = prepare(tmp_path, "--split", "official")
    assert_one_line_and_nothing_written(proc, tmp_path, "--split official", SETS_CSV)


def test_dataset_root_equal_to_image_dir(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10, sets=["training"] * 7 + ["validation"] + ["test"] * 2)
    image_dir = tmp_path / "koniq10k" / "1024x768"
    proc = run_cli(
        SCRIPT,
        "--koniq_root", str(tmp_path / "koniq10k"),
        "--dataset_root", str(image_dir),
        "--out_dir", str(tmp_path / "metas"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [e["image"] for e in read_splits(tmp_path)["test"]] == ["1008.jpg", "1009.jpg"]


def test_missing_images_reported_and_left_out(tmp_path: Path) -> None:
    sets = ["training"] * 6 + ["validation"] * 2 + ["test"] * 2
    names = make_koniq(tmp_path / "koniq10k", 10, sets=sets, missing=(1, 9))
    proc = prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 of 10" in proc.stderr and names[1] in proc.stderr and names[9] in proc.stderr
    splits = read_splits(tmp_path)
    listed = {n for s in splits.values() for n in image_names(s)}
    assert listed == set(names) - {names[1], names[9]}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 2, 1]


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        # scores CSV: bad header, a name twice, a non-finite score, no rows at all
        (lambda lines: ["name,quality", "a.jpg,3"], [SCORES_CSV, "MOS_zscore", "header"]),
        (lambda lines: [*lines, lines[1]], [SCORES_CSV, "line 12", "listed twice"]),
        (lambda lines: [lines[0], lines[1].rsplit(",", 1)[0] + ",nan", *lines[2:]], ["line 2", "MOS_zscore"]),
        (lambda lines: [lines[0], lines[1].rsplit(",", 1)[0] + ",high", *lines[2:]], ["line 2", "'high'"]),
        (lambda lines: [lines[0]], [SCORES_CSV, "no rows"]),
        (lambda lines: [lines[0], lines[1] + ",extra", *lines[2:]], ["line 2", "11 fields"]),
    ],
)  # fmt: skip
def test_bad_scores_csv_fails_in_one_line(tmp_path: Path, mutate, needles: list[str]) -> None:
    root = tmp_path / "koniq10k"
    make_koniq(root, 10, sets=["training"] * 8 + ["test"] * 2)
    path = root / SCORES_CSV
    path.write_text("\n".join(mutate(path.read_text().splitlines())) + "\n")
    assert_one_line_and_nothing_written(prepare(tmp_path), tmp_path, *needles)


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (lambda lines: [*lines[:4], lines[4].replace('"test"', '"holdout"')], ["line 5", "holdout"]),
        (lambda lines: lines[:-1], [SETS_CSV, "no set for 1", "1003.jpg"]),
        (lambda lines: [*lines, lines[1].replace("1000.jpg", "9999.jpg")], ["1 images missing", "9999.jpg"]),
        (lambda lines: [_quoted([*SETS_HEADER[:-1], "split"]), *lines[1:]], [SETS_CSV, "set"]),
        (lambda lines: [*lines, lines[2]], [SETS_CSV, "listed twice"]),
    ],
)  # fmt: skip
def test_bad_sets_file_fails_in_one_line(tmp_path: Path, mutate, needles: list[str]) -> None:
    root = tmp_path / "koniq10k"
    make_koniq(root, 4, sets=["training", "validation", "test", "test"])
    path = root / SETS_CSV
    path.write_text("\n".join(mutate(path.read_text().splitlines())) + "\n")
    assert_one_line_and_nothing_written(prepare(tmp_path), tmp_path, *needles)


def test_all_images_missing_fails(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 5, missing=tuple(range(5)))
    proc = prepare(tmp_path)
    assert_one_line_and_nothing_written(proc, tmp_path, "none of the 5 images")


def test_empty_split_after_missing_images_fails(tmp_path: Path) -> None:
    sets = ["training"] * 6 + ["validation"] * 2 + ["test"] * 2
    make_koniq(tmp_path / "koniq10k", 10, sets=sets, missing=(6, 7))
    proc = prepare(tmp_path)
    assert_clean_error(proc, "koniq_val.json")
    assert not (tmp_path / "metas").exists()


def test_no_score_file_at_all_fails(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 5, scores=False)
    proc = prepare(tmp_path)
    assert_one_line_and_nothing_written(proc, tmp_path, SCORES_CSV, SETS_CSV)


def test_missing_koniq_root_fails(tmp_path: Path) -> None:
    proc = run_cli(SCRIPT, "--koniq_root", str(tmp_path / "nope"))
    assert_clean_error(proc, "nope")


def test_image_dir_outside_dataset_root_fails(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10)
    (tmp_path / "elsewhere").mkdir()
    proc = run_cli(
        SCRIPT,
        "--koniq_root", str(tmp_path / "koniq10k"),
        "--dataset_root", str(tmp_path / "elsewhere"),
        "--out_dir", str(tmp_path / "metas"),
    )  # fmt: skip
    assert_one_line_and_nothing_written(proc, tmp_path, "elsewhere", "1024x768")


def test_refuses_to_write_over_an_input(tmp_path: Path) -> None:
    root = tmp_path / "koniq10k"
    make_koniq(root, 10, sets=["training"] * 7 + ["validation"] + ["test"] * 2)
    out = tmp_path / "metas"
    out.mkdir()
    (out / "koniq_val.json").symlink_to(root / SETS_CSV)
    before = (root / SETS_CSV).read_bytes()
    proc = prepare(tmp_path)
    assert_clean_error(proc, "refusing to write", "koniq_val.json", SETS_CSV)
    assert (root / SETS_CSV).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["koniq_val.json"]


def test_rerun_replaces_all_three_files(tmp_path: Path) -> None:
    make_koniq(
        tmp_path / "koniq10k", 20, sets=["training"] * 12 + ["validation"] * 3 + ["test"] * 5
    )
    out = tmp_path / "metas"
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_text("old")
    proc = prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stdout.splitlines() if "wrote" in line]
    assert [s.split(": ")[2].split(",")[0] for s in summary] == [
        "12 images",
        "3 images",
        "5 images",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temp files left
    assert [len(v) for v in read_splits(tmp_path).values()] == [12, 3, 5]


def test_failed_write_keeps_every_old_file(tmp_path: Path) -> None:
    """A directory squatting on koniq_test.json makes its rename fail after
    train and val were renamed: they must be rolled back, byte for byte."""
    make_koniq(
        tmp_path / "koniq10k", 20, sets=["training"] * 12 + ["validation"] * 3 + ["test"] * 5
    )
    out = tmp_path / "metas"
    out.mkdir()
    (out / "koniq_train.json").write_text('[\n{"image": "old/train.jpg", "score": 1.0}\n]\n')
    (out / "koniq_val.json").write_text('[\n{"image": "old/val.jpg", "score": 2.0}\n]\n')
    (out / "koniq_test.json").mkdir()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    proc = prepare(tmp_path)
    assert_clean_error(proc, "koniq_test.json", "nothing was replaced")
    assert len(proc.stderr.strip().splitlines()) == 1
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    assert after == before
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)  # no temp or backup files left
