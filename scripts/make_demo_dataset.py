"""Procedural images and datasets for the demo, the tests and the benchmark.

    python scripts/make_demo_dataset.py --out ../datasets/demo --num_images 96 \
        --size 384x512 --seed 0
    python scripts/make_demo_dataset.py --koniq_like --out DIR --num_images 32

The first writes a small IQA dataset (``<out>/images/*.jpg`` and
``<out>/demo.json``; train on it with ``--dataset_root <out>``); the second,
KonIQ-like 1024x768 JPEGs for ``bench/throughput.py``.


Nothing here needs KonIQ-10k or the network. ``natural_image`` paints an RGB
picture whose statistics resemble a photograph closely enough for the things
we measure with it: a roughly 1/f amplitude spectrum, smooth and textured
regions, soft and sharp edges, and JPEG sizes in KonIQ-10k's range (so decode
throughput numbers mean something). ``write_demo_dataset`` turns such images
into a tiny IQA dataset whose scores fall with distortion strength, which a
model can actually learn in a few epochs; ``write_koniq_like_jpegs`` writes the
benchmark's input files.

Everything is deterministic from a seed: numpy's ``Generator`` streams are
reproducible and Pillow's JPEG encoder is deterministic for fixed settings, so
on one machine the same seed gives the same bytes. (Across machines, FFT or
SIMD rounding could in principle flip a few pixels by one grey level.)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from PIL import Image, ImageFilter

from hyperiqa.arg_types import non_negative_int, positive_int, resize_type
from hyperiqa.atomic import write_bytes_atomic

__all__ = [
    "DEMO_JSON_NAME",
    "DISTORTION_KINDS",
    "distort",
    "natural_image",
    "write_demo_dataset",
    "write_koniq_like_jpegs",
]

DISTORTION_KINDS: tuple[str, ...] = ("blur", "noise", "jpeg")
DEMO_JSON_NAME = "demo.json"

# Demo dataset layout: each base image appears once per level, each copy hit by
# one distortion kind. Levels are spread over [0, 1] so the score range is
# covered evenly; level 0 (pristine) is included so the top of the scale exists.
_DEMO_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
# Score model: linear in the distortion level on KonIQ's MOS_zscore-like 0-100
# scale, plus a little rater-like noise so the task is not trivially exact.
_SCORE_TOP = 85.0
_SCORE_SPAN = 70.0
_SCORE_NOISE_SD = 2.0
_DEMO_QUALITY = 92
_PRISTINE = "none"  # "distortion" label of the undistorted level-0 copies


# --------------------------------------------------------------------------- #
# Image synthesis
# --------------------------------------------------------------------------- #


def _power_law_noise(rng: np.random.Generator, height: int, width: int, alpha: float) -> np.ndarray:
    """Gaussian noise field with amplitude spectrum ~ 1/f**alpha, unit std.

    Natural images have alpha close to 1. Filtering white noise in the Fourier
    domain is the cheapest way to get that spectrum exactly (two real FFTs).
    """
    white = rng.standard_normal((height, width), dtype=np.float32)
    spec = sfft.rfft2(white)
    fy = sfft.fftfreq(height).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(width).astype(np.float32)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    radius[0, 0] = 1.0  # avoid 0**-alpha; the DC term is zeroed just below
    spec *= radius ** np.float32(-alpha)
    spec[0, 0] = 0.0
    field = sfft.irfft2(spec, s=(height, width)).astype(np.float32, copy=False)
    field /= float(field.std()) + 1e-8
    return field


def _upsample(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 field (Pillow's "F" mode is fast and exact enough)."""
    if field.shape == (height, width):
        return field
    img = Image.fromarray(field.astype(np.float32, copy=False))  # float32 -> mode "F"
    return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A plausible surface colour: mostly muted, occasionally saturated."""
    grey = rng.uniform(25.0, 230.0)
    saturation = rng.uniform(0.0, 0.35) if rng.random() < 0.8 else rng.uniform(0.35, 0.8)
    hue = rng.standard_normal(3)
    hue -= hue.mean()
    hue /= np.abs(hue).max() + 1e-8
    return np.clip(grey + saturation * grey * hue, 0.0, 255.0).astype(np.float32)


def _paint_shape(
    rng: np.random.Generator,
    canvas: np.ndarray,
    gain: np.ndarray,
    height: int,
    width: int,
) -> None:
    """Alpha-composite one random soft ellipse or rotated rectangle in place.

    Work is confined to the shape's bounding box, so many shapes stay cheap.
    Each shape also carries its own texture strength into ``gain``: real scenes
    mix flat regions (sky, walls) with busy ones (foliage, fabric), and that mix
    is what spreads JPEG sizes and gives blur something to destroy.
    """
    scale = min(height, width)
    # Log-uniform size: many small objects, few large ones, as in real scenes.
    ry = float(np.exp(rng.uniform(np.log(0.02), np.log(0.35)))) * scale
    rx = ry * rng.uniform(0.4, 2.5)
    cy = rng.uniform(-0.1, 1.1) * height
    cx = rng.uniform(-0.1, 1.1) * width
    theta = rng.uniform(0.0, np.pi)
    # Sharp (about one pixel, like an object boundary in focus) or soft (shadow,
    # out-of-focus background).
    edge = rng.uniform(0.6, 1.5) if rng.random() < 0.6 else rng.uniform(4.0, 0.25 * ry + 4.0)
    is_box = rng.random() < 0.45

    reach = max(rx, ry) + 2.0 * edge
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = c * xx + s * yy
    v = -s * xx + c * yy
    if is_box:
        # Signed distance (in pixels) to the nearest side, positive inside.
        inside = np.minimum(rx - np.abs(u), ry - np.abs(v))
    else:
        # Approximate signed distance for an ellipse: radial deficit times the
        # smaller radius; good enough to control the edge width.
        inside = (1.0 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2)) * min(rx, ry)
    alpha = np.clip(inside / np.float32(edge) + 0.5, 0.0, 1.0)
    alpha *= np.float32(rng.uniform(0.75, 1.0))  # some shapes are translucent
    if not alpha.any():
        return

    # Shading: a linear colour ramp across the shape, like light falling on it.
    colour = _random_colour(rng)
    shade_dir = rng.standard_normal(2).astype(np.float32)
    shade_dir /= np.linalg.norm(shade_dir) + 1e-8
    ramp = (shade_dir[0] * u + shade_dir[1] * v) / np.float32(max(rx, ry))
    shade = np.float32(rng.uniform(0.0, 40.0)) * ramp
    fill = colour[None, None, :] + shade[..., None]

    a3 = alpha[..., None]
    region = canvas[y0:y1, x0:x1]
    region += a3 * (fill - region)
    g = gain[y0:y1, x0:x1]
    g += alpha * (np.float32(_texture_gain(rng)) - g)


def _texture_gain(rng: np.random.Generator) -> float:
    """Texture amplitude for a region: many smooth ones, some very busy ones."""
    return float(rng.choice([0.3, 0.7, 1.0, 1.5, 2.2], p=[0.2, 0.25, 0.25, 0.2, 0.1]))


def natural_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Paint a random RGB image with photograph-like statistics.

    Layers, back to front: a two-tone background with a soft horizon, 10-23
    composited soft/sharp shapes with shading, then 1/f luminance texture whose
    strength varies by region, low-resolution 1/f chroma variation (colour in
    photographs carries far less fine detail than luminance), and faint sensor
    grain. At 1024x768, JPEG quality 90 gives roughly 200-400 KB, like KonIQ-10k.
    """
    if height < 8 or width < 8:
        raise ValueError(f"natural_image needs at least 8x8 pixels, got {height}x{width}")
    h, w = int(height), int(width)

    # Background: sky-like top colour blending into a ground-like bottom colour
    # along a tilted, soft horizon.
    top, bottom = _random_colour(rng), _random_colour(rng)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    horizon = rng.uniform(0.3, 0.7) + rng.uniform(-0.2, 0.2) * xx
    blend = np.clip((yy - horizon) / np.float32(rng.uniform(0.02, 0.3)) + 0.5, 0.0, 1.0)
    canvas = top[None, None, :] + blend[..., None] * (bottom - top)[None, None, :]
    canvas = np.ascontiguousarray(canvas, dtype=np.float32)
    gain = np.full((h, w), _texture_gain(rng), dtype=np.float32)
    gain += blend * (np.float32(_texture_gain(rng)) - gain)

    for _ in range(int(rng.integers(10, 24))):
        _paint_shape(rng, canvas, gain, h, w)

    # Luminance texture. Fine detail is what JPEG pays for, so its amplitude is
    # the main knob for file size; the spectral slope keeps it photograph-like.
    alpha = rng.uniform(0.95, 1.15)
    texture = _power_law_noise(rng, h, w, alpha)
    amplitude = np.float32(rng.uniform(20.0, 30.0))
    canvas += (amplitude * gain * texture)[..., None]

    # Chroma: two opponent-colour fields at quarter resolution, upsampled.
    hc, wc = max(h // 4, 8), max(w // 4, 8)
    rg = _upsample(_power_law_noise(rng, hc, wc, 1.2), h, w)
    by = _upsample(_power_law_noise(rng, hc, wc, 1.2), h, w)
    chroma_amp = np.float32(rng.uniform(3.0, 8.0))
    canvas[..., 0] += chroma_amp * rg
    canvas[..., 1] -= chroma_amp * (0.5 * rg - 0.5 * by)
    canvas[..., 2] -= chroma_amp * (0.5 * rg + 0.5 * by)

    # Sensor grain: weak, luminance-only. Present in every real photograph.
    canvas += np.float32(rng.uniform(0.5, 2.0)) * rng.standard_normal((h, w, 1), dtype=np.float32)

    return Image.fromarray(np.clip(canvas + 0.5, 0.0, 255.0).astype(np.uint8))


# --------------------------------------------------------------------------- #
# Distortions
# --------------------------------------------------------------------------- #

# Strength at level 1 for each kind. Chosen so level 1 is clearly bad but the
# image is still recognisable, as in the synthetic IQA databases (LIVE, TID).
_MAX_BLUR_SIGMA = 6.0
_MAX_NOISE_SD = 40.0
_JPEG_QUALITY_AT_0 = 95  # barely lossy; level 0 itself is returned untouched
_JPEG_QUALITY_AT_1 = 3


def distort(img: Image.Image, kind: str, level: float, rng: np.random.Generator) -> Image.Image:
    """Apply one distortion of strength ``level`` in [0, 1]; 0 returns a copy.

    ``blur``: Gaussian blur, sigma up to 6 px. ``noise``: additive white
    Gaussian noise, std up to 40 grey levels (drawn from ``rng``, so the result
    is reproducible). ``jpeg``: re-encode at a quality falling from 95 to 3
    (quadratically in ``level``).
    Strength grows monotonically with ``level`` for every kind.
    """
    if kind not in DISTORTION_KINDS:
        raise ValueError(f"unknown distortion kind {kind!r}; expected one of {DISTORTION_KINDS}")
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"distortion level must be in [0, 1], got {level}")
    img = img.convert("RGB")
    if level == 0.0:
        return img.copy()

    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=_MAX_BLUR_SIGMA * level))
    if kind == "noise":
        arr = np.asarray(img, dtype=np.float32)
        noise = rng.standard_normal(arr.shape, dtype=np.float32)
        arr = arr + np.float32(_MAX_NOISE_SD * level) * noise
        return Image.fromarray(np.clip(arr + 0.5, 0.0, 255.0).astype(np.uint8))
    # jpeg: visible damage grows slowly from quality 95 down to ~60 and fast
    # below ~30, so quality falls quadratically to spread the perceived
    # strength evenly over the level (0.25 -> 55, 0.5 -> 26, 0.75 -> 9).
    # Rounding keeps it monotone (non-increasing) in level.
    span = _JPEG_QUALITY_AT_0 - _JPEG_QUALITY_AT_1
    quality = round(_JPEG_QUALITY_AT_1 + span * (1.0 - level) ** 2)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    # Baseline (non-progressive), 4:2:0: what cameras and KonIQ's files use and
    # what nvJPEG's hardware decoder accepts.
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling=2)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    """Atomically (a reader never sees a half-written file), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def _demo_plan(num_images: int) -> list[tuple[int, str, float]]:
    """(base index, kind, level) for each demo image, in file order.

    Each base image yields one copy per level; kinds rotate so every kind sees
    every level and every base image sees several kinds. A partial final base
    group is allowed so any ``num_images`` works.
    """
    plan: list[tuple[int, str, float]] = []
    per_base = len(_DEMO_LEVELS)
    for i in range(num_images):
        base, j = divmod(i, per_base)
        level = _DEMO_LEVELS[j]
        # Level 0 is the undistorted reference, labelled as such; the other
        # levels rotate through the kinds with the base index, so over any
        # three consecutive bases every (kind, level) pair occurs.
        kind = DISTORTION_KINDS[(base + j) % len(DISTORTION_KINDS)] if level > 0.0 else _PRISTINE
        plan.append((base, kind, level))
    return plan


def write_demo_dataset(
    root: Path,
    num_images: int = 96,
    height: int = 384,
    width: int = 512,
    seed: int = 0,
) -> Path:
    """Write a small learnable IQA dataset under ``root`` and return its JSON path.

    Files: ``root/images/NNNN_bBBB_<kind>_lLLL.jpg`` (RGB, ``height`` x
    ``width``, JPEG quality 92) and ``root/demo.json``, a list of
    ``{"image": "images/...", "score": float, "base", "distortion", "level"}``
    (extra keys are ignored by the loader). Each base image appears at levels
    0, 0.25, 0.5, 0.75 and 1 (level 0 undistorted, kind ``"none"``; the others
    blur, noise or jpeg in rotation). Scores are
    ``85 - 70 * level + N(0, 2)`` clipped to [0, 100], so they fall
    monotonically with distortion strength. The JSON is written last and
    atomically: its presence means the dataset is complete. Same seed, same
    bytes (on one machine; see the module docstring).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if height < 8 or width < 8:
        raise ValueError(f"image size must be at least 8x8, got {height}x{width}")
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    json_path = root / DEMO_JSON_NAME
    # A stale JSON from an earlier run must not vouch for files being rewritten.
    json_path.unlink(missing_ok=True)

    # Independent streams per purpose (and per image) so e.g. changing the score
    # noise never changes pixels, and image k does not depend on earlier images'
    # random draws beyond its base.
    seq = np.random.SeedSequence(seed)
    base_seq, dist_seq, score_seq = seq.spawn(3)
    plan = _demo_plan(num_images)
    num_bases = plan[-1][0] + 1
    base_seeds = base_seq.spawn(num_bases)
    dist_seeds = dist_seq.spawn(num_images)
    score_rng = np.random.default_rng(score_seq)

    entries: list[dict[str, object]] = []
    base_img = Image.new("RGB", (width, height))  # replaced at the first entry
    for i, (base, kind, level) in enumerate(plan):
        if i == 0 or base != plan[i - 1][0]:  # the plan lists each base's copies together
            base_img = natural_image(np.random.default_rng(base_seeds[base]), height, width)
        if kind == _PRISTINE:
            img = base_img
        else:
            img = distort(base_img, kind, level, np.random.default_rng(dist_seeds[i]))
        name = f"{i:04d}_b{base:03d}_{kind}_l{round(level * 100):03d}.jpg"
        _write_file(image_dir / name, _jpeg_bytes(img, _DEMO_QUALITY))
        score = _SCORE_TOP - _SCORE_SPAN * level + _SCORE_NOISE_SD * score_rng.standard_normal()
        entries.append(
            {
                "image": f"images/{name}",
                "score": round(float(np.clip(score, 0.0, 100.0)), 4),
                "base": base,
                "distortion": kind,
                "level": level,
            }
        )

    text = json.dumps(entries, indent=1) + "\n"
    _write_file(json_path, text.encode("utf-8"))
    return json_path


def write_koniq_like_jpegs(
    root: Path,
    count: int,
    seed: int = 0,
    height: int = 768,
    width: int = 1024,
    quality: int = 90,
) -> list[Path]:
    """Write ``count`` KonIQ-10k-like JPEGs (1024x768, ~200-400 KB) for benchmarks.

    Names encode every parameter (``koniq_like_s{seed}_{h}x{w}_q{q}_{i:05d}.jpg``),
    so a file already present with that name is the same image and is reused
    instead of regenerated (the benchmark can be re-run cheaply). Files are
    written atomically, so a present file is a complete one.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(count)
    paths: list[Path] = []
    for i in range(count):
        path = root / f"koniq_like_s{seed}_{height}x{width}_q{quality}_{i:05d}.jpg"
        if not path.is_file() or path.stat().st_size == 0:
            img = natural_image(np.random.default_rng(seeds[i]), height, width)
            _write_file(path, _jpeg_bytes(img, quality))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- #
# Command line

MIN_SIDE = 8  # the generator's smallest image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a small synthetic IQA dataset whose scores fall with distortion strength."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("../datasets/demo"),
        help="output folder (gets images/ and demo.json); default: %(default)s",
    )
    parser.add_argument(
        "--num_images",
        type=positive_int,
        default=96,
        help="number of images (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=resize_type,
        default=(384, 512),
        metavar="HxW",
        help="image height x width in pixels (default: 384x512)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--koniq_like",
        action="store_true",
        help="write the benchmark's KonIQ-like JPEGs (no metadata) instead of the demo dataset",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.size) < MIN_SIDE:
        parser.error(f"argument --size: height and width must be at least {MIN_SIDE}")
    height, width = args.size
    start = time.perf_counter()
    try:
        if args.koniq_like:
            paths = write_koniq_like_jpegs(
                args.out, args.num_images, seed=args.seed, height=height, width=width
            )
            print(f"{len(paths)} KonIQ-like JPEGs ({height}x{width}) in {args.out}")
            return 0
        json_path = write_demo_dataset(
            args.out, num_images=args.num_images, height=height, width=width, seed=args.seed
        )
    except OSError as err:
        print(f"error: cannot write the demo dataset to {args.out}: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.num_images} images ({height}x{width}) to {json_path.parent / 'images'} "
        f"and metadata to {json_path} in {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
