"""Reading image files: what both loaders accept, and how Pillow decodes them.

``check_image`` is the gate in front of both loaders: DALI has no "skip bad
file" option (a corrupt JPEG kills its pipeline), so every image is checked
before training and a bad file is named up front. ``load_rgb`` and
``load_resized`` are the Pillow loader's decode path; DALI's decoder follows
the same rules (RGB output, EXIF orientation applied).
"""

from __future__ import annotations

import os
import signal
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Formats both loaders decode (DALI's image decoder and Pillow). Pillow calls a
# camera JPEG with a multi-picture (MPO) extension "MPO"; it is a JPEG to DALI.
USABLE_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "PPM"}
JPEG_FORMATS = {"JPEG", "MPO"}

_EXIF_ORIENTATION = 0x0112


def file_problem(path: str | Path) -> str | None:
    """None for an existing regular file, else what it is instead (never raises).

    Checked before opening: opening a FIFO would wait forever for a writer."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except (OSError, ValueError) as e:  # a loop of links, a name too long, a NUL byte
        return getattr(e, "strerror", None) or str(e)
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device)"
    return None


def check_image(path: str | Path) -> str | None:
    """None when the image is usable, else a short reason."""
    problem = file_problem(path)
    if problem:
        return problem
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning or odd EXIF should not count as a failure.
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.format not in USABLE_FORMATS:
                    return f"unsupported format {img.format}"
                deep = _deeper_than_8_bits(img, path)
                if deep:
                    # Pillow clips or truncates these on the way to 8-bit RGB, DALI
                    # scales them: the two loaders would see different pictures.
                    return f"{deep}; convert it to 8 bits per channel"
                if img.format in JPEG_FORMATS:
                    # Decoding at 1/8 scale still reads every coefficient, so a
                    # truncated or corrupt stream is caught at a fraction of the cost.
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
                if img.width < 1 or img.height < 1:
                    return "empty image"
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "is a directory"
    except OSError as e:
        if e.errno is not None and e.strerror:  # a name too long, no permission, ...
            return e.strerror
        return f"cannot decode ({type(e).__name__}: {e})"
    except Exception as e:  # Pillow raises many types for bad data; all mean "unusable"
        return f"cannot decode ({type(e).__name__}: {e})"
    return None


def _deeper_than_8_bits(img: Image.Image, path: str | Path) -> str | None:
    """What makes an image more than 8 bits per channel, or None."""
    if img.mode == "F":
        return "floating-point image (mode F)"
    if img.mode.startswith("I"):
        return f"more than 8-bit image (mode {img.mode})"
    if img.format == "TIFF" and max(img.tag_v2.get(258, (8,)) or (8,)) > 8:
        return f"{max(img.tag_v2.get(258))}-bit TIFF"
    if img.format == "PNG":
        # Pillow opens a 48/64-bit PNG as 8-bit RGB(A); its IHDR says the truth.
        with open(path, "rb") as f:
            header = f.read(25)
        if len(header) == 25 and header[24] > 8:
            return f"{header[24]}-bit-per-channel PNG"
    return None


def load_rgb(path: str | Path) -> Image.Image:
    """Decode any image Pillow reads to RGB, honouring its EXIF orientation.

    DALI's decoder also applies the EXIF orientation, so both loaders see the
    same upright picture.
    """
    with Image.open(path) as img:
        # exif_transpose and convert each copy the whole image even when there
        # is nothing to do; skipping them then gives the same pixels, faster.
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            return img.convert("RGB")
        img.load()  # the pixels must outlive the file, which closes here
        return img


def resize_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``size`` = (H, W) (Pillow's antialiased bilinear): uint8 [H, W, 3]."""
    height, width = size
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img)


def load_resized(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Decode, convert to RGB and resize the whole image to ``size`` = (H, W): uint8 [H, W, 3]."""
    return resize_rgb(load_rgb(path), size)


def ignore_interrupt(_worker_id: int = 0) -> None:
    """Worker processes (decoding, checking) leave Ctrl-C to the main process.

    A terminal's Ctrl-C reaches the whole process group. A worker that died of
    it would make the main process fail with "worker exited unexpectedly"
    instead of stopping at its next safe point; the main process shuts its
    workers down itself. SIGTERM gets its default back (a forked worker
    inherits the main process's stop handler): Python's exit handler stops
    leftover workers with it, and ignoring it would hang the exit.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
