"""The cross-dataset preparers (CLIVE, KADID-10k, SPAQ) on small files in their
released formats, and the all-or-nothing group write they share."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hyperiqa import atomic
from hyperiqa.atomic import GroupWriteError, write_all_or_nothing
from tests.conftest import assert_clean_error, run_cli


def read_entries(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def assert_one_line_and_nothing_written(proc, out: Path, *needles: str) -> None:
    """Non-zero exit, no traceback, one line naming the culprit, no metadata folder."""
    assert_clean_error(proc, *needles)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


# ---------------------------------------------------------------- write_all_or_nothing


@pytest.fixture
def old_group(tmp_path: Path) -> dict[Path, bytes]:
    """Three files of an old split in tmp_path/out, and their new contents."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_train.json").write_bytes(b"old train")
    (out / "a_test.json").write_bytes(b"old test")
    # a_val.json does not exist yet: a failed write must not leave one behind
    return {
        out / "a_train.json": b"new train",
        out / "a_val.json": b"new val",
        out / "a_test.json": b"new test",
    }


def test_group_write_replaces_every_file(old_group: dict[Path, bytes]) -> None:
    write_all_or_nothing(old_group)
    for path, data in old_group.items():
        assert path.read_bytes() == data
    out = next(iter(old_group)).parent
    assert sorted(os.listdir(out)) == ["a_test.json", "a_train.json", "a_val.json"]


def test_group_write_failing_on_the_second_file_replaces_nothing(
    old_group: dict[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = next(iter(old_group)).parent
    before = folder_state(out)
    real_write_temp = atomic._write_temp
    calls = []

    def disk_full_on_second(path: Path, data: bytes) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write_temp(path, data)

    monkeypatch.setattr(atomic, "_write_temp", disk_full_on_second)
    with pytest.raises(GroupWriteError) as info:
        write_all_or_nothing(old_group)
    message = str(info.value)
    assert "a_val.json" in message and "No space left on device" in message
    assert "nothing was replaced" in message
    assert folder_state(out) == before  # old files byte-identical, no temp file left


@pytest.mark.parametrize(
    ("when", "nth", "error"),
    [
        ("before", 3, OSError(5, "Input/output error")),
        ("before", 3, KeyboardInterrupt()),  # listed for rollback, not yet renamed
        ("after", 2, KeyboardInterrupt()),  # renamed, not yet recorded
    ],
)
def test_group_write_failing_or_interrupted_rename_rolls_back(
    old_group: dict[Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
    nth: int,
    error: BaseException,
) -> None:
    """A rename fails, or a Ctrl-C lands just before or just after one: every file
    renamed so far gets its old version back, and no temp or backup is left."""
    out = next(iter(old_group)).parent
    before = folder_state(out)
    real_replace = os.replace
    targets = []

    def replace(src, dst) -> None:
        ours = Path(dst).name.startswith("a_") and Path(dst).name.endswith(".json")
        if ours:
            targets.append(dst)
        if ours and when == "before" and len(targets) == nth:
            raise error
        real_replace(src, dst)
        if ours and when == "after" and len(targets) == nth:
            raise error

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(type(error)) as info:
        write_all_or_nothing(old_group)
    if isinstance(error, OSError):
        assert "nothing was replaced" in str(info.value) and info.value.left_new == []
    monkeypatch.undo()
    assert folder_state(out) == before  # old bytes, no new file, no temp or backup left


def test_a_short_write_without_an_error_replaces_nothing(
    old_group: dict[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that takes fewer bytes than written, without an error (a
    nearly full disk): the size check before the rename catches it."""
    out = next(iter(old_group)).parent
    before = folder_state(out)
    real_fsync = os.fsync

    def short(fd: int) -> None:
        os.ftruncate(fd, os.fstat(fd).st_size - 1)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", short)
    with pytest.raises(GroupWriteError, match="short write: 8 of 9 bytes"):
        write_all_or_nothing(old_group)
    with pytest.raises(OSError, match="short write"):
        atomic.write_bytes_atomic(out / "a_test.json", b"new test")
    monkeypatch.undo()
    assert folder_state(out) == before


def test_group_write_interrupted_keeps_old_files(
    old_group: dict[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = next(iter(old_group)).parent
    before = folder_state(out)
    real_write_temp = atomic._write_temp

    def interrupted_on_last(path: Path, data: bytes) -> Path:
        if path.name == "a_test.json":
            raise KeyboardInterrupt
        return real_write_temp(path, data)

    monkeypatch.setattr(atomic, "_write_temp", interrupted_on_last)
    with pytest.raises(KeyboardInterrupt):
        write_all_or_nothing(old_group)
    assert folder_state(out) == before


# ---------------------------------------------------------------- CLIVE


def make_clive_names(n: int) -> list[str]:
    return [f"t{i + 1}.bmp" if i < 7 else f"{i + 100}.bmp" for i in range(n)]


def make_clive(
    root: Path, n: int = 12, missing: tuple[int, ...] = ()
) -> tuple[list[str], list[float]]:
    """A LIVE Challenge release: n images, the first 7 in Images/trainingImages/."""
    names = make_clive_names(n)
    mos = [float(10 + 5 * i) for i in range(n)]
    (root / "Images" / "trainingImages").mkdir(parents=True)
    (root / "Data").mkdir()
    for i, name in enumerate(names):
        if i not in missing:
            folder = root / "Images" / ("trainingImages" if i < 7 else "")
            Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / name)
    save_clive_mats(root, names, mos)
    return names, mos


def save_clive_mats(root: Path, names: list, mos: list[float], layout: str = "cell") -> None:
    """The two .mat files; the names as a cell array (as released) or as a char
    matrix: one name per row, padded with spaces ("padded", as MATLAB's char()
    makes it) or stored one character per cell ("chars")."""
    if layout == "cell":
        value = np.empty((len(names), 1), dtype=object)  # a MATLAB cell array, 1169x1
        for i, name in enumerate(names):
            value[i, 0] = name
    elif layout == "padded":
        value = np.array(names)  # savemat writes a char matrix, rows padded with spaces
    else:
        width = max(map(len, names))
        value = np.array([list(name.ljust(width)) for name in names])
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": value})
    scipy.io.savemat(
        root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([mos], dtype=float)}
    )


def run_preparer(dataset: str, release: Path, tmp_path: Path, *extra: str):
    """scripts/prepare_<dataset>.py on a release folder, writing to tmp_path/metas."""
    return run_cli(
        f"scripts/prepare_{dataset}.py",
        f"--{dataset}_root", str(release),
        "--dataset_root", str(tmp_path),
        "--out_dir", str(tmp_path / "metas"),
        *extra,
    )  # fmt: skip


def prepare_clive(tmp_path: Path, *extra: str):
    return run_preparer("clive", tmp_path / "ChallengeDB_release", tmp_path, *extra)


def test_clive_drops_the_seven_training_images(tmp_path: Path) -> None:
    names, mos = make_clive(tmp_path / "ChallengeDB_release")
    proc = prepare_clive(tmp_path)
    assert proc.returncode == 0, proc.stderr
    entries = read_entries(tmp_path / "metas" / "clive_test.json")
    assert [e["image"] for e in entries] == [f"ChallengeDB_release/Images/{n}" for n in names[7:]]
    assert [e["score"] for e in entries] == pytest.approx(mos[7:])
    assert all((tmp_path / e["image"]).is_file() for e in entries)
    assert "5 images" in proc.stdout


def test_clive_reads_what_loadmat_returns(tmp_path: Path) -> None:
    """loadmat gives a cell array of strings as an object array of 1-element
    string arrays; a char matrix (one name per row) is accepted as well."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "prepare_clive", ROOT / "scripts/prepare_clive.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = ["a.bmp", "bb.JPG", "c.bmp"]
    cell = np.empty((3, 1), dtype=object)
    cell[:, 0] = names
    scipy.io.savemat(tmp_path / "cell.mat", {"x": cell, "chars": np.array(["a.bmp", "b.bmp"])})
    loaded = scipy.io.loadmat(tmp_path / "cell.mat")
    assert loaded["x"].dtype == object and loaded["x"][1, 0].tolist() == ["bb.JPG"]
    assert module.cell_strings(loaded["x"], tmp_path, "x") == names
    assert module.cell_strings(loaded["chars"], tmp_path, "chars") == ["a.bmp", "b.bmp"]


# Names of several lengths: a char matrix pads the shorter ones.
CLIVE_NAMES = [*(f"t{i + 1}.bmp" for i in range(7)), "3.bmp", "10.bmp", "1000.bmp", "55.JPG"]


@pytest.mark.parametrize("layout", ["padded", "chars"])
def test_clive_reads_names_stored_as_a_char_matrix(tmp_path: Path, layout: str) -> None:
    """Every test image of a char-matrix release is found, its name unpadded."""
    root = tmp_path / "ChallengeDB_release"
    make_clive(root, n=len(CLIVE_NAMES))
    for old, new in zip(make_clive_names(len(CLIVE_NAMES)), CLIVE_NAMES, strict=True):
        folder = root / "Images" / ("trainingImages" if old.startswith("t") else "")
        (folder / old).rename(folder / new)
    mos = [float(10 + 5 * i) for i in range(len(CLIVE_NAMES))]
    save_clive_mats(root, CLIVE_NAMES, mos, layout)
    loaded = scipy.io.loadmat(root / "Data" / "AllImages_release.mat")["AllImages_release"]
    assert loaded.dtype.kind == "U"  # what the char-matrix path of prepare_clive reads
    proc = prepare_clive(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "missing" not in proc.stderr
    entries = read_entries(tmp_path / "metas" / "clive_test.json")
    assert [e["image"] for e in entries] == [
        f"ChallengeDB_release/Images/{name}" for name in CLIVE_NAMES[7:]
    ]
    assert [e["score"] for e in entries] == pytest.approx(mos[7:])


@pytest.mark.parametrize("layout", ["cell", "padded", "chars"])
@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("../Images/1000.bmp", "bad image name '../Images/1000.bmp'"),  # exists through ..
        (" ../Images/10.bmp", "bad image name '../Images/10.bmp'"),
        ("/etc/hostname", "bad image name '/etc/hostname'"),
        ("..", "bad image name '..'"),
        ("sub\\x.bmp", "bad image name"),
        ("   ", "is empty or not text"),
        ("1\x1b[2J.bmp", "bad image name '1\\x1b[2J.bmp' (it holds a control character)"),
        ("1\n.bmp", "bad image name '1\\n.bmp' (it holds a control character)"),
    ],
)
@pytest.mark.slow
def test_clive_names_are_checked_in_every_layout(
    tmp_path: Path, layout: str, bad: str, needle: str
) -> None:
    """A name with a folder part is refused whether the names are a cell array or
    a char matrix (padded or not): one line naming the file and the entry."""
    root = tmp_path / "ChallengeDB_release"
    names, mos = make_clive(root)
    names[9] = bad
    save_clive_mats(root, names, mos, layout)
    proc = prepare_clive(tmp_path)
    assert_one_line_and_nothing_written(
        proc, tmp_path / "metas", "AllImages_release.mat", "AllImages_release", "10", needle
    )


def test_clive_missing_images_reported_and_left_out(tmp_path: Path) -> None:
    names, _ = make_clive(tmp_path / "ChallengeDB_release", missing=(8,))
    proc = prepare_clive(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 5" in proc.stderr and names[8] in proc.stderr
    assert len(read_entries(tmp_path / "metas" / "clive_test.json")) == 4


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("mos_short", ["AllMOS_release.mat", "11 scores", "12 images"]),
        ("mos_nan", ["AllMOS_release.mat", "entry 9", "not a finite number"]),
        ("duplicate", ["AllImages_release.mat", "entry 10", "listed twice"]),
        ("numbers", ["AllImages_release.mat", "not names"]),
        ("wrong_variable", ["AllImages_release.mat", "no variable AllImages_release", "names"]),
        ("garbage", ["AllMOS_release.mat", "cannot read"]),
        ("no_mos_file", ["AllMOS_release.mat", "not found"]),
        ("only_training", ["AllImages_release.mat", "no test image"]),
    ],
)
def test_clive_bad_release_fails_in_one_line(
    tmp_path: Path, damage: str, needles: list[str]
) -> None:
    root = tmp_path / "ChallengeDB_release"
    names, mos = make_clive(root)
    data = root / "Data"
    if damage == "mos_short":
        save_clive_mats(root, names, mos[:-1])  # 12 names, 11 scores
    elif damage == "mos_nan":
        save_clive_mats(root, names, [*mos[:8], float("nan"), *mos[9:]])
    elif damage == "duplicate":
        save_clive_mats(root, [*names[:9], names[8], *names[10:]], mos)
    elif damage == "numbers":
        scipy.io.savemat(data / "AllImages_release.mat", {"AllImages_release": np.arange(12.0)})
    elif damage == "wrong_variable":
        scipy.io.savemat(data / "AllImages_release.mat", {"names": np.arange(3.0)})
    elif damage == "garbage":
        (data / "AllMOS_release.mat").write_bytes(b"this is not a mat file")
    elif damage == "no_mos_file":
        (data / "AllMOS_release.mat").unlink()
    elif damage == "only_training":
        save_clive_mats(root, names[:7], mos[:7])
    assert_one_line_and_nothing_written(prepare_clive(tmp_path), tmp_path / "metas", *needles)


# ---------------------------------------------------------------- KADID-10k


def make_kadid(
    root: Path, refs: int = 2, distortions: int = 3, missing: tuple[str, ...] = ()
) -> list[str]:
    """A KADID-10k release: dmos.csv (unquoted header, as released) and images/."""
    (root / "images").mkdir(parents=True)
    lines = ["dist_img,ref_img,dmos,var"]
    names = []
    for r in range(1, refs + 1):
        (root / "images" / f"I{r:02d}.png").touch()
        for d in range(1, distortions + 1):
            name = f"I{r:02d}_{d:02d}_01.png"
            names.append(name)
            lines.append(f"{name},I{r:02d}.png,{1 + d + r / 10:.2f},0.25")
            if name not in missing:
                (root / "images" / name).touch()
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    return names


def prepare_kadid(tmp_path: Path, *extra: str):
    return run_preparer("kadid", tmp_path / "kadid10k", tmp_path, *extra)


def test_kadid_lists_every_distorted_image(tmp_path: Path) -> None:
    names = make_kadid(tmp_path / "kadid10k", missing=("I02_03_01.png",))
    proc = prepare_kadid(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 6" in proc.stderr and "I02_03_01.png" in proc.stderr
    entries = read_entries(tmp_path / "metas" / "kadid_test.json")
    assert [e["image"] for e in entries] == [f"kadid10k/images/{n}" for n in names[:5]]
    assert [e["score"] for e in entries] == pytest.approx([2.1, 3.1, 4.1, 2.2, 3.2])


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (lambda lines: ["image,score", "I01_01_01.png,3"], ["dmos.csv", "dist_img", "dmos"]),
        (lambda lines: [*lines[:2], lines[2].replace("3.10", "n/a"), *lines[3:]], ["dmos.csv", "line 3", "'n/a'"]),
        (lambda lines: [*lines, lines[1]], ["dmos.csv", "line 8", "listed twice"]),
        (lambda lines: [*lines[:3], lines[3].replace("4.10", "inf")], ["line 4", "'inf'"]),
    ],
)  # fmt: skip
def test_kadid_bad_csv_fails_in_one_line(tmp_path: Path, damage, needles: list[str]) -> None:
    make_kadid(tmp_path / "kadid10k")
    path = tmp_path / "kadid10k" / "dmos.csv"
    path.write_text("\n".join(damage(path.read_text().splitlines())) + "\n")
    assert_one_line_and_nothing_written(prepare_kadid(tmp_path), tmp_path / "metas", *needles)


def test_kadid_without_csv_fails(tmp_path: Path) -> None:
    make_kadid(tmp_path / "kadid10k")
    (tmp_path / "kadid10k" / "dmos.csv").unlink()
    proc = prepare_kadid(tmp_path)
    assert_one_line_and_nothing_written(proc, tmp_path / "metas", "dmos.csv", "not found")


# ---------------------------------------------------------------- SPAQ

SPAQ_XLSX = "MOS and Image attribute scores.xlsx"
SPAQ_HEADER = [
    "Image name",
    "MOS",
    "Brightness",
    "Colorfulness",
    "Contrast",
    "Noisiness",
    "Sharpness",
]
# (width, height, EXIF orientation) of the generated photos
SPAQ_SIZES = [(800, 600, 1), (600, 1000, 1), (1000, 700, 6), (400, 300, 1), *[(640, 520, 1)] * 5]


def make_spaq(root: Path, sizes=SPAQ_SIZES) -> list[str]:
    """A SPAQ release: Annotations/<xlsx> and TestImage/*.jpg."""
    (root / "TestImage").mkdir(parents=True)
    (root / "Annotations").mkdir()
    names = [f"{i + 1:05d}.jpg" for i in range(len(sizes))]
    for i, (name, (width, height, orientation)) in enumerate(zip(names, sizes, strict=True)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        # Left half dark, right half bright: shows which way an image was turned.
        image = Image.new("RGB", (width, height), (20, 20, 20))
        image.paste((230, 230, 230), (width // 2, 0, width, height))
        image.save(root / "TestImage" / name, quality=90, exif=exif)
        os.utime(root / "TestImage" / name, ns=(1_600_000_000_000_000_000 + i,) * 2)
    rows = [[name, 10.0 * i + 5, 1, 2, 3, 4, 5] for i, name in enumerate(names)]
    write_xlsx(root / "Annotations" / SPAQ_XLSX, [SPAQ_HEADER, *rows])
    return names


def write_xlsx(path: Path, rows: list[list]) -> None:
    openpyxl = pytest.importorskip("openpyxl")  # only the SPAQ tests need it
    workbook = openpyxl.Workbook()
    for row in rows:
        workbook.active.append(row)
    workbook.save(path)


def prepare_spaq(tmp_path: Path, *extra: str):
    return run_preparer("spaq", tmp_path / "SPAQ", tmp_path, "--workers", "2", *extra)


def test_spaq_downscales_to_short_side_512(tmp_path: Path) -> None:
    root = tmp_path / "SPAQ"
    names = make_spaq(root)
    originals = folder_state(root / "TestImage")
    proc = prepare_spaq(tmp_path)
    assert proc.returncode == 0, proc.stderr
    entries = read_entries(tmp_path / "metas" / "spaq_test.json")
    assert [e["image"] for e in entries] == [f"SPAQ/TestImage_512/{n}" for n in names]
    assert [e["score"] for e in entries] == pytest.approx([10.0 * i + 5 for i in range(len(names))])

    sizes = [Image.open(tmp_path / e["image"]).size for e in entries]
    assert sizes[0] == (683, 512)  # 800x600: short side 512, 4:3 kept
    assert sizes[1] == (512, 853)  # 600x1000 -> 512x853.3
    assert sizes[2] == (512, 731)  # 1000x700 turned upright by its EXIF tag -> 700x1000
    assert sizes[3] == (400, 300)  # already small: kept, not upscaled
    assert "1 images have a short side of 512 px or less" in proc.stderr
    for (width, height, _), (w, h) in zip(SPAQ_SIZES, sizes, strict=True):
        assert abs(max(w, h) / min(w, h) - max(width, height) / min(width, height)) < 0.01

    # Orientation 6 means "turn 90 degrees clockwise": the dark left half of
    # the stored pixels ends up on top, and the output carries no EXIF tag.
    upright = Image.open(tmp_path / entries[2]["image"])
    assert upright.getexif().get(0x0112) is None
    assert upright.getpixel((256, 100))[0] < 60 and upright.getpixel((256, 630))[0] > 200
    assert folder_state(root / "TestImage") == originals  # the originals are untouched


def test_spaq_rerun_reuses_fresh_images(tmp_path: Path) -> None:
    root = tmp_path / "SPAQ"
    names = make_spaq(root)
    assert prepare_spaq(tmp_path).returncode == 0
    resized = root / "TestImage_512"
    first = folder_state(resized)
    metadata = (tmp_path / "metas" / "spaq_test.json").read_bytes()

    proc = prepare_spaq(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "9 downscaled images" in proc.stdout and "reused, 0 to make" in proc.stdout
    assert folder_state(resized) == first
    assert (tmp_path / "metas" / "spaq_test.json").read_bytes() == metadata

    # A source changed after its copy was made is downscaled again.
    Image.new("RGB", (1024, 768), (0, 0, 255)).save(root / "TestImage" / names[0])
    proc = prepare_spaq(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 downscaled images" in proc.stdout and "reused, 1 to make" in proc.stdout
    assert Image.open(resized / names[0]).getpixel((10, 10))[2] > 200
    assert folder_state(resized)[names[1]] == first[names[1]]


def load_script(name: str):
    """scripts/<name>.py as a module, to call its functions in this process."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def temp_file_of(fd: int) -> bool:
    """Is ``fd`` open on a temp file of a downscaled image (``.00001.jpg.xxxx.tmp``)?"""
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    return name.startswith(".") and ".jpg." in name and name.endswith(".tmp")


@pytest.mark.parametrize("failure", ["short", "enospc"])
def test_spaq_short_write_is_never_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """A full disk: the bytes of a downscaled image do not all reach the file,
    with no error ("short") or with ENOSPC at the flush. The old copy stays,
    no half JPEG is renamed into place, and the next run makes it again."""
    prepare_spaq_module = load_script("prepare_spaq")
    root = tmp_path / "SPAQ"
    names = make_spaq(root, sizes=SPAQ_SIZES[:3])  # fewer than 8: made in this process
    image_dir, resized = root / "TestImage", root / "TestImage_512"
    prepare_spaq_module.downscale_images(names, image_dir, resized, 1)
    before = folder_state(resized)
    Image.new("RGB", (900, 700), (0, 0, 255)).save(image_dir / names[0])  # to be made again

    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        if temp_file_of(fd):
            if failure == "enospc":
                raise OSError(28, "No space left on device")
            os.ftruncate(fd, os.fstat(fd).st_size // 2)  # half of it reached the disk
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(prepare_spaq_module.PrepareError) as caught:
        prepare_spaq_module.downscale_images(names, image_dir, resized, 1)
    assert f"cannot write 1 downscaled images: {resized / names[0]}" in str(caught.value)
    after = folder_state(resized)
    assert {n: after[n] for n in names} == {n: before[n] for n in names}  # old copies, whole
    assert sorted(after) == sorted(before)  # no temp file left

    monkeypatch.undo()
    prepare_spaq_module.downscale_images(names, image_dir, resized, 1)
    with Image.open(resized / names[0]) as made:
        made.load()  # complete
        assert made.getpixel((10, 10))[2] > 200  # from the new source


def test_spaq_rerun_remakes_a_truncated_copy(tmp_path: Path) -> None:
    """A copy cut short after it was made (newer than its source, so a timestamp
    rule would reuse it) is made again, whole."""
    names = make_spaq(tmp_path / "SPAQ")
    assert prepare_spaq(tmp_path).returncode == 0
    copy = tmp_path / "SPAQ" / "TestImage_512" / names[2]
    whole = copy.read_bytes()
    copy.write_bytes(whole[: len(whole) // 2])  # no end marker
    proc = prepare_spaq(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 downscaled images" in proc.stdout and "reused, 1 to make" in proc.stdout
    assert copy.read_bytes() == whole


def test_spaq_rerun_remakes_a_copy_of_a_replaced_source(tmp_path: Path) -> None:
    """A source replaced by another image with an older timestamp (as an archive
    extracted again sets it) is downscaled again: reuse is decided by content."""
    names = make_spaq(tmp_path / "SPAQ")
    assert prepare_spaq(tmp_path).returncode == 0
    source = tmp_path / "SPAQ" / "TestImage" / names[4]
    Image.new("RGB", (640, 520), (0, 0, 255)).save(source, quality=90)
    os.utime(source, ns=(1_500_000_000_000_000_000,) * 2)  # older than every copy
    proc = prepare_spaq(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "reused, 1 to make" in proc.stdout
    copy = Image.open(tmp_path / "SPAQ" / "TestImage_512" / names[4])
    assert copy.getpixel((10, 10))[2] > 200


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "no_record", "other_method", "tampered"])
def test_spaq_copies_without_a_usable_record_are_made_again(tmp_path: Path, damage: str) -> None:
    """Copies whose record is unreadable, absent (an older version made them),
    made with other settings or not matching are made again; never an error."""
    make_spaq(tmp_path / "SPAQ")
    assert prepare_spaq(tmp_path).returncode == 0
    record = tmp_path / "SPAQ" / "TestImage_512" / "prepare_spaq_record.json"
    saved = json.loads(record.read_text())
    if damage == "garbage":
        record.write_bytes(b"\x00{not json")
    elif damage == "no_record":
        record.unlink()
    elif damage == "other_method":
        record.write_text(json.dumps({**saved, "method": {**saved["method"], "quality": 90}}))
    else:  # every record names another source
        for entry in saved["images"].values():
            entry["source"] = {"size": entry["source"]["size"], "sha256": "0" * 64}
        saved["images"]["00001.jpg"] = ["not", "a", "record"]
        record.write_text(json.dumps(saved))
    proc = prepare_spaq(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0 downscaled images" in proc.stdout and "reused, 9 to make" in proc.stdout
    assert ("cannot read" in proc.stderr) == (damage == "garbage")
    assert json.loads(record.read_text())["images"].keys() == saved["images"].keys()
    assert prepare_spaq(tmp_path).stdout.count("reused, 0 to make") == 1


def test_spaq_missing_images_reported_and_left_out(tmp_path: Path) -> None:
    names = make_spaq(tmp_path / "SPAQ")
    (tmp_path / "SPAQ" / "TestImage" / names[4]).unlink()
    proc = prepare_spaq(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 9" in proc.stderr and names[4] in proc.stderr
    images = [e["image"] for e in read_entries(tmp_path / "metas" / "spaq_test.json")]
    assert len(images) == 8 and f"SPAQ/TestImage_512/{names[4]}" not in images


def test_spaq_custom_resized_dir_and_xlsx_location(tmp_path: Path) -> None:
    root = tmp_path / "SPAQ"
    make_spaq(root, sizes=SPAQ_SIZES[:2])
    (root / "Annotations" / SPAQ_XLSX).rename(root / SPAQ_XLSX)  # in the root folder: found too
    proc = prepare_spaq(tmp_path, "--resized_dir", str(tmp_path / "spaq512"))
    assert proc.returncode == 0, proc.stderr
    entries = read_entries(tmp_path / "metas" / "spaq_test.json")
    assert [e["image"] for e in entries] == ["spaq512/00001.jpg", "spaq512/00002.jpg"]


def _damaged_spaq(root: Path, damage: str) -> None:
    names = make_spaq(root, sizes=SPAQ_SIZES[:3])
    xlsx = root / "Annotations" / SPAQ_XLSX
    if damage == "no_mos":
        write_xlsx(xlsx, [["Image name", "Score"], [names[0], 50]])
    elif damage == "bad_mos":
        write_xlsx(xlsx, [SPAQ_HEADER, [names[0], 50], [names[1], "good"]])
    elif damage == "duplicate":
        write_xlsx(xlsx, [SPAQ_HEADER, [names[0], 50], [names[1], 60], [names[0], 70]])
    elif damage == "garbage":
        xlsx.write_bytes(b"PK\x03\x04 not really a workbook")
    elif damage == "no_xlsx":
        xlsx.unlink()
    elif damage == "corrupt_image":
        (root / "TestImage" / names[1]).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    elif damage == "empty_image":
        (root / "TestImage" / names[1]).write_bytes(b"")
    elif damage == "record_folder":
        (root / "TestImage_512" / "prepare_spaq_record.json").mkdir(parents=True)


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("no_mos", [SPAQ_XLSX, "'MOS'", "Score"]),
        ("bad_mos", [SPAQ_XLSX, "row 3", "'good'"]),
        ("duplicate", [SPAQ_XLSX, "row 4", "listed twice"]),
        ("garbage", [SPAQ_XLSX, "cannot read"]),
        ("no_xlsx", [SPAQ_XLSX, "not found"]),
        ("corrupt_image", ["00002.jpg", "cannot be decoded"]),
        ("empty_image", ["00002.jpg (not an image Pillow can identify)"]),
        ("record_folder", ["prepare_spaq_record.json is not a file"]),
    ],
)
def test_spaq_bad_release_fails_in_one_line(
    tmp_path: Path, damage: str, needles: list[str]
) -> None:
    _damaged_spaq(tmp_path / "SPAQ", damage)
    assert_one_line_and_nothing_written(prepare_spaq(tmp_path), tmp_path / "metas", *needles)


def test_spaq_refuses_to_write_into_the_originals(tmp_path: Path) -> None:
    make_spaq(tmp_path / "SPAQ", sizes=SPAQ_SIZES[:2])
    before = folder_state(tmp_path / "SPAQ" / "TestImage")
    proc = prepare_spaq(tmp_path, "--resized_dir", str(tmp_path / "SPAQ" / "TestImage"))
    assert_one_line_and_nothing_written(proc, tmp_path / "metas", "--resized_dir", "original")
    assert folder_state(tmp_path / "SPAQ" / "TestImage") == before
