"""argparse value types and the help formatter every command line shares.

Each type raises ``ArgumentTypeError``, which argparse turns into
"argument --flag: message" and exit code 2: a bad value is named with its flag.
Standard library only, so the light tools (the dataset preparers) use it too.
"""

from __future__ import annotations

import argparse


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A value in [0, 1): the share of images held out for validation."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def open_fraction(text: str) -> float:
    """argparse type: a float strictly between 0 and 1 (a share of the images)."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (both excluded)")
    return value


def unit_interval(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


# --device and --loader of every tool. LOADER_CHOICES is pipelines.factory.LOADERS
# plus "auto" (a test holds them together; importing the factory here would load torch).
DEVICE_CHOICES = ("auto", "cuda", "cpu")
LOADER_CHOICES = ("auto", "pillow", "dali")
MAX_SIDE = 4096  # a resized side; far above any IQA training size, and 96 such images fit memory
MAX_SEED = 2**64 - 1  # torch.manual_seed's range
# Crops per image: the paper uses 25; ten times that is already far past the point
# where more crops change a score, and every crop costs 150 KB in each batch window.
MAX_PATCHES_PER_IMAGE = 250


def patch_count(text: str) -> int:
    """Crops per image: 1 to MAX_PATCHES_PER_IMAGE (a huge count would exhaust memory)."""
    value = positive_int(text)
    if value > MAX_PATCHES_PER_IMAGE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PATCHES_PER_IMAGE}, got {value}")
    return value


def seed_type(text: str) -> int:
    value = non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most 2**64 - 1, got {text[:30]}")
    return value


def resize_type(text: str) -> tuple[int, int]:
    """``HxW``, e.g. ``384x512`` (height first)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW such as 384x512, got {text!r}")
    height, width = (int(p) for p in parts)
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    if max(height, width) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"sides must be at most {MAX_SIDE}, got {text!r}")
    return height, width


def named(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (name, value); NAME is a short word that names a set in metrics.json."""
    name, sep, value = text.partition("=")
    if not sep or not value or not name.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH such as clive=clive_test.json, got {text!r}"
        )
    return name, value


def named_type(text: str) -> str:
    named(text)
    return text


def format_resize(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class HelpFormatter(argparse.HelpFormatter):
    """--help shows a default where there is one worth reading: not for required
    flags, switches or unset values, and a size as HxW (384x512, not (384, 512))."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.required
            or default is None
            or isinstance(default, bool)  # a switch (and 0 == False: test the type)
            or default in ([], argparse.SUPPRESS)
            or "default" in text
        ):
            return text
        shown = format_resize(default) if isinstance(default, tuple) else default
        return f"{text} (default: {shown})" if text else f"default: {shown}"
