"""The metadata JSON and the train/val split.

The metadata is a JSON list of ``{"image": <path relative to dataset_root>,
"score": <float>}`` objects. It is validated up front so that a bad entry
fails in a second with its name, not hours into a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperiqa.errors import UserError


@dataclass(frozen=True)
class Sample:
    image: str  # as written in the metadata, relative to the dataset root
    path: Path  # resolved file path
    score: float


def load_samples(json_path: str | Path, dataset_root: str | Path) -> list[Sample]:
    """Read and validate a metadata JSON; every listed file must exist."""
    json_path, root = Path(json_path), Path(dataset_root)
    if not json_path.is_file():
        raise UserError(f"metadata JSON not found: {json_path}")
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read metadata JSON {json_path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"malformed metadata JSON {json_path}: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if not isinstance(entries, list):
        raise UserError(f"metadata JSON {json_path} must hold a list of entries")
    if not entries:
        raise UserError(f"metadata JSON {json_path} lists no images")

    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"{json_path} entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected an object with 'image' and 'score'")
        image, score = entry.get("image"), entry.get("score")
        if not isinstance(image, str) or not image:
            raise UserError(f"{where}: missing or empty 'image'")
        where = f"{json_path} entry {i} ({image})"
        if "score" not in entry:
            raise UserError(f"{where}: missing 'score'")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise UserError(f"{where}: score {score!r} is not a number")
        if not math.isfinite(score):
            raise UserError(f"{where}: score {score} is not finite")
        if image in seen:
            raise UserError(f"{where}: duplicate of entry {seen[image]}")
        seen[image] = i
        samples.append(Sample(image=image, path=root / image, score=float(score)))

    # Report every missing file at once: a user fixing paths wants the whole list.
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        shown = ", ".join(str(m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(
            f"{json_path}: {len(missing)} of {len(samples)} image files not found "
            f"under {root}: {shown}{more}"
        )
    return samples


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
    val = [samples[i] for i in sorted(perm[:num_val])]
    train = [samples[i] for i in sorted(perm[num_val:])]
    if not train:
        raise UserError(f"val_split {val_split} leaves no training images of {len(samples)}")
    return train, val
