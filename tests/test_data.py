"""Tests for hyperiqa.data: metadata JSON validation and the seeded split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hyperiqa.data import Sample, load_samples, split_samples
from hyperiqa.errors import UserError


def _touch_images(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _touch_images(root, ["a.jpg", "b.jpg", "sub/c.png"])
    return root


# -- happy path --------------------------------------------------------------------


def test_load_samples(tmp_path: Path, root: Path) -> None:
    entries = [
        {"image": "a.jpg", "score": 55.5, "extra": "ignored"},
        {"image": "b.jpg", "score": 3},
        {"image": "sub/c.png", "score": -1.25},
    ]
    meta = _write_json(tmp_path / "meta.json", entries)
    samples = load_samples(meta, root)
    assert samples == [
        Sample("a.jpg", root / "a.jpg", 55.5),
        Sample("b.jpg", root / "b.jpg", 3.0),
        Sample("sub/c.png", root / "sub" / "c.png", -1.25),
    ]
    assert all(type(s.label) is float for s in samples)


def test_load_samples_accepts_str_paths(tmp_path: Path, root: Path) -> None:
    meta = _write_json(tmp_path / "meta.json", [{"image": "a.jpg", "score": 1.0}])
    samples = load_samples(str(meta), str(root))
    assert samples[0].path == root / "a.jpg"


# -- bad input: UserError naming the culprit ------------------------------------------


def _error(tmp_path: Path, root: Path, text: str) -> str:
    meta = tmp_path / "meta.json"
    meta.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as exc:
        load_samples(meta, root)
    message = str(exc.value)
    assert str(meta) in message
    return message


def test_missing_json(tmp_path: Path, root: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(UserError, match="not found") as exc:
        load_samples(missing, root)
    assert str(missing) in str(exc.value)


def test_json_is_a_directory(tmp_path: Path, root: Path) -> None:
    with pytest.raises(UserError) as exc:
        load_samples(tmp_path, root)
    assert str(tmp_path) in str(exc.value)


def test_malformed_json_has_line_info(tmp_path: Path, root: Path) -> None:
    text = '[\n  {"image": "a.jpg", "score": 1.0},\n  {"image": "b.jpg" "score": 2.0}\n]\n'
    message = _error(tmp_path, root, text)
    assert "malformed" in message
    assert "line 3" in message
    assert "column" in message


def test_not_utf8(tmp_path: Path, root: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_bytes(b'[{"image": "\xff\xfe.jpg", "score": 1}]')
    with pytest.raises(UserError) as exc:
        load_samples(meta, root)
    assert str(meta) in str(exc.value)


def test_not_a_list(tmp_path: Path, root: Path) -> None:
    message = _error(tmp_path, root, json.dumps({"image": "a.jpg", "score": 1}))
    assert "list" in message


def test_empty_list(tmp_path: Path, root: Path) -> None:
    assert "no images" in _error(tmp_path, root, "[]")


def test_entry_not_an_object(tmp_path: Path, root: Path) -> None:
    message = _error(tmp_path, root, json.dumps([{"image": "a.jpg", "score": 1}, ["b.jpg", 2]]))
    assert "entry 1" in message


@pytest.mark.parametrize(
    "entry",
    [{"score": 1.0}, {"image": "", "score": 1.0}, {"image": 5, "score": 1.0}],
)
def test_missing_image(tmp_path: Path, root: Path, entry: dict) -> None:
    message = _error(tmp_path, root, json.dumps([{"image": "a.jpg", "score": 1}, entry]))
    assert "entry 1" in message
    assert "'image'" in message


def test_missing_score(tmp_path: Path, root: Path) -> None:
    message = _error(
        tmp_path, root, json.dumps([{"image": "a.jpg", "score": 1}, {"image": "b.jpg"}])
    )
    assert "entry 1 (b.jpg)" in message
    assert "missing 'score'" in message


def test_score_null(tmp_path: Path, root: Path) -> None:
    message = _error(tmp_path, root, '[{"image": "b.jpg", "score": null}]')
    assert "entry 0 (b.jpg)" in message
    assert "not a number" in message


def test_score_string(tmp_path: Path, root: Path) -> None:
    message = _error(tmp_path, root, json.dumps([{"image": "b.jpg", "score": "55.5"}]))
    assert "entry 0 (b.jpg)" in message
    assert "'55.5'" in message
    assert "not a number" in message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_score_not_finite(tmp_path: Path, root: Path, literal: str) -> None:
    text = f'[{{"image": "a.jpg", "score": 1}}, {{"image": "b.jpg", "score": {literal}}}]'
    message = _error(tmp_path, root, text)
    assert "entry 1 (b.jpg)" in message
    assert "not finite" in message


def test_score_bool(tmp_path: Path, root: Path) -> None:
    message = _error(tmp_path, root, '[{"image": "a.jpg", "score": true}]')
    assert "entry 0 (a.jpg)" in message
    assert "True" in message
    assert "not a number" in message


def test_duplicate_image(tmp_path: Path, root: Path) -> None:
    entries = [
        {"image": "a.jpg", "score": 1},
        {"image": "b.jpg", "score": 2},
        {"image": "a.jpg", "score": 3},
    ]
    message = _error(tmp_path, root, json.dumps(entries))
    assert "entry 2 (a.jpg)" in message
    assert "duplicate of entry 0" in message


def test_missing_image_files_listed_at_once(tmp_path: Path, root: Path) -> None:
    entries = [
        {"image": "a.jpg", "score": 1},
        {"image": "gone1.jpg", "score": 2},
        {"image": "b.jpg", "score": 3},
        {"image": "gone2.jpg", "score": 4},
        {"image": "sub", "score": 5},  # a directory is not an image file
    ]
    message = _error(tmp_path, root, json.dumps(entries))
    assert "3 of 5" in message
    for name in ("gone1.jpg", "gone2.jpg", "sub"):
        assert str(root / name) in message
    assert str(root / "a.jpg") not in message


def test_many_missing_files_are_summarised(tmp_path: Path, root: Path) -> None:
    entries = [{"image": f"gone{i}.jpg", "score": i} for i in range(8)]
    message = _error(tmp_path, root, json.dumps(entries))
    assert "8 of 8" in message
    assert "and 3 more" in message
    assert str(root / "gone0.jpg") in message
    assert str(root / "gone7.jpg") not in message


# -- split ----------------------------------------------------------------------------


def _samples(n: int) -> list[Sample]:
    return [Sample(f"{i}.jpg", Path(f"/d/{i}.jpg"), float(i)) for i in range(n)]


def _names(samples: list[Sample]) -> list[str]:
    return [s.image for s in samples]


def test_split_deterministic() -> None:
    samples = _samples(100)
    a = split_samples(samples, 0.1, seed=42)
    b = split_samples(samples, 0.1, seed=42)
    assert a == b


def test_split_differs_by_seed() -> None:
    samples = _samples(100)
    assert _names(split_samples(samples, 0.2, 1)[1]) != _names(split_samples(samples, 0.2, 2)[1])


@pytest.mark.parametrize(
    ("n", "val_split"), [(100, 0.1), (10, 0.25), (7, 0.5), (3, 0.2), (4, 0.15)]
)
def test_split_disjoint_covering_and_sized(n: int, val_split: float) -> None:
    samples = _samples(n)
    train, val = split_samples(samples, val_split, seed=0)
    assert len(val) == round(val_split * n)
    assert set(_names(train)).isdisjoint(_names(val))
    assert sorted(_names(train) + _names(val)) == sorted(_names(samples))
    assert len(train) + len(val) == n
    # Each side keeps the samples' original order.
    order = {s.image: i for i, s in enumerate(samples)}
    assert [order[s.image] for s in train] == sorted(order[s.image] for s in train)
    assert [order[s.image] for s in val] == sorted(order[s.image] for s in val)


def test_a_share_that_rounds_to_no_image_is_refused() -> None:
    """--val_split 0.3 of one image (or 0.01 of 12) asks for validation and gets none."""
    with pytest.raises(UserError, match=r"val_split 0\.3 of 1 images holds out no image"):
        split_samples(_samples(1), 0.3, seed=0)


def test_split_zero_means_no_validation() -> None:
    samples = _samples(10)
    train, val = split_samples(samples, 0.0, seed=3)
    assert val == []
    assert train == samples


def test_split_leaving_no_train_is_a_user_error() -> None:
    # round(0.75 * 2) == 2: nothing would be left to train on.
    with pytest.raises(UserError, match="no training images"):
        split_samples(_samples(2), 0.75, seed=0)


@pytest.mark.parametrize("val_split", [1.0, -0.1])
def test_split_out_of_range_raises(val_split: float) -> None:
    with pytest.raises(ValueError):
        split_samples(_samples(10), val_split, seed=0)


def test_split_depends_only_on_n_seed_and_val_split() -> None:
    # Different paths, scores and names, same N: the same positions go to val.
    a = _samples(50)
    b = [Sample(f"x/{i}.png", Path(f"/other/{i}"), 100.0 - i) for i in range(50)]
    _, val_a = split_samples(a, 0.2, seed=7)
    _, val_b = split_samples(b, 0.2, seed=7)
    pos_a = [a.index(s) for s in val_a]
    pos_b = [b.index(s) for s in val_b]
    assert pos_a == pos_b


def test_split_is_pinned() -> None:
    # numpy's PCG64 permutation for seed 42 starts 15, 9, 14, 7 on every platform; the
    # split of a given dataset and seed must never change silently.
    _, val = split_samples(_samples(20), 0.2, seed=42)
    assert _names(val) == ["7.jpg", "9.jpg", "14.jpg", "15.jpg"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image": "a.jpg", "score": 1.7e308}, "score 1.7e+308 is out of range (at most 1e+09)"),
        ({"image": "a.jpg", "score": -2e9}, "is out of range"),
        ({"image": 5, "score": 1}, "'image' must be a file name, got int"),
        ({"image": ["a.jpg"], "score": 1}, "'image' must be a file name, got list"),
    ],
)
def test_odd_entries_are_named(tmp_path: Path, root: Path, entry: dict, message: str) -> None:
    meta = _write_json(tmp_path / "meta.json", [entry])
    with pytest.raises(UserError, match=re.escape(message)):
        load_samples(meta, root)


@pytest.mark.parametrize("require_files", [True, False])
def test_a_dataset_root_that_is_not_there_is_the_culprit(
    tmp_path: Path, require_files: bool
) -> None:
    meta = _write_json(tmp_path / "meta.json", [{"image": "a.jpg", "score": 1}])
    with pytest.raises(UserError, match=r"dataset root .*nowhere \(not found\) holds none"):
        load_samples(meta, tmp_path / "nowhere", require_files=require_files)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"dataset root .*file \(not a folder\)"):
        load_samples(meta, tmp_path / "file", require_files=require_files)
