"""The metadata JSON, the train/val split, and the sets a run uses.

The metadata is a JSON list of ``{"image": <path relative to dataset_root>,
"score": <float>}`` objects; the score is the image's label (MOS, z-score,
DMOS: whatever the dataset's quality scale is). It is validated up front so
that a bad entry fails in a second with its name, not hours into a run. Images
are identified by the file, not by the string: ``img/0.jpg``, ``./img/0.jpg``
and a link to it are one image, so no image is listed twice or lands in two sets.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperiqa.errors import JSON_ERRORS, UserError, json_problem
from hyperiqa.spec import TRAIN, VAL, RunSpec
from pipelines.images import file_problem

SHOW = 5  # how many names a message lists before "and N more"


@dataclass(frozen=True)
class Sample:
    image: str  # as written in the metadata, relative to the dataset root
    path: Path  # resolved file path
    label: float  # the metadata's "score": the quality the model learns to predict


def _shown(items: Sequence[object]) -> str:
    more = f" and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return ", ".join(str(i) for i in items[:SHOW]) + more


def read_metadata(json_path: Path) -> list:
    """The entries of a metadata JSON file, or a UserError saying what is wrong with it."""
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"metadata JSON not found: {json_path}") from None
    except IsADirectoryError:
        raise UserError(f"metadata JSON {json_path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read metadata JSON {json_path}: {e}") from None
    try:
        entries = json.loads(text)
    except JSON_ERRORS as e:
        raise UserError(f"malformed metadata JSON {json_path}: {json_problem(e)}") from None
    if not isinstance(entries, list):
        raise UserError(f"metadata JSON {json_path} must hold a list of entries")
    if not entries:
        raise UserError(f"metadata JSON {json_path} lists no images")
    return entries


# Quality scales run 0-100 or 1-5 (z-scores, DMOS: similar); far beyond that a
# score is a unit error, and near float's end the correlations overflow.
MAX_ABS_SCORE = 1e9


def _score(entry: dict, where: str) -> float:
    if "score" not in entry:
        raise UserError(f"{where}: missing 'score'")
    score = entry["score"]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise UserError(f"{where}: score {str(score)[:40]!r} is not a number")
    try:
        value = float(score)  # an integer of 400 digits overflows here
    except OverflowError:
        raise UserError(f"{where}: score {str(score)[:20]}... is too large") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: score {score} is not finite")
    if abs(value) > MAX_ABS_SCORE:  # PLCC's sums overflow long before float's end
        raise UserError(f"{where}: score {score:g} is out of range (at most {MAX_ABS_SCORE:g})")
    return value


def file_key(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file: the same for every spelling of one file."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def load_samples(
    json_path: str | Path, dataset_root: str | Path, require_files: bool = True
) -> list[Sample]:
    """Read and validate a metadata JSON: every listed file exists, once.

    ``require_files=False`` leaves missing files to the image check, which then
    lists them together with the undecodable ones, in one pass.
    """
    json_path, root = Path(json_path), Path(dataset_root)
    samples: list[Sample] = []
    for i, entry in enumerate(read_metadata(json_path)):
        where = f"{json_path} entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected an object with 'image' and 'score'")
        image = entry.get("image")
        if image is not None and not isinstance(image, str):
            raise UserError(f"{where}: 'image' must be a file name, got {type(image).__name__}")
        if not image:
            raise UserError(f"{where}: missing or empty 'image'")
        if "\0" in image:
            raise UserError(f"{where}: the image name {image!r} contains a NUL character")
        where = f"{json_path} entry {i} ({image})"
        samples.append(Sample(image=image, path=root / image, label=_score(entry, where)))

    # Report every unusable path at once: a user fixing paths wants the whole list.
    problems = [(s.path, p) for s in samples if (p := file_problem(s.path))]
    relative = any(not Path(s.image).is_absolute() for s in samples)
    if len(problems) == len(samples) and relative and not root.is_dir():
        # Every image missing under a root that is not there: the root is the culprit.
        why = "not found" if not root.exists() else "not a folder"
        raise UserError(f"dataset root {root} ({why}) holds none of the images of {json_path}")
    if problems and require_files:
        listed = [f"{path} ({why})" for path, why in problems]
        raise UserError(
            f"{json_path}: {len(problems)} of {len(samples)} image files are unusable "
            f"under {root}: {_shown(listed)}"
        )
    first: dict[tuple[int, int], int] = {}
    for i, s in enumerate(samples):
        key = file_key(s.path)
        if key is None:  # missing: the image check names it
            continue
        if key in first:
            j = first[key]
            raise UserError(
                f"{json_path} entry {i} ({s.image}): duplicate of entry {j} "
                f"({samples[j].image}), the same file"
            )
        first[key] = i
    return samples


def check_disjoint(sets: dict[str, Sequence[Sample]]) -> None:
    """No image file in two sets (train and val, train and test, ...): a leak would
    make the held-out numbers meaningless."""
    owner: dict[tuple[int, int], str] = {}
    for name, samples in sets.items():
        shared: dict[str, list[str]] = {}
        for s in samples:
            key = file_key(s.path)
            if key is None:  # missing: the image check names it
                continue
            other = owner.setdefault(key, name)
            if other != name:
                shared.setdefault(other, []).append(s.image)
        for other, images in shared.items():
            raise UserError(
                f"{len(images)} images of the {name} set are also in the {other} set: "
                f"{_shown(images)}"
            )


def split_samples(
    samples: list[Sample], val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split by image with a permutation seeded by ``seed``: the first
    ``round(val_split * N)`` permuted images are validation.

    numpy's PCG64 stream is the same on every platform, so the same seed gives
    the same split on every machine and with every loader.
    """
    if not 0 <= val_split < 1:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    perm = np.random.default_rng(seed).permutation(len(samples))
    num_val = round(val_split * len(samples))
    if val_split > 0 and num_val == 0:
        raise UserError(
            f"val_split {val_split} of {len(samples)} images holds out no image; use a larger "
            "share, or --val_split 0 for no validation"
        )
    val = [samples[i] for i in sorted(perm[:num_val])]
    train = [samples[i] for i in sorted(perm[num_val:])]
    if not train:
        raise UserError(f"val_split {val_split} leaves no training images of {len(samples)}")
    return train, val


def load_sets(spec: RunSpec) -> dict[str, list[Sample]]:
    """Every set the run uses: train, val (carved out or --val_json), test and
    --eval_json sets. No image may sit in two of them, and validation must be
    able to rank (it chooses best_model.pkl)."""

    # Without --skip_check the image check lists missing and broken files together.
    def load(path: str, root: str) -> list[Sample]:
        return load_samples(path, root, require_files=spec.skip_check)

    samples = load(spec.train_json, spec.dataset_root)
    if spec.val_json:
        train, val = samples, load(spec.val_json, spec.dataset_root)
    else:
        train, val = split_samples(samples, spec.val_split, spec.seed)
    sets = {TRAIN: train, VAL: val} if val else {TRAIN: train}
    for name, held_out in spec.held_out_sets().items():
        sets[name] = load(held_out.metadata, held_out.dataset_root)
    check_disjoint(sets)
    labels = {s.label for s in val}
    if val and (len(val) < 2 or len(labels) < 2):
        raise UserError(
            f"the validation set ({len(val)} images, {len(labels)} distinct scores) cannot "
            "rank images, so it cannot choose best_model.pkl; use a larger --val_split, "
            "another --val_json, or --val_split 0 (best = last epoch)"
        )
    return sets


def describe_sets(spec: RunSpec, sets: dict[str, list[Sample]]) -> dict:
    """data.json: per set, where it came from and a fingerprint of what it holds.

    The fingerprint covers every image name, label and file size, in order
    (the order fixes which image each plan index means). Image bytes are not
    hashed: that would read the whole dataset again (2.5 GB for KonIQ) at every
    start; a replaced or re-encoded image changes its size and is caught.
    """
    held_out = spec.held_out_sets()
    sources = {TRAIN: spec.train_json, VAL: spec.val_json or spec.train_json}
    sources |= {name: s.metadata for name, s in held_out.items()}
    roots = {name: s.dataset_root for name, s in held_out.items()}
    out = {}
    for name, samples in sets.items():
        listing = [[s.image, s.label, _file_size(s.path)] for s in samples]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        out[name] = {
            "metadata": sources[name],
            "dataset_root": roots.get(name, spec.dataset_root),
            "images": len(samples),
            "fingerprint": f"sha256:{digest}",
        }
    return out


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # missing: the image check reports it before anything is written
        return None
