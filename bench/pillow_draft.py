"""Experiment: Pillow's reduced-size JPEG decode (``Image.draft``) for the Pillow loader.

libjpeg can decode a JPEG straight to 1/2, 1/4 or 1/8 of its size by running a
smaller inverse DCT per 8x8 block, which skips most of the decode work. KonIQ's
1024x768 images resized to the default 512x384 are exactly the 2x case, so the
decode then produces the training size directly and the resize disappears.
The result is not the same picture as a full decode plus bilinear resize (the
DCT scaling is a different low-pass filter), so this module measures both the
speed and the pixel difference:

    python bench/pillow_draft.py [--images 16] [--repeat 3] [--data_dir DIR] [--json out.json]

It also compares both variants with DALI's CPU decode + resize (the graph
pipelines/dali.py uses), because the loaders are tested against each other.
``load_resized_draft`` is a drop-in replacement for
``pipelines.pillow.load_resized``; ``bench/throughput.py --pillow_draft``
patches it in for a ``loader/pillow-draft`` row.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import pipelines.pillow as pillow_loader  # noqa: E402
from pipelines.patches import train_plan  # noqa: E402

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


def load_resized_draft(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """``load_resized`` with a reduced-size JPEG decode where the file is >= 2x the target.

    ``draft`` picks the largest DCT scale (1/2, 1/4, 1/8) that keeps the
    decoded image at least the requested size, so a 1024x768 JPEG decodes
    straight to 512x384 and anything under 2x decodes in full as before. The
    request is made in the file's own orientation (before the EXIF rotation).
    """
    height, width = size
    with Image.open(path) as img:
        if img.format == "JPEG":
            turned = img.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES
            img.draft("RGB", (height, width) if turned else (width, height))
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


@contextlib.contextmanager
def patched_pillow_loader() -> Iterator[None]:
    """Make the Pillow loader decode with ``load_resized_draft`` (forked workers inherit it)."""
    original = pillow_loader.load_resized
    pillow_loader.load_resized = load_resized_draft
    try:
        yield
    finally:
        pillow_loader.load_resized = original


def _best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _dali_cpu_resized(paths: list[Path], size: tuple[int, int]) -> list[np.ndarray] | None:
    """DALI CPU decode + antialiased linear resize, as in pipelines/dali.py (None without DALI)."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return None
    height, width = size
    files = [np.fromfile(p, dtype=np.uint8) for p in paths]

    @pipeline_def(batch_size=len(files), num_threads=2, device_id=None)
    def pipe():
        data = fn.external_source(source=lambda: files, batch=True, dtype=types.UINT8)
        images = fn.decoders.image(data, device="cpu", output_type=types.RGB)
        return fn.resize(
            images,
            resize_x=width,
            resize_y=height,
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )

    p = pipe()
    p.build()
    (out,) = p.run()
    return [np.array(out.at(i)) for i in range(len(files))]


def _diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {
        "mean_abs": round(float(d.mean()), 3),
        "max_abs": int(d.max()),
        "p99_abs": float(np.percentile(d, 99)),
        "share_over_4": round(float((d > 4).mean()), 5),
    }


def _sharpness(images: list[np.ndarray]) -> float:
    """Mean variance of the grey-level Laplacian: high-frequency energy, i.e. sharpness."""
    values = []
    for a in images:
        g = a.astype(np.float32).mean(axis=-1)
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        values.append(float(lap.var()))
    return round(statistics.fmean(values), 1)


def _summary(rows: list[dict]) -> dict:
    return {
        "mean_abs": round(statistics.fmean(r["mean_abs"] for r in rows), 3),
        "mean_abs_worst_image": max(r["mean_abs"] for r in rows),
        "max_abs": max(r["max_abs"] for r in rows),
        "p99_abs_worst_image": max(r["p99_abs"] for r in rows),
        "share_over_4": round(statistics.fmean(r["share_over_4"] for r in rows), 5),
    }


def run(paths: list[Path], size: tuple[int, int], repeat: int, patch_num: int) -> dict:
    """Per-image stage timings (best of ``repeat``, ms) and pixel differences."""
    height, width = size
    plan = train_plan(
        1, seed=0, epoch=1, patches_per_image=patch_num, patch_size=224, resize=size, window=1
    )
    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "full_decode",
            "resize",
            "full_total",
            "draft_total",
            "cut_patches",
        )
    }
    full_imgs, draft_imgs = [], []
    for path in paths:
        decoded = pillow_loader.load_rgb(path)
        stages["full_decode"].append(_best_time(lambda p=path: pillow_loader.load_rgb(p), repeat))
        stages["resize"].append(
            _best_time(
                lambda d=decoded: d.resize((width, height), Image.Resampling.BILINEAR), repeat
            )
        )
        stages["full_total"].append(
            _best_time(lambda p=path: pillow_loader.load_resized(p, size), repeat)
        )
        stages["draft_total"].append(_best_time(lambda p=path: load_resized_draft(p, size), repeat))
        full = pillow_loader.load_resized(path, size)
        stages["cut_patches"].append(
            _best_time(
                lambda f=full: pillow_loader.cut_patches(
                    f, plan.tops[0], plan.lefts[0], plan.flips[0], 224
                ),
                repeat,
            )
        )
        full_imgs.append(full)
        draft_imgs.append(load_resized_draft(path, size))

    ms = {k: round(1000 * statistics.fmean(v), 2) for k, v in stages.items()}
    result: dict = {
        "images": len(paths),
        "source_size": list(Image.open(paths[0]).size[::-1]),
        "target_size": list(size),
        "repeat": repeat,
        "ms_per_image": ms,
        "speedup_decode_resize": round(ms["full_total"] / ms["draft_total"], 2),
        "per_image_loader_work_ms": {
            "full": round(ms["full_total"] + ms["cut_patches"], 2),
            "draft": round(ms["draft_total"] + ms["cut_patches"], 2),
        },
        "draft_vs_full": _summary(
            [_diff(d, f) for d, f in zip(draft_imgs, full_imgs, strict=True)]
        ),
    }
    result["laplacian_var"] = {"full": _sharpness(full_imgs), "draft": _sharpness(draft_imgs)}
    dali = _dali_cpu_resized(paths, size)
    if dali is not None:
        result["laplacian_var"]["dali_cpu"] = _sharpness(dali)
        result["dali_cpu_vs_full"] = _summary(
            [_diff(d, f) for d, f in zip(dali, full_imgs, strict=True)]
        )
        result["dali_cpu_vs_draft"] = _summary(
            [_diff(d, f) for d, f in zip(dali, draft_imgs, strict=True)]
        )
    return result


def main(argv: list[str] | None = None) -> int:
    from hyperiqa.synthetic import write_koniq_like_jpegs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16, help="KonIQ-like 1024x768 JPEGs to test")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats per image (best kept)")
    p.add_argument("--patch_num", type=int, default=25)
    p.add_argument("--data_dir", default="/tmp/hyperiqa-bench-data")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    paths = write_koniq_like_jpegs(Path(args.data_dir), args.images)
    result = run(paths, (384, 512), args.repeat, args.patch_num)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
