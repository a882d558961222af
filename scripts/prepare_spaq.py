"""Turn the SPAQ release into test metadata, with the images downscaled once.

    python scripts/prepare_spaq.py --spaq_root ../datasets/SPAQ

The dataset: SPAQ, Smartphone Photography Attribute and Quality (Fang et al.
2020), 11,125 photos from 66 phones. Its release has the full-size images in
TestImage/ (e.g. 00001.jpg) and, in Annotations/, the spreadsheet
"MOS and Image attribute scores.xlsx" (columns Image name, MOS on 0-100, and
the attribute scores Brightness, Colorfulness, Contrast, Noisiness,
Sharpness). The spreadsheet is looked for in Annotations/ and then in
--spaq_root itself; --mos_xlsx names it directly.

The photos are several thousand pixels wide; the field evaluates them
downscaled so the SHORT side is 512 px. This script does that once, into a
new folder (--resized_dir, default <spaq_root>/TestImage_512): aspect ratio
kept, EXIF orientation applied (so the pixels stand upright without the tag),
Lanczos resampling, saved as JPEG quality 95 with full-resolution chroma
(4:4:4) and the source's colour profile. JPEG rather than PNG: the sources are
JPEGs already, so q95 4:4:4 adds no visible loss, while the files are about 4x
smaller than PNG and DALI decodes JPEG on the GPU (PNG on the CPU). Images
whose short side is already 512 or less keep their size. The originals are
only read. --workers processes share the work.

A rerun only redoes what changed. Each downscaled image is written in full or
not at all (checked: a JPEG end marker, every byte on disk, then a rename),
and prepare_spaq_record.json beside the images records, per image, the size
and SHA-256 of its source and of the copy made. A copy is reused only when
both still match that record (and the downscaling settings are the same), so
a truncated or damaged copy, or a source replaced by another file, whatever
its timestamps, is made again; so are copies the record does not list (made
by an older version of this script, or before a crash of this one).

Writes out_dir/spaq_test.json: a JSON list of {"image": <path of the
downscaled image relative to --dataset_root>, "score": <MOS, 0-100>}. Images
listed but not on disk are reported and left out; an image that is there but
cannot be decoded stops the run (re-extract it, or delete it to leave it out).
Needs openpyxl to read the .xlsx.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from hyperiqa.arg_types import positive_int
from hyperiqa.atomic import write_bytes_atomic
from hyperiqa.prepare import (
    PrepareError,
    add_output_args,
    add_scored,
    check_image_name,
    check_not_inputs,
    entries_for,
    first_names,
    parse_score,
    present_images,
    relative_dir,
    run_tool,
    write_metadata,
)

PROG = "prepare_spaq"
MOS_XLSX = "MOS and Image attribute scores.xlsx"
XLSX_PLACES = (Path("Annotations") / MOS_XLSX, Path(MOS_XLSX))
NAME_COLUMN, MOS_COLUMN = "Image name", "MOS"
IMAGE_DIR = "TestImage"
SHORT_SIDE = 512
JPEG_QUALITY = 95
OUTPUT = "spaq_test.json"
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
PARALLEL_FROM = 8  # fewer images than this are not worth starting processes for
JPEG_END = b"\xff\xd9"  # the EOI marker: a JPEG without it was cut short
RECORD = "prepare_spaq_record.json"  # in the downscaled folder: what each copy was made from
# How the copies are made: a record written with other settings is not reused.
METHOD = {"short_side": SHORT_SIDE, "quality": JPEG_QUALITY, "subsampling": "4:4:4",
          "resample": "lanczos", "exif_transpose": True}  # fmt: skip

Record = dict[str, dict[str, object]]  # {"source": digest, "copy": digest}
Job = tuple[Path, Path, Record | None]  # (source image, downscaled image, its record)
# (kind, detail, record): kind is "ok", "small", "read" or "write"; record when made
Result = tuple[str, str, Record | None]


# ---------------------------------------------------------------- the spreadsheet


def find_xlsx(root: Path, given: Path | None) -> Path:
    """The MOS spreadsheet: --mos_xlsx, else its place in the release."""
    if given is not None:
        if not given.is_file():
            raise PrepareError(f"--mos_xlsx {given} not found")
        return given
    for place in XLSX_PLACES:
        if (root / place).is_file():
            return root / place
    raise PrepareError(
        f"{root / XLSX_PLACES[0]} not found (SPAQ's MOS spreadsheet; "
        "--mos_xlsx names it if it sits elsewhere)"
    )


def column_key(header: object) -> str:
    """Header cells compared without case or extra spaces ("Image  name " is "image name")."""
    return " ".join(str(header).split()).lower()


def find_columns(workbook, path: Path):
    """(sheet title, name column index, MOS column index, the rows after the header)
    of the first sheet whose first row names both columns."""
    seen = []
    for sheet in workbook.worksheets:
        rows = sheet.iter_rows(values_only=True)
        header = next(rows, ())
        columns: dict[str, int] = {}
        for index, cell in enumerate(header):
            if cell is not None:
                columns.setdefault(column_key(cell), index)
        name_col = columns.get(column_key(NAME_COLUMN))
        mos_col = columns.get(column_key(MOS_COLUMN))
        if name_col is not None and mos_col is not None:
            return sheet.title, name_col, mos_col, rows
        found = ", ".join(str(cell) for cell in header if cell is not None) or "nothing"
        seen.append(f"sheet {sheet.title!r} has {found}")
    raise PrepareError(
        f"{path}: no sheet has the columns {NAME_COLUMN!r} and {MOS_COLUMN!r} ({'; '.join(seen)})"
    )


def read_mos_xlsx(path: Path) -> dict[str, float]:
    """{image name: MOS} in sheet order; names unique, scores finite."""
    try:
        import openpyxl  # only this script needs it: the others stay importable without it
    except ImportError:
        raise PrepareError(f"reading {path.name} needs openpyxl: pip install openpyxl") from None
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # a damaged file raises anything from BadZipFile to KeyError
        raise PrepareError(
            f"cannot read {path} as an .xlsx workbook ({type(exc).__name__}: {exc})"
        ) from None
    try:
        title, name_col, mos_col, rows = find_columns(workbook, path)
        scores: dict[str, float] = {}
        for number, row in enumerate(rows, start=2):  # spreadsheet row numbers
            if all(cell is None for cell in row):
                continue  # empty rows at the end of a sheet
            where = f"{path}, sheet {title!r}, row {number}"
            name = check_image_name(row[name_col] if name_col < len(row) else None, where)
            mos = parse_score(row[mos_col] if mos_col < len(row) else None, where, MOS_COLUMN)
            add_scored(scores, name, mos, where)
    finally:
        workbook.close()  # read-only mode keeps the file open until closed
    if not scores:
        raise PrepareError(f"{path}: sheet {title!r} has a header but no rows")
    return scores


# ---------------------------------------------------------------- downscaling


def resized_name(name: str) -> str:
    """The downscaled file's name: the same for JPEG sources, else the stem + .jpg."""
    return name if Path(name).suffix.lower() in (".jpg", ".jpeg") else Path(name).stem + ".jpg"


def target_size(width: int, height: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """(width, height) with the short side at ``short_side`` and the aspect ratio
    kept; images that are not larger keep their size (no upscaling)."""
    if min(width, height) <= short_side:
        return width, height
    if width <= height:
        return short_side, round(height * short_side / width)
    return round(width * short_side / height), short_side


def digest(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def unchanged(job: Job) -> bool:
    """Is the downscaled image still the copy its record says was made from this
    very source? (In a worker process: it reads both files.)"""
    source, target, record = job
    try:
        # Sizes first: most changed files are told apart without reading them.
        sizes = [source.stat().st_size, target.stat().st_size]
        if sizes != [record["source"]["size"], record["copy"]["size"]]:
            return False
        made = {"source": digest(source.read_bytes()), "copy": digest(target.read_bytes())}
        return made == record
    except (OSError, TypeError, KeyError):  # a file gone or unreadable, a malformed record
        return False


def downscale(job: Job) -> Result:
    """Write one downscaled image (in a worker process). Never raises for a bad
    image: the parent collects every failure and reports them together."""
    source, target, _ = job
    try:
        data = source.read_bytes()  # read once: hashed for the record, then decoded
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            final = target_size(width, height)
            small = final == (width, height)
            if not small:
                # JPEG decoding at 1/2, 1/4 or 1/8 scale in the DCT: several
                # times faster for 12-megapixel photos. Asking for at least
                # twice the final size leaves the real filtering to Lanczos.
                image.draft(None, (2 * final[0], 2 * final[1]))
            if image.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS:
                final = (final[1], final[0])  # the upright image is rotated by 90 degrees
            icc_profile = image.info.get("icc_profile")
            upright = ImageOps.exif_transpose(image).convert("RGB")
        if upright.size != final:
            upright = upright.resize(final, Image.Resampling.LANCZOS)
    except UnidentifiedImageError:  # its message would name the in-memory copy
        return "read", f"{source.name} (not an image Pillow can identify)", None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return "read", f"{source.name} ({exc})", None
    # Encoded in memory, then written as bytes: Pillow writing straight to a
    # file descriptor does not notice a short write on a nearly full disk.
    encoded = io.BytesIO()
    try:
        upright.save(encoded, "JPEG", quality=JPEG_QUALITY, subsampling=0, icc_profile=icc_profile)
    except (OSError, ValueError) as exc:
        return "write", f"{target}: cannot encode it ({exc})", None
    jpeg = encoded.getvalue()
    if not jpeg.endswith(JPEG_END):
        return "write", f"{target}: the encoder gave an incomplete JPEG", None
    try:
        write_bytes_atomic(target, jpeg)  # every byte on disk, or the old file kept
    except OSError as exc:
        return "write", f"{target}: {exc.strerror or exc}", None
    record = {"source": digest(data), "copy": digest(jpeg)}
    return ("small" if small else "ok"), source.name, record


def run_jobs(work: Callable[[Job], object], jobs: list[Job], workers: int, verb: str) -> Iterator:
    """work(job) for each job, in order, in worker processes when there are
    enough, with a progress line every tenth of a long run."""
    step = max(1, len(jobs) // 10)
    processes = process_count(len(jobs), workers)
    with contextlib.ExitStack() as stack:
        if processes > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=processes))
            results = pool.map(work, jobs, chunksize=4)
        else:
            results = map(work, jobs)
        for done, result in enumerate(results, start=1):
            yield result
            _progress(done, len(jobs), step, verb)


def process_count(jobs: int, workers: int) -> int:
    """How many processes run_jobs uses: one for a handful of images."""
    return min(workers, jobs) if jobs >= PARALLEL_FROM else 1


def _progress(done: int, total: int, step: int, verb: str) -> None:
    if total >= 100 and (done % step == 0 or done == total):
        print(f"{PROG}: {verb} {done:,} of {total:,}", flush=True)


def read_record(resized_dir: Path) -> dict[str, Record]:
    """{downscaled name: record} from the folder's record file; {} when there is
    none or it cannot be used (then every image is made again, with a warning)."""
    path = resized_dir / RECORD
    if not path.exists():
        return {}
    if not path.is_file():  # refused now: it could not be written after all the work
        raise PrepareError(f"{path} is not a file; move it away (it is this script's record)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not JSON"
        print(f"{PROG}: warning: cannot read {path} ({problem}); every image is made again",
              file=sys.stderr)  # fmt: skip
        return {}
    if not isinstance(saved, dict) or not isinstance(saved.get("images"), dict):
        print(f"{PROG}: warning: {path} is not a record of this script; every image is made "
              "again", file=sys.stderr)  # fmt: skip
        return {}
    if saved.get("method") != METHOD:
        return {}  # made with other settings: none of them is what this run makes
    return saved["images"]


def write_record(resized_dir: Path, records: dict[str, Record]) -> None:
    data = json.dumps({"method": METHOD, "images": records}, indent=1, sort_keys=True) + "\n"
    path = resized_dir / RECORD
    with contextlib.suppress(OSError):
        if path.read_bytes() == data.encode():
            return  # a rerun that made nothing changes nothing
    try:
        write_bytes_atomic(path, data.encode())
    except OSError as exc:
        raise PrepareError(f"cannot write {path}: {exc.strerror or exc}") from None


def downscale_images(names: list[str], image_dir: Path, resized_dir: Path, workers: int) -> None:
    """Make resized_dir/resized_name(name) for every name, reusing those that
    their record shows to be complete copies of the same source."""
    try:
        resized_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(f"cannot create {resized_dir}: {exc.strerror or exc}") from None
    records = read_record(resized_dir)
    jobs = [
        (image_dir / name, resized_dir / resized_name(name), records.get(resized_name(name)))
        for name in names
    ]
    recorded = [job for job in jobs if job[2] is not None]
    checks = run_jobs(unchanged, recorded, workers, "checked")
    fresh = {target for (_, target, _), ok in zip(recorded, checks, strict=True) if ok}
    stale = [job for job in jobs if job[1] not in fresh]
    print(
        f"{PROG}: {len(fresh):,} downscaled images in {resized_dir} reused, "
        f"{len(stale):,} to make (short side {SHORT_SIDE}, "
        f"{process_count(len(stale), workers)} processes)",
        flush=True,
    )
    for _, target, _ in stale:
        records.pop(target.name, None)  # until made again
    results: list[Result] = []
    try:
        made = run_jobs(downscale, stale, workers, "downscaled")
        for (_, target, _), result in zip(stale, made, strict=True):
            results.append(result)
            if result[2] is not None:
                records[target.name] = result[2]
    except BaseException:
        # Stopped or failed midway: keep what was made for the next run.
        with contextlib.suppress(PrepareError):
            write_record(resized_dir, records)
        raise
    write_record(resized_dir, records)
    failed = {kind: [d for k, d, _ in results if k == kind] for kind in ("write", "read")}
    if failed["write"]:
        raise PrepareError(
            f"cannot write {len(failed['write'])} downscaled images: {failed['write'][0]}"
        )
    if failed["read"]:
        raise PrepareError(
            f"{len(failed['read'])} images in {image_dir} cannot be decoded: "
            f"{first_names(failed['read'])}; re-extract them, or delete them to leave them out"
        )
    small = [detail for kind, detail, _ in results if kind == "small"]
    if small:
        print(
            f"{PROG}: warning: {len(small)} images have a short side of {SHORT_SIDE} px or "
            f"less and keep their size: {first_names(small)}",
            file=sys.stderr,
        )


def check_resized_dir(resized_dir: Path, image_dir: Path) -> None:
    """The downscaled images go to a folder of their own: the originals stay untouched."""
    if resized_dir.resolve() == image_dir.resolve():
        raise PrepareError(
            f"--resized_dir {resized_dir} is the folder of the original images; "
            "the downscaled copies need a folder of their own"
        )


def unique_outputs(names: list[str], where: Path) -> None:
    """Two sources must not map to one downscaled file (a.png and a.jpg -> a.jpg)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(resized_name(name), name)
        if other != name:
            raise PrepareError(
                f"{where}: {other} and {name} would both be downscaled to {resized_name(name)}"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prepare_spaq.py",
        description="Downscale SPAQ's images (short side 512) and write spaq_test.json.",
    )
    parser.add_argument(
        "--spaq_root",
        type=Path,
        required=True,
        help=f"the release folder, holding {IMAGE_DIR}/ and Annotations/{MOS_XLSX}",
    )
    add_output_args(parser)
    parser.add_argument(
        "--mos_xlsx", type=Path, help=f"the {MOS_XLSX} file, if not in the release folder"
    )
    parser.add_argument(
        "--resized_dir",
        type=Path,
        help=f"folder for the downscaled images (default <spaq_root>/{IMAGE_DIR}_{SHORT_SIDE}); "
        "must be inside --dataset_root",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="processes that downscale (default: one per CPU core)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.spaq_root
    if not root.is_dir():
        raise PrepareError(f"--spaq_root {root} is not a directory")
    xlsx = find_xlsx(root, args.mos_xlsx)
    scores = read_mos_xlsx(xlsx)
    print(f"{PROG}: {len(scores):,} images scored in {xlsx}")
    names = list(scores)
    unique_outputs(names, xlsx)

    # Every check that needs no image work comes first: a mistake in a flag
    # must not surface after an hour of downscaling.
    image_dir = root / IMAGE_DIR
    resized_dir: Path = args.resized_dir or root / f"{IMAGE_DIR}_{SHORT_SIDE}"
    check_resized_dir(resized_dir, image_dir)
    prefix = relative_dir(resized_dir, args.dataset_root)
    check_not_inputs([args.out_dir / OUTPUT], [xlsx])
    present = present_images(PROG, names, image_dir, xlsx, "wrong --spaq_root?")

    downscale_images(present, image_dir, resized_dir, args.workers)
    resized_scores = {resized_name(name): scores[name] for name in present}
    outputs = {OUTPUT: entries_for(list(resized_scores), resized_scores, prefix)}
    write_metadata(PROG, args.out_dir, outputs, [xlsx], "MOS")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(PROG, main))
