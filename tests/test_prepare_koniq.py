"""scripts/prepare_koniq.py on small, official-format KonIQ CSVs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prepare_koniq.py"
HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_koniq", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_koniq = _load_script()


def _quoted(fields: list[str]) -> str:
    # The official files quote every header field: "image_name","c1",...
    return ",".join(f'"{field}"' for field in fields)


def make_koniq(
    root: Path,
    n: int,
    sets: list[str] | None = None,
    missing: tuple[int, ...] = (),
    image_dir: str = "1024x768",
) -> list[str]:
    """A fake KonIQ folder with n images: MOS = 1 + i/n, MOS_zscore = 100 * i/n."""
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    names = [f"{1000 + i}.jpg" for i in range(n)]
    rows = []
    for i, name in enumerate(names):
        rows.append([name, "0", "1", "2", "3", "4", "10", f"{1 + i / n}", "0.5", f"{100 * i / n}"])
        if i not in missing:
            (root / image_dir / name).write_bytes(b"\xff\xd8fake")
    lines = [_quoted(HEADER), *(",".join(row) for row in rows)]
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(lines) + "\n")
    if sets is not None:
        set_lines = [_quoted([*HEADER, "set"])]
        set_lines += [",".join([*row, f'"{s}"']) for row, s in zip(rows, sets, strict=True)]
        (root / "koniq10k_distributions_sets.csv").write_text("\n".join(set_lines) + "\n")
    return names


def run_main(tmp_path: Path, *extra: str) -> tuple[list[dict], list[dict]]:
    out = tmp_path / "metas"
    argv = [
        "--koniq_root", str(tmp_path / "koniq10k"),
        "--dataset_root", str(tmp_path),
        "--out_dir", str(out),
        *extra,
    ]  # fmt: skip
    assert prepare_koniq.main(argv) == 0
    train = json.loads((out / "koniq_train.json").read_text())
    test = json.loads((out / "koniq_test.json").read_text())
    return train, test


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO
    )


def test_official_sets_split(tmp_path: Path) -> None:
    sets = ["training"] * 6 + ["validation"] * 2 + ["test"] * 2
    names = make_koniq(tmp_path / "koniq10k", 10, sets=sets)
    train, test = run_main(tmp_path)
    assert [e["image"] for e in train] == [f"koniq10k/1024x768/{n}" for n in names[:8]]
    assert [e["image"] for e in test] == [f"koniq10k/1024x768/{n}" for n in names[8:]]
    # MOS_zscore is the default score column.
    assert [e["score"] for e in test] == pytest.approx([80.0, 90.0])


def test_mos_column_and_relative_paths(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10, sets=["training"] * 5 + ["test"] * 5)
    train, test = run_main(tmp_path, "--score_column", "MOS")
    assert [e["score"] for e in train + test] == pytest.approx([1 + i / 10 for i in range(10)])
    for entry in train + test:
        assert set(entry) == {"image", "score"}
        assert "\\" not in entry["image"] and not entry["image"].startswith("/")
        assert (tmp_path / entry["image"]).is_file()


def test_dataset_root_equal_to_image_dir(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10, sets=["training"] * 8 + ["test"] * 2)
    out = tmp_path / "metas"
    image_dir = tmp_path / "koniq10k" / "1024x768"
    argv = ["--koniq_root", str(tmp_path / "koniq10k"), "--dataset_root", str(image_dir)]
    prepare_koniq.main([*argv, "--out_dir", str(out)])
    test = json.loads((out / "koniq_test.json").read_text())
    assert [e["image"] for e in test] == ["1008.jpg", "1009.jpg"]


def test_seeded_split_without_sets_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = make_koniq(tmp_path / "koniq10k", 100)
    train, test = run_main(tmp_path)
    assert "80/20" in capsys.readouterr().out
    assert (len(train), len(test)) == (80, 20)
    images = [e["image"].rsplit("/", 1)[1] for e in train + test]
    assert sorted(images) == sorted(names)  # a partition: nothing lost, nothing twice

    # Same seed, same split; another seed, another split.
    assert run_main(tmp_path) == (train, test)
    _, test_seed1 = run_main(tmp_path, "--seed", "1")
    assert {e["image"] for e in test_seed1} != {e["image"] for e in test}


def test_seeded_split_ignores_csv_row_order() -> None:
    names = [f"{i}.jpg" for i in range(50)]
    assert prepare_koniq.seeded_split(names, 3) == prepare_koniq.seeded_split(names[::-1], 3)
    assert len(prepare_koniq.seeded_split(names, 3)) == 10


def test_missing_images_reported_and_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sets = ["training"] * 8 + ["test"] * 2
    names = make_koniq(tmp_path / "koniq10k", 10, sets=sets, missing=(1, 9))
    train, test = run_main(tmp_path)
    err = capsys.readouterr().err
    assert "2 of 10" in err and names[1] in err and names[9] in err
    listed = {e["image"].rsplit("/", 1)[1] for e in train + test}
    assert listed == set(names) - {names[1], names[9]}
    assert len(test) == 1


def test_all_images_missing_fails(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 5, missing=tuple(range(5)))
    proc = run_cli("--koniq_root", str(tmp_path / "koniq10k"), "--dataset_root", str(tmp_path))
    assert proc.returncode != 0
    assert "none of the 5 images" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_header_fails_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "koniq10k"
    make_koniq(root, 5)
    (root / "koniq10k_scores_and_distributions.csv").write_text("name,quality\na.jpg,3\n")
    out = tmp_path / "metas"
    proc = run_cli(
        "--koniq_root", str(root), "--dataset_root", str(tmp_path), "--out_dir", str(out)
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "koniq10k_scores_and_distributions.csv" in proc.stderr and "MOS_zscore" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written on failure


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda rows: [*rows, rows[1]], "listed twice"),
        (lambda rows: [rows[0], rows[1].replace("0.5,0.0", "0.5,nan"), *rows[2:]], "MOS_zscore of"),
        (lambda rows: [rows[0]], "no rows"),
    ],
)
def test_bad_rows_fail_cleanly(tmp_path: Path, mutate, expected: str) -> None:
    root = tmp_path / "koniq10k"
    make_koniq(root, 5)
    csv_path = root / "koniq10k_scores_and_distributions.csv"
    csv_path.write_text("\n".join(mutate(csv_path.read_text().splitlines())) + "\n")
    with pytest.raises(SystemExit) as info:
        prepare_koniq.main(["--koniq_root", str(root), "--dataset_root", str(tmp_path)])
    assert expected in str(info.value)


def test_sets_file_must_match_scores(tmp_path: Path) -> None:
    root = tmp_path / "koniq10k"
    make_koniq(root, 4, sets=["training", "training", "test", "holdout"])
    with pytest.raises(SystemExit, match="holdout"):
        prepare_koniq.main(["--koniq_root", str(root), "--dataset_root", str(tmp_path)])


def test_image_dir_outside_dataset_root_fails(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 10)
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = run_cli("--koniq_root", str(tmp_path / "koniq10k"), "--dataset_root", str(other))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "elsewhere" in proc.stderr and "1024x768" in proc.stderr


def test_missing_koniq_root_fails(tmp_path: Path) -> None:
    proc = run_cli("--koniq_root", str(tmp_path / "nope"))
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_writes_atomically_and_summarises(tmp_path: Path) -> None:
    make_koniq(tmp_path / "koniq10k", 20, sets=["training"] * 15 + ["test"] * 5)
    out = tmp_path / "metas"
    out.mkdir()
    (out / "koniq_test.json").write_text("old")  # replaced, not appended to
    args = ["--koniq_root", str(tmp_path / "koniq10k"), "--dataset_root", str(tmp_path)]
    proc = run_cli(*args, "--out_dir", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stdout.splitlines() if "wrote" in line]
    assert len(summary) == 2 and "15 images" in summary[0] and "5 images" in summary[1]
    assert sorted(p.name for p in out.iterdir()) == ["koniq_test.json", "koniq_train.json"]
    assert len(json.loads((out / "koniq_test.json").read_text())) == 5
