"""Scoring a collection, piece by piece: the inputs (folders, lists), the output file
read back for --resume (torn and garbled files), the chunk scorer's handling of a
file that breaks the loader, and Scorer.stream."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hyperiqa
from hyperiqa.collection import _rereadable
from hyperiqa.errors import UserError
from hyperiqa.inputs import Entry, check_lists, iter_entries
from hyperiqa.runtime import resolve_runtime
from hyperiqa.score_output import (
    OutputFile,
    ScoreRow,
    encode_csv,
    encode_jsonl,
    settings_record,
)
from hyperiqa.scorer import load_checkpoint
from hyperiqa.streaming import ChunkScorer, ImageChecks, rows_window, stream_rows
from pipelines.factory import dali_available
from tests.conftest import make_dataset, read_json

RESIZE = (240, 256)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("imgs")
    make_dataset(root, 5, size=RESIZE)
    return [root / e["image"] for e in read_json(root / "demo.json")]


def entries_of(*args, lists=(), notes=None) -> list[Entry]:
    return list(iter_entries(args, lists, (notes if notes is not None else []).append))


# -- inputs --------------------------------------------------------------------------------


def test_a_folder_is_walked_sorted_recursively_keeping_image_extensions(tmp_path: Path) -> None:
    for name in ["b/z.JPG", "b/a.png", "a.jpeg", "c/d/e.webp", "notes.txt", "b/x.json", "B.tif"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (tmp_path / "c" / "loop").symlink_to(tmp_path)  # back to the top: a loop
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    notes: list[str] = []
    found = [e.path for e in entries_of(str(tmp_path), notes=notes)]
    rel = [os.path.relpath(p, tmp_path) for p in found]
    assert rel == ["B.tif", "a.jpeg", "b/a.png", "b/z.JPG", "c/d/e.webp", "dangling.jpg"]
    assert len(notes) == 1 and "symlink loop" in notes[0] and "loop" in notes[0]


def test_a_folder_without_images_is_said(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    notes: list[str] = []
    assert entries_of(str(tmp_path / "empty"), str(tmp_path / "docs"), notes=notes) == []
    assert [n.split()[-4] for n in notes] == [str(tmp_path / "empty"), str(tmp_path / "docs")]
    assert all(n.startswith("no image files in folder") for n in notes)


def test_an_unlistable_folder_is_an_entry_with_its_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root lists every folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "ok.jpg").write_bytes(b"")
    locked.chmod(0)
    try:
        found = entries_of(str(tmp_path))
    finally:
        locked.chmod(0o755)
    assert found[0].path == str(locked) and "cannot list folder" in found[0].error
    assert found[1] == Entry(str(tmp_path / "ok.jpg"))


def test_a_list_is_read_as_written_blank_lines_skipped(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "in.png").write_bytes(b"")
    listed = tmp_path / "list.txt"
    odd = b"caf\xe9 not utf8.jpg"  # Latin-1 bytes: a name no UTF-8 decoder takes
    listed.write_bytes(
        b"\xef\xbb\xbfa.jpg\r\n\n   \n b with spaces .jpg\n"
        + odd
        + b"\na.jpg\n"
        + str(tmp_path / "dir").encode()
        + b"\nlast-without-newline.jpg"
    )
    paths = [e.path for e in entries_of(lists=[str(listed)])]
    assert paths == [
        "a.jpg",
        " b with spaces .jpg",
        os.fsdecode(odd),
        "a.jpg",  # listed twice: scored twice (resume counts occurrences)
        str(tmp_path / "dir" / "in.png"),  # a folder line is walked
        "last-without-newline.jpg",
    ]
    assert os.fsencode(paths[2]) == odd  # round-trips to the bytes on disk


def test_bad_lists_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot read --list .*missing\.txt"):
        check_lists([str(tmp_path / "missing.txt")])
    with pytest.raises(UserError, match="is a folder"):
        check_lists([str(tmp_path)])
    with pytest.raises(UserError, match="only once"):
        check_lists(["-", "-"])


def test_a_pipe_given_as_a_list_is_read_once(tmp_path: Path) -> None:
    """``--list <(find ...)`` or a named pipe: the check must not open it (opening
    blocks, closing ends its writer) and the progress bar's count must not read it
    a second time (it would take lines from the run)."""
    fifo = tmp_path / "paths.fifo"
    os.mkfifo(fifo)
    check_lists([str(fifo)])  # returns at once: no writer is needed
    listed = tmp_path / "paths.txt"
    listed.write_text("a.jpg\n")
    assert _rereadable(str(listed))
    assert not _rereadable(str(fifo)) and not _rereadable("-")
    assert not _rereadable(str(tmp_path / "gone.txt"))


# -- the output read back -------------------------------------------------------------------

ROWS = [
    ScoreRow("a.jpg", 51.25, None),
    ScoreRow('bad, "quoted"\nname.jpg', None, "cannot decode (x)"),
    ScoreRow(os.fsdecode(b"\xff.jpg"), 1e-9, None),
    ScoreRow("a.jpg", 49.0, None),
    ScoreRow("é.png", 3.0, None),
    ScoreRow("carriage\rreturn.jpg", 2.5, None),  # quoted, like a name with a newline
]


SETTINGS = {"checkpoint_sha256": "ab12", "resize": "240x256", "patch_num": 1, "loader": "pillow"}


def written(path: Path, rows=ROWS) -> bytes:
    out = OutputFile(path)
    out.prepare()
    out.begin(lambda: SETTINGS)
    out.write(rows)
    out.close()
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_output_reads_back_every_row(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    data = written(path)
    # CSV: a header, and a name with a newline in quotes; JSONL escapes it.
    assert data.count(b"\n") == len(ROWS) + (2 if suffix == ".csv" else 0)
    again = OutputFile(path, resume=True)
    done = again.prepare()
    again.close()
    assert done.names == Counter(r.image for r in ROWS)
    assert done.failed == 1
    if suffix == ".jsonl":
        data.decode("ascii")  # escapes only: valid JSON whatever the names


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_cut_at_any_byte_resumes_to_whole_rows(tmp_path: Path, suffix: str) -> None:
    """A kill can cut the last write anywhere: --resume keeps the whole rows before
    the cut (and only those), so writing the rest gives the uninterrupted file."""
    full = written(tmp_path / f"full{suffix}")
    ends = []  # where each row ends (the header too)
    offset = 0
    pieces = [] if suffix == ".jsonl" else [b"image,score,error\n"]
    pieces += [(encode_csv if suffix == ".csv" else encode_jsonl)([r]) for r in ROWS]
    for piece in pieces:
        offset += len(piece)
        ends.append(offset)
    path = tmp_path / f"cut{suffix}"
    for cut in range(len(full)):
        path.write_bytes(full[:cut])
        out = OutputFile(path, resume=True)
        done = out.prepare().names
        out.begin(lambda: SETTINGS)
        kept = path.read_bytes()
        whole = max([e for e in ends if e <= cut], default=0)
        assert kept == full[: max(whole, ends[0] if suffix == ".csv" else 0)], cut
        rows_kept = len([e for e in ends if e <= cut]) - (suffix == ".csv")
        assert sum(done.values()) == max(rows_kept, 0)
        out.write(ROWS[max(rows_kept, 0) :])
        out.close()
        assert path.read_bytes() == full, cut


def test_resume_drops_the_rows_of_a_window_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    full = written(path)
    out = OutputFile(path, resume=True)
    done = out.prepare(window=4).names  # 6 rows: windows of 4, 2; the last is scored again
    said = out.begin(lambda: SETTINGS)
    out.close()
    assert sum(done.values()) == 4 and done["é.png"] == 0
    assert "2 rows after the last whole window" in said
    assert full.startswith(path.read_bytes()) and path.read_bytes().endswith(b"49.0,\n")


@pytest.mark.parametrize(
    ("record", "refusal"),
    [
        ({**SETTINGS, "patch_num": 25}, "was scored with patch_num 25, this run with 1"),
        ({**SETTINGS, "checkpoint_sha256": "cd34"}, "was scored with checkpoint_sha256 cd34"),
        ({k: v for k, v in SETTINGS.items() if k != "loader"}, "scored with loader None"),
        (None, "does not say what its rows were scored with"),  # no record
        (b"{not json", "cannot read .*settings.json"),
        ([1, 2], "does not say what its rows were scored with"),
    ],
)
def test_resume_with_other_settings_is_refused_and_changes_nothing(
    tmp_path: Path, record: object, refusal: str
) -> None:
    """One file never mixes scores of two checkpoints or crop settings."""
    path = tmp_path / "out.csv"
    written(path)
    full = path.read_bytes()
    path.write_bytes(full[:-3])  # and a torn last row, which a resume would cut off
    kept = settings_record(path)
    if record is None:
        kept.unlink()
    else:
        kept.write_bytes(record if isinstance(record, bytes) else json.dumps(record).encode())
    before = kept.read_bytes() if kept.exists() else None
    out = OutputFile(path, resume=True)
    out.prepare()
    with pytest.raises(UserError, match=refusal):
        out.begin(lambda: SETTINGS)
    out.close()
    assert path.read_bytes() == full[:-3]
    assert (kept.read_bytes() if kept.exists() else None) == before


def test_the_settings_are_recorded_before_the_first_row(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    out = OutputFile(path)
    out.prepare()
    out.begin(lambda: SETTINGS)
    assert json.loads(settings_record(path).read_text()) == SETTINGS
    assert path.read_bytes() == b""
    out.close()
    # A resume of an output with no rows yet has nothing to mix: it records its own.
    again = OutputFile(path, resume=True)
    again.prepare()
    again.begin(lambda: {**SETTINGS, "patch_num": 2})
    again.close()
    assert json.loads(settings_record(path).read_text())["patch_num"] == 2


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b"image,score,error\na.jpg,1.0,\ngarbage\nb.jpg,2.0,\n", 3),
        (b"name,value\nx,1\n", 1),  # another CSV
        (b"image,score,error\na.jpg,,\n", 2),  # neither score nor error
        (b"image,score,error\na.jpg,nan,\n", 2),
        (b"image,score,error\na.jpg,1.0,oops\n", 2),  # both
        (b"image,score,error\na.jpg,1.0,\nnot,a,row,at all\n", 3),  # a complete bad last line
    ],
)
def test_a_garbled_csv_is_refused_and_left_alone(tmp_path: Path, content: bytes, line: int) -> None:
    path = tmp_path / "out.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=rf"line {line} is not a row predict.py writes"):
        OutputFile(path, resume=True).prepare()
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "content",
    [b'{"image": "a.jpg", "score": 1.0, "error": null}\n[1, 2]\n', b"\x00\x00\x00\n", b"{}\n"],
)
def test_a_garbled_jsonl_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"is not a row predict\.py writes"):
        OutputFile(path, resume=True).prepare()
    assert path.read_bytes() == content


def test_the_output_is_refused_before_any_work(tmp_path: Path) -> None:
    existing = tmp_path / "out.csv"
    existing.write_bytes(b"keep me")
    with pytest.raises(UserError, match="exists; add --resume"):
        OutputFile(existing).prepare()
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        OutputFile(tmp_path / "dir.csv").prepare()
    with pytest.raises(UserError, match=r"\.csv or \.jsonl"):
        OutputFile(tmp_path / "out.txt").prepare()
    listed = tmp_path / "list.csv"
    listed.write_text("a.jpg\n")
    with pytest.raises(UserError, match="would overwrite the input"):
        OutputFile(listed, overwrite=True).prepare([listed])
    assert existing.read_bytes() == b"keep me" and listed.read_text() == "a.jpg\n"
    # Opened for --overwrite: emptied only when the run begins writing.
    out = OutputFile(existing, overwrite=True)
    out.prepare()
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(UserError, match="being written by another run"):
        OutputFile(existing, overwrite=True).prepare()  # the first one holds the lock
    out.begin(lambda: SETTINGS)
    out.close()
    assert existing.read_bytes() == b"image,score,error\n"


def test_a_read_only_place_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            OutputFile(folder / "out.csv").prepare()
    finally:
        folder.chmod(0o755)


# -- scoring a stream ---------------------------------------------------------------------


def chunk_scorer(
    checkpoint: Path, loader: str, checks: bool = True, batch: int = 4, device: str = "cpu"
) -> ChunkScorer:
    rt = resolve_runtime(device=device, loader=loader, num_workers=0, batch_size=batch)
    model = load_checkpoint(checkpoint, rt)
    return ChunkScorer(
        model, rt, resize=RESIZE, patch_num=2, checks=ImageChecks(0) if checks else None
    )


def scored(scorer: ChunkScorer, paths: list[str], chunk: int = 4) -> list[ScoreRow]:
    try:
        return [r for rows in stream_rows(scorer, [Entry(p) for p in paths], chunk) for r in rows]
    finally:
        scorer.close()


LOADERS = ["pillow", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="DALI not installed"))]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("loader", LOADERS)
def test_a_file_that_breaks_the_loader_is_a_row_and_the_run_goes_on(
    checkpoint: Path, images: list[Path], tmp_path: Path, loader: str
) -> None:
    """Without the image check (as when a file changes after it), a corrupt JPEG
    reaches the loader: that window is scored one image at a time, the culprit gets
    the loader's message, everything else its usual score."""
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(images[0].read_bytes()[:300])
    good = [str(p) for p in images[:4]]
    # Rows windows of 2 images, decode windows of EVAL_WINDOW (32): the culprit in the
    # chunk's first window, and in the second decode window (met many rows windows in).
    for at in (2, 40):
        paths = [*(good * 10)[:at], str(corrupt), *good]
        rows = scored(chunk_scorer(checkpoint, loader, checks=False), paths, chunk=64)
        assert [r.image for r in rows] == paths
        assert rows[at].score is None and str(corrupt) in rows[at].error
        clean = scored(chunk_scorer(checkpoint, loader), [p for p in paths if p != str(corrupt)])
        ok = [r for r in rows if r.error is None]
        assert len(ok) == len(paths) - 1
        assert np.allclose([r.score for r in ok], [r.score for r in clean], atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_a_file_that_kills_the_gpu_pipeline_is_a_row_and_the_run_goes_on(
    checkpoint: Path, images: list[Path], tmp_path: Path
) -> None:
    """The mixed (GPU) decoder meets a file that is no JPEG (the check skipped): the
    pipeline dies, the window is redone one image at a time, a fresh pipeline goes on."""
    bad = tmp_path / "noise.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + np.random.default_rng(0).bytes(4000))
    paths = [str(images[0]), str(bad), str(images[1]), str(images[2]), str(images[3])]
    rows = scored(chunk_scorer(checkpoint, "dali", checks=False, device="cuda"), paths)
    assert [r.image for r in rows] == paths
    assert rows[1].score is None and str(bad) in rows[1].error
    assert all(r.error is None and np.isfinite(r.score) for r in rows if r.image != str(bad))


def test_windows_are_whole_batches() -> None:
    assert rows_window(96, 25) == 96  # 2,400 patches: 25 batches
    assert rows_window(96, 24) == 4
    assert rows_window(4, 2) == 2


def test_scorer_stream_yields_rows_for_any_iterable(checkpoint: Path, images: list[Path]) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=RESIZE, patch_num=2, batch_size=4)

    def paths():  # a generator, as a caller streaming a huge list would pass
        yield images[0]
        yield "missing.jpg"
        yield str(images[1])

    rows = list(scorer.stream(paths()))
    assert [r[0] for r in rows] == [str(images[0]), "missing.jpg", str(images[1])]
    assert rows[1] == ("missing.jpg", None, "file not found")
    assert np.allclose([rows[0][1], rows[2][1]], scorer.score(images[:2]), atol=1e-6)
    assert list(scorer.stream([])) == []
    with pytest.raises(UserError, match="iterable of file paths"):
        list(scorer.stream(str(images[0])))
    with pytest.raises(UserError, match="path 0: a file path was expected"):
        list(scorer.stream([Image.new("RGB", (8, 8))]))
