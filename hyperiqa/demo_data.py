"""Procedural IQA images: the `make demo` dataset and the benchmark's KonIQ-like JPEGs.

``train.py --demo`` writes the demo dataset with :func:`write_demo_dataset`;
the benchmark writes its JPEGs with :func:`write_koniq_like_jpegs`;
scripts/make_demo_dataset.py is the command line of both.

Nothing here needs KonIQ-10k or the network. ``natural_image`` paints a picture
with photograph-like statistics (1/f spectrum, flat and busy regions, sharp and
soft edges, KonIQ-10k-like JPEG sizes) for decode benchmarks.

The demo dataset must teach a randomly initialised ResNet-50 within ~1,000
training patches on 2 CPU cores. So its content is ``noise_scene`` (1/f texture
everywhere: every crop shows how sharp and clean the image is), its distortions
are strong blur and noise (level 1 is plainly bad at a glance), and its score is
linear in the level. JPEG compression is not among them: at this budget the
network did not learn it (SRCC ~0 on JPEG copies).
Same seed, same bytes on one machine (numpy's ``Generator`` streams and
Pillow's encoder are deterministic; FFT rounding could differ across machines).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from PIL import Image, ImageFilter

from hyperiqa.atomic import write_bytes_atomic

DISTORTION_KINDS: tuple[str, ...] = ("blur", "noise")  # no JPEG: see the module docstring
DEMO_JSON_NAME = "demo.json"
PRISTINE = "none"  # the "distortion" label of undistorted copies
MIN_SIDE = 8  # the smallest image the painter accepts

# 144 images = 96 train + 48 val at --demo's val_split; 256x320 is --demo's
# --resize, so no resampling weakens the distortions before the network sees them.
DEMO_NUM_IMAGES = 144
DEMO_SIZE = (256, 320)
KONIQ_SIZE = (768, 1024)

# Each base image appears once per level; level 0 is the pristine reference.
DEMO_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
# Score model: linear in the level on a KonIQ-like 0-100 scale, plus a little
# rater-like noise so the task is not trivially exact.
SCORE_TOP, SCORE_SPAN, SCORE_NOISE_SD = 85.0, 70.0, 2.0
DEMO_JPEG_QUALITY = 95  # the files' own encoding must not hide the distortions

# Strength at level 1: plainly bad, still recognisable (as in LIVE or TID2013).
MAX_BLUR_SIGMA = 4.0  # Gaussian blur, pixels
MAX_NOISE_SD = 40.0  # additive noise, grey levels


# -- Image synthesis -------------------------------------------------------------


def _power_law_noise(rng: np.random.Generator, height: int, width: int, alpha: float) -> np.ndarray:
    """Gaussian field with amplitude spectrum ~ 1/f**alpha and unit std.

    Natural images have alpha close to 1; shaping white noise in the Fourier
    domain gets that spectrum exactly for the price of two real FFTs.
    """
    white = rng.standard_normal((height, width), dtype=np.float32)
    spec = sfft.rfft2(white)
    fy = sfft.fftfreq(height).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(width).astype(np.float32)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    radius[0, 0] = 1.0  # avoids 0**-alpha; the DC term is zeroed next
    spec *= radius ** np.float32(-alpha)
    spec[0, 0] = 0.0
    field = sfft.irfft2(spec, s=(height, width)).astype(np.float32, copy=False)
    return field / np.float32(float(field.std()) + 1e-8)


def _upsample(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 field (Pillow's mode "F" is fast and exact enough)."""
    img = Image.fromarray(field.astype(np.float32, copy=False))
    return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32)


def _add_chroma(rng: np.random.Generator, canvas: np.ndarray, low: float, high: float) -> None:
    """Add two opponent-colour 1/f fields, painted at quarter resolution, in place.

    Colour in photographs carries far less fine detail than luminance; the
    amplitude (grey levels) is drawn from [low, high].
    """
    h, w = canvas.shape[:2]
    hc, wc = max(h // 4, MIN_SIDE), max(w // 4, MIN_SIDE)
    rg = _upsample(_power_law_noise(rng, hc, wc, 1.2), h, w)
    by = _upsample(_power_law_noise(rng, hc, wc, 1.2), h, w)
    chroma = np.float32(rng.uniform(low, high))
    canvas[..., 0] += chroma * rg
    canvas[..., 1] -= chroma * (0.5 * rg - 0.5 * by)
    canvas[..., 2] -= chroma * (0.5 * rg + 0.5 * by)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A plausible surface colour: mostly muted, occasionally saturated."""
    grey = rng.uniform(25.0, 230.0)
    saturation = rng.uniform(0.0, 0.35) if rng.random() < 0.8 else rng.uniform(0.35, 0.8)
    hue = rng.standard_normal(3)
    hue -= hue.mean()
    hue /= np.abs(hue).max() + 1e-8
    return np.clip(grey + saturation * grey * hue, 0.0, 255.0).astype(np.float32)


def _texture_gain(rng: np.random.Generator) -> float:
    """Texture amplitude of a region: many smooth ones, some very busy ones."""
    return float(rng.choice([0.3, 0.7, 1.0, 1.5, 2.2], p=[0.2, 0.25, 0.25, 0.2, 0.1]))


def _shape_alpha(rng: np.random.Generator, height: int, width: int) -> tuple:
    """Coverage of one random soft ellipse or rotated box, within its bounding box.

    Returns ``(alpha, (y0, y1, x0, x1), u, v, radius)``, or None when the shape
    misses the canvas. Sizes are log-uniform (many small objects, few large),
    edges sharp (in focus) or soft (shadows, background).
    """
    scale = min(height, width)
    ry = float(np.exp(rng.uniform(np.log(0.02), np.log(0.35)))) * scale
    rx = ry * rng.uniform(0.4, 2.5)
    cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
    theta = rng.uniform(0.0, np.pi)
    edge = rng.uniform(0.6, 1.5) if rng.random() < 0.6 else rng.uniform(4.0, 0.25 * ry + 4.0)
    is_box = rng.random() < 0.45
    reach = max(rx, ry) + 2.0 * edge
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u, v = c * xx + s * yy, -s * xx + c * yy
    if is_box:  # signed distance to the nearest side, positive inside
        inside = np.minimum(rx - np.abs(u), ry - np.abs(v))
    else:  # approximate signed distance to an ellipse
        inside = (1.0 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2)) * min(rx, ry)
    alpha = np.clip(inside / np.float32(edge) + 0.5, 0.0, 1.0)
    alpha *= np.float32(rng.uniform(0.75, 1.0))  # some shapes are translucent
    return (alpha, (y0, y1, x0, x1), u, v, max(rx, ry)) if alpha.any() else None


def _paint_shape(rng: np.random.Generator, canvas: np.ndarray, gain: np.ndarray) -> None:
    """Composite one shaded shape into ``canvas`` and its texture strength into ``gain``.

    Real scenes mix flat regions (sky, walls) with busy ones (foliage, fabric);
    that mix spreads JPEG sizes and gives blur something to destroy.
    """
    found = _shape_alpha(rng, *gain.shape)
    if found is None:
        return
    alpha, (y0, y1, x0, x1), u, v, radius = found
    colour = _random_colour(rng)
    shade_dir = rng.standard_normal(2).astype(np.float32)
    shade_dir /= np.linalg.norm(shade_dir) + 1e-8  # light falls across the shape
    ramp = (shade_dir[0] * u + shade_dir[1] * v) / np.float32(radius)
    fill = colour + (np.float32(rng.uniform(0.0, 40.0)) * ramp)[..., None]
    region = canvas[y0:y1, x0:x1]
    region += alpha[..., None] * (fill - region)
    g = gain[y0:y1, x0:x1]
    g += alpha * (np.float32(_texture_gain(rng)) - g)


def natural_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Paint a random RGB image with photograph-like statistics.

    Back to front: a two-tone background with a soft, tilted horizon; 10-23
    shaded shapes; 1/f luminance texture whose strength varies by region;
    quarter-resolution 1/f chroma (photographs carry little fine colour
    detail); faint sensor grain. At 1024x768 and JPEG quality 90 that is
    about 200-400 KB, like KonIQ-10k.
    """
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"natural_image needs at least 8x8 pixels, got {height}x{width}")
    h, w = int(height), int(width)
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
        _paint_shape(rng, canvas, gain)

    # Fine detail is what JPEG pays for and blur removes: the main size knob.
    texture = _power_law_noise(rng, h, w, rng.uniform(0.95, 1.15))
    canvas += (np.float32(rng.uniform(20.0, 30.0)) * gain * texture)[..., None]
    _add_chroma(rng, canvas, 3.0, 8.0)
    canvas += np.float32(rng.uniform(0.5, 2.0)) * rng.standard_normal((h, w, 1), dtype=np.float32)
    return Image.fromarray(np.clip(canvas + 0.5, 0.0, 255.0).astype(np.uint8))


def noise_scene(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A 1/f-noise picture: the same texture statistics everywhere in the frame.

    Unlike ``natural_image`` there are no flat regions, so any 224-pixel crop
    shows how sharp and how clean the whole image is: the cue a random-init
    network can pick up in a few hundred steps.
    """
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"noise_scene needs at least 8x8 pixels, got {height}x{width}")
    h, w = int(height), int(width)
    lum = _power_law_noise(rng, h, w, rng.uniform(0.95, 1.1))
    canvas = np.empty((h, w, 3), np.float32)
    canvas[...] = (
        np.float32(rng.uniform(90.0, 165.0)) + np.float32(rng.uniform(35.0, 45.0)) * lum
    )[..., None]
    _add_chroma(rng, canvas, 10.0, 25.0)
    return Image.fromarray(np.clip(canvas + 0.5, 0.0, 255.0).astype(np.uint8))


# -- Distortions -----------------------------------------------------------------


def distort(img: Image.Image, kind: str, level: float, rng: np.random.Generator) -> Image.Image:
    """Apply distortion ``kind`` at strength ``level`` in [0, 1]; level 0 returns a copy.

    blur: Gaussian, sigma ``MAX_BLUR_SIGMA * level``; noise: additive white
    Gaussian, std ``MAX_NOISE_SD * level`` (drawn from ``rng``). Strength
    grows with the level.
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
        return img.filter(ImageFilter.GaussianBlur(radius=MAX_BLUR_SIGMA * level))
    arr = np.asarray(img, dtype=np.float32)  # noise
    arr = arr + np.float32(MAX_NOISE_SD * level) * rng.standard_normal(arr.shape, np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0.0, 255.0).astype(np.uint8))


# -- Files -----------------------------------------------------------------------


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    """Baseline 4:2:0 JPEG: what cameras and KonIQ use, and nvJPEG's hardware decodes."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling=2)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    """Atomically (a reader never sees half a file), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def demo_plan(num_images: int) -> list[tuple[int, str, float]]:
    """``(base index, kind, level)`` of each demo image, in file order.

    Each base image yields one copy per level, so the network sees the same
    content at every quality and must learn the distortion, not the scene.
    Kinds rotate with the base, so every kind meets every level; a partial last
    group lets any ``num_images`` work.
    """
    plan = []
    for i in range(num_images):
        base, j = divmod(i, len(DEMO_LEVELS))
        level = DEMO_LEVELS[j]
        kind = DISTORTION_KINDS[(base + j) % len(DISTORTION_KINDS)] if level > 0 else PRISTINE
        plan.append((base, kind, level))
    return plan


def demo_file_name(index: int, base: int, kind: str, level: float) -> str:
    """``0004_b000_blur_l100.jpg``: the image's place, its base image, distortion and level."""
    return f"{index:04d}_b{base:03d}_{kind}_l{round(level * 100):03d}.jpg"


def demo_score(level: float, rng: np.random.Generator) -> float:
    """Linear in the level, plus a little rater noise, clipped to [0, 100]."""
    score = SCORE_TOP - SCORE_SPAN * level + SCORE_NOISE_SD * rng.standard_normal()
    return round(float(np.clip(score, 0.0, 100.0)), 4)


def write_demo_dataset(
    root: Path,
    num_images: int = DEMO_NUM_IMAGES,
    height: int = DEMO_SIZE[0],
    width: int = DEMO_SIZE[1],
    seed: int = 0,
) -> Path:
    """Write the demo IQA dataset under ``root``; returns the path of its JSON.

    Files: ``root/images/NNNN_bBBB_<kind>_lLLL.jpg`` (RGB, ``height`` x
    ``width``) and ``root/demo.json``, a list of ``{"image", "score", "base",
    "distortion", "level"}`` (the loader reads the first two). The JSON is
    written last and atomically, so its presence means the dataset is complete.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"image size must be at least 8x8, got {height}x{width}")
    root = Path(root)
    foreign = foreign_files(root / "images")
    if foreign:  # a user's own dataset: the demo must not write into it
        raise FileExistsError(
            f"{root / 'images'} holds files the demo did not write ({foreign[0].name}, ...); "
            "choose an empty or new folder"
        )
    json_path = root / DEMO_JSON_NAME
    json_path.unlink(missing_ok=True)  # a stale JSON must not vouch for new files
    # Independent streams per purpose and per image: changing the score noise
    # never changes pixels, and image k depends only on its own seeds.
    base_seq, dist_seq, score_seq = np.random.SeedSequence(seed).spawn(3)
    plan = demo_plan(num_images)
    base_seeds = base_seq.spawn(plan[-1][0] + 1)
    dist_seeds = dist_seq.spawn(num_images)
    score_rng = np.random.default_rng(score_seq)
    entries = []
    for i, (base, kind, level) in enumerate(plan):
        if level == 0.0:  # the plan starts each base image with its pristine copy
            base_img = noise_scene(np.random.default_rng(base_seeds[base]), height, width)
        img = base_img
        if kind != PRISTINE:
            img = distort(base_img, kind, level, np.random.default_rng(dist_seeds[i]))
        name = f"images/{demo_file_name(i, base, kind, level)}"
        _write_file(root / name, jpeg_bytes(img, DEMO_JPEG_QUALITY))
        score = demo_score(level, score_rng)
        entries.append(dict(image=name, score=score, base=base, distortion=kind, level=level))
    _write_file(json_path, (json.dumps(entries, indent=1) + "\n").encode("utf-8"))
    return json_path


# A demo image (0000_b000_none_l000.jpg), or a temp file left by an interrupted write.
DEMO_FILE = re.compile(r"\d{4,}_b\d{3,}_[a-z]+_l\d{3}\.jpg|\..+\.tmp")


def foreign_files(folder: Path) -> list[Path]:
    """Files in ``folder`` that an earlier (perhaps interrupted) demo did not write."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not DEMO_FILE.fullmatch(p.name))


def write_koniq_like_jpegs(
    root: Path,
    count: int,
    seed: int = 0,
    height: int = KONIQ_SIZE[0],
    width: int = KONIQ_SIZE[1],
    quality: int = 90,
) -> list[Path]:
    """Write ``count`` KonIQ-10k-like JPEGs (1024x768, ~200-400 KB) for benchmarks.

    Names encode every parameter, so a file already there is the same image and
    is reused rather than regenerated: re-running a benchmark stays cheap.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(count)
    paths = []
    for i in range(count):
        path = root / f"koniq_like_s{seed}_{height}x{width}_q{quality}_{i:05d}.jpg"
        if not path.is_file() or path.stat().st_size == 0:
            img = natural_image(np.random.default_rng(seeds[i]), height, width)
            _write_file(path, jpeg_bytes(img, quality))
        paths.append(path)
    return paths
