"""Scoring images with a checkpoint: evaluate.py, predict.py and the ``Scorer`` API.

A checkpoint is scored as its run was validated: when the run's ``args.json``
sits beside the checkpoint, its resize and crop count are the defaults (and,
for the run's own val_images.json, its dataset root). How an image becomes a
score is in hyperiqa/scoring.py, shared with training.
"""

from __future__ import annotations

import argparse
import io
import json
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from hyperiqa.arg_types import (
    DEVICE_CHOICES,
    MAX_PATCHES_PER_IMAGE,
    MAX_SIDE,
    format_resize,
    patch_count,
    resize_type,
)
from hyperiqa.check_data import find_problems, problems_message
from hyperiqa.errors import JSON_ERRORS, UserError, json_problem
from hyperiqa.inputs import Entry
from hyperiqa.model import PATCH_SIZE, HyperNet, ModelLoadError, load_hypernet
from hyperiqa.runtime import Runtime, resolve_runtime
from hyperiqa.scoring import check_finite, per_image_mean, predict_patches
from hyperiqa.streaming import EVAL_WINDOW, ChunkScorer, ImageChecks, chunk_size, stream_rows
from pipelines.factory import make_loader
from pipelines.images import check_image, load_rgb, resize_rgb
from pipelines.loader import normalize_uint8
from pipelines.patches import DEFAULT_PATCHES_PER_IMAGE, DEFAULT_RESIZE, EVAL_SEED, eval_plan
from pipelines.pillow import cut_patches


def load_checkpoint(path: str | Path, rt: Runtime) -> HyperNet:
    """A HyperNet with the weights of ``path`` (best_model.pkl, koniq_pretrained.pkl), in eval mode."""
    try:
        model = load_hypernet(str(path))
    except ModelLoadError as e:
        raise UserError(str(e)) from None
    return rt.prepare_model(model).eval()


RUN_ARGS = "args.json"  # a run's flags, beside its best_model.pkl (hyperiqa/run_folder.py)


def crop_settings(
    checkpoint: str | Path,
    resize: tuple[int, int] | None = None,
    patch_num: int | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[tuple[int, int], int]:
    """(resize, patch_num) to score with: the ones asked for, else those of the
    run whose args.json sits beside the checkpoint, else the defaults. A value
    asked for that differs from the run's is said, not silently used; so is an
    args.json value that cannot be used (each passes the checks of its flag)."""
    path = Path(checkpoint).parent / RUN_ARGS
    args = read_run_args(path, echo)
    run_resize = _run_value(args, "resize", _crop_size, path, echo)
    run_patches = _run_value(args, "val_patch_num", patch_count, path, echo)
    for name, asked, trained in [
        ("resize", resize, run_resize),
        ("patch_num", patch_num, run_patches),
    ]:
        if asked is not None and trained is not None and asked != trained:
            shown = format_resize if name == "resize" else str
            echo(
                f"note: --{name} {shown(asked)} differs from the {shown(trained)} the run "
                f"was validated with (args.json beside the checkpoint)"
            )
    resize = resize or run_resize or DEFAULT_RESIZE
    patch_num = patch_num or run_patches or DEFAULT_PATCHES_PER_IMAGE
    if (resize, patch_num) == (run_resize, run_patches):
        echo(f"crops: {patch_num} per image at {format_resize(resize)}, as the run validated")
    return resize, patch_num


def run_dataset_root(checkpoint: str | Path, test_json: str | Path) -> str | None:
    """The run's --dataset_root when ``test_json`` is that run's own val_images.json
    (its image names are relative to it), else None."""
    folder = Path(checkpoint).parent
    own = folder / "val_images.json"
    if not (own.is_file() and Path(test_json).is_file() and os.path.samefile(own, test_json)):
        return None
    root = read_run_args(folder / RUN_ARGS, echo=lambda _line: None).get("dataset_root")
    return root if isinstance(root, str) and root else None


def read_run_args(path: Path, echo: Callable[[str], None]) -> dict:
    """A run's args.json; {} when absent or unusable (which is said)."""
    if not path.is_file():
        return {}  # no run beside the checkpoint: the defaults
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        echo(f"note: ignoring {path}: {e.strerror or e}")
        return {}
    except JSON_ERRORS as e:  # bad JSON or bad UTF-8 (a ValueError too)
        echo(f"note: ignoring {path}: {json_problem(e)}")
        return {}
    if not isinstance(args, dict):
        echo(f"note: ignoring {path}: not a run's args.json")
        return {}
    return args


def _run_value(
    args: dict, key: str, parse: Callable[[str], object], path: Path, echo: Callable[[str], None]
) -> object | None:
    """``args[key]`` checked by its flag's own type (a run's file is input like a
    flag); None when absent or refused (which is said)."""
    value = args.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("not a flag's value")
        return parse(str(value))
    except (ValueError, argparse.ArgumentTypeError) as e:
        echo(f"note: ignoring the {key} {value!r} of {path}: {e}")
        return None


def _crop_size(text: str) -> tuple[int, int]:
    """--resize's check, and room for the crops."""
    size = resize_type(text)
    if min(size) < PATCH_SIZE:
        raise argparse.ArgumentTypeError(f"smaller than the {PATCH_SIZE}-pixel crops")
    return size


def score_images(
    model: torch.nn.Module,
    paths: Sequence[Path],
    rt: Runtime,
    *,
    resize: tuple[int, int] = DEFAULT_RESIZE,
    patch_num: int = DEFAULT_PATCHES_PER_IMAGE,
    patch_size: int = PATCH_SIZE,
    seed: int = EVAL_SEED,
    progress: bool = False,
) -> np.ndarray:
    """One score per image file: the mean prediction over ``patch_num`` fixed crops."""
    plan = eval_plan(
        len(paths),
        seed=seed,
        patches_per_image=patch_num,
        patch_size=patch_size,
        resize=resize,
        window=EVAL_WINDOW,
    )
    loader = make_loader(rt.loader, paths, rt.loader_settings(resize))
    try:
        pred, image_idx = predict_patches(model, loader, plan, rt, progress)
        return check_finite(per_image_mean(pred, image_idx, len(paths)), paths)
    finally:
        loader.close()


def score_files(
    checkpoint: str | Path,
    paths: Sequence[Path],
    *,
    device: str = "auto",
    loader: str = "auto",
    num_workers: int | None = None,
    batch_size: int = 96,
    resize: tuple[int, int] | None = None,
    patch_num: int | None = None,
    patch_size: int = PATCH_SIZE,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> np.ndarray:
    """Load ``checkpoint`` and score image files, deciding the runtime as train.py does.

    The checkpoint is loaded first (a wrong one fails in a second), then every
    image is checked, all problems listed at once, missing files too, as
    train.py does: the loaders would otherwise meet what the check refuses.
    """
    rt = resolve_runtime(
        device=device, loader=loader, num_workers=num_workers, batch_size=batch_size
    )
    model = load_checkpoint(checkpoint, rt)
    problems = find_problems(paths, rt.num_workers, progress)
    if problems:
        raise UserError(problems_message(problems, len(paths)))
    echo(rt.loader_reason)
    resize, patch_num = crop_settings(checkpoint, resize, patch_num, echo)
    return score_images(
        model,
        paths,
        rt,
        resize=resize,
        patch_num=patch_num,
        patch_size=patch_size,
        progress=progress,
    )


class Scorer:
    """Score images with a HyperIQA checkpoint, from Python.

        from hyperiqa import Scorer
        scorer = Scorer("../checkpoints/RUN/best_model.pkl")   # or koniq_pretrained.pkl
        scores = scorer.score(["a.jpg", Image.open("b.png"), tensor])

    Images are file paths, open binary files (``BytesIO``), PIL images, uint8 or
    float tensors ``[3, H, W]`` (RGB, 0-255 or 0-1) or numpy arrays ``[H, W, 3]`` (uint8). Each is resized
    to ``resize`` and scored as the mean over ``patch_num`` fixed crops, exactly
    as predict.py scores files with the Pillow loader: the same picture gets the
    same score. A bad input raises ``hyperiqa.UserError`` naming it.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str = "auto",
        resize: tuple[int, int] | None = None,
        patch_num: int | None = None,
        batch_size: int = 96,
    ) -> None:
        _check_scorer_arguments(checkpoint, device, resize, patch_num, batch_size)
        # A library object keeps the caller's cudnn.benchmark (a process-wide switch).
        self.rt = resolve_runtime(
            device=device,
            loader="pillow",
            num_workers=0,
            batch_size=int(batch_size),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
        self.model = load_checkpoint(checkpoint, self.rt)
        self.resize, self.patch_num = crop_settings(
            checkpoint, resize, patch_num, echo=lambda _: None
        )
        # The fixed crops: one set of positions, shared by every image.
        self.plan = eval_plan(
            1, patches_per_image=self.patch_num, patch_size=PATCH_SIZE, resize=self.resize, window=1
        )

    def score(self, images: Iterable[object] | str | Path | Image.Image) -> np.ndarray:
        """One score per image (higher = better quality). A single path, PIL
        image, ``[3, H, W]`` tensor or ``[H, W, 3]`` array gives an array of one."""
        if _is_one_image(images):
            images = [images]
        elif not isinstance(images, Iterable) or isinstance(images, bytes) or _is_numbers(images):
            raise UserError(
                "images must be a path, binary file, PIL image, tensor or array, or a list of them; "
                f"got {type(images).__name__}"
            )
        # Cut and score a batch of images at a time: memory holds one batch of
        # patches, not the whole list's (25 patches of 224x224 are 3.8 MB an image).
        images_per_batch = max(1, self.rt.batch_per_rank // self.patch_num)
        scores: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        for i, image in enumerate(images):
            pending.append(self._patches(image, i))
            if len(pending) == images_per_batch:
                scores.append(self._score_patches(pending))
                pending = []
        if pending:
            scores.append(self._score_patches(pending))
        if not scores:
            return np.zeros(0)
        return check_finite(np.concatenate(scores))

    def stream(
        self, paths: Iterable[str | os.PathLike]
    ) -> Iterator[tuple[str, float | None, str | None]]:
        """Score image files as a stream: ``(path, score, None)`` per file, or
        ``(path, None, reason)`` for one that cannot be scored, in input order.

            for path, score, error in scorer.stream(open("paths.txt").read().split()):
                ...

        ``paths`` may be any iterable, a generator of millions included: it is read a
        chunk (about a thousand paths) ahead and results come a window of images at
        a time, so memory does not grow with it. A bad file is a row, never an
        exception. Scores are ``score``'s (and predict.py's with ``--loader
        pillow``), up to float rounding of other batch sizes (about 1e-7).
        """
        if isinstance(paths, str | bytes | os.PathLike) or not isinstance(paths, Iterable):
            raise UserError(f"paths must be an iterable of file paths, got {type(paths).__name__}")
        scorer = ChunkScorer(
            self.model, self.rt, resize=self.resize, patch_num=self.patch_num, checks=ImageChecks(0)
        )
        entries = (Entry(_path_text(p, i)) for i, p in enumerate(paths))
        try:
            for rows in stream_rows(scorer, entries, chunk_size(scorer.window)):
                yield from (tuple(row) for row in rows)
        finally:
            scorer.close()

    def _score_patches(self, patches: list[np.ndarray]) -> np.ndarray:
        """The mean prediction per image over its ``patch_num`` patches."""
        preds = []
        with torch.inference_mode():
            for x in torch.from_numpy(np.concatenate(patches)).split(self.rt.batch_per_rank):
                x = normalize_uint8(x.to(self.rt.device), self.rt.input_dtype)
                with self.rt.autocast():
                    preds.append(self.model(self.rt.prepare_input(x)).float().cpu())
        pred = torch.cat(preds).numpy().astype(np.float64)
        image_idx = np.repeat(np.arange(len(patches)), self.patch_num)
        return per_image_mean(pred, image_idx, len(patches))

    def _patches(self, image: object, i: int) -> np.ndarray:
        plan = self.plan
        resized = resize_rgb(_as_rgb(image, i), self.resize)
        return cut_patches(resized, plan.tops[0], plan.lefts[0], plan.flips[0], PATCH_SIZE)


def _path_text(path: object, i: int) -> str:
    if isinstance(path, str | os.PathLike):
        text = os.fspath(path)
        if isinstance(text, str):
            return text
    raise UserError(f"path {i}: a file path was expected, got {type(path).__name__}")


def _is_numbers(images: object) -> bool:
    """A 0-d/1-d tensor or numeric array: no image in it (a 1-d array of paths is fine)."""
    if isinstance(images, torch.Tensor):
        return images.ndim < 2
    return isinstance(images, np.ndarray) and (images.ndim == 0 or images.dtype.kind in "biufc")


def _is_one_image(images: object) -> bool:
    """A path, PIL image or 2-D/3-D tensor/array is one image, not a list to iterate
    (a 2-D one is then refused by name as grey, not read row by row)."""
    if isinstance(images, str | os.PathLike | Image.Image | io.IOBase):
        return True
    return isinstance(images, torch.Tensor | np.ndarray) and images.ndim in (2, 3)


def _as_rgb(image: object, i: int) -> Image.Image:
    """An upright RGB PIL image from any input the Scorer takes; UserError names the bad one."""
    if isinstance(image, str | os.PathLike):
        image = Path(image)
        reason = check_image(image)
        if reason:
            raise UserError(f"image {image}: {reason}")
        return load_rgb(image)
    if isinstance(image, io.IOBase):  # an open binary file, BytesIO: the bytes of an image file
        try:
            image = Image.open(image)
        except (OSError, ValueError, TypeError) as e:  # not an image, or a closed or text file
            raise UserError(f"image {i}: cannot be read ({e})") from None
    if isinstance(image, Image.Image):
        if image.mode.startswith("I") or image.mode == "F":  # as the image check refuses files
            raise UserError(f"image {i}: mode {image.mode} is deeper than 8 bits; convert it first")
        if min(image.size) < 1:
            raise UserError(f"image {i}: empty ({image.size[0]}x{image.size[1]})")
        try:  # a lazily opened image decodes here: a truncated or closed file fails now
            return ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError(f"image {i}: cannot be read ({e})") from None
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise UserError(f"image {i}: expected a [3, H, W] tensor, got {list(image.shape)}")
        if image.is_floating_point():
            if not bool(((image >= 0) & (image <= 1)).all()):
                raise UserError(f"image {i}: a float tensor must hold values in [0, 1]")
            image = (image * 255).round()
        elif image.dtype != torch.uint8:
            raise UserError(f"image {i}: expected uint8 or float values, got {image.dtype}")
        image = image.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UserError(
                f"image {i}: expected a uint8 [H, W, 3] array, got {image.dtype} {list(image.shape)}"
            )
        if min(image.shape[:2]) < 1:
            raise UserError(f"image {i}: empty ({image.shape[1]}x{image.shape[0]})")
        return Image.fromarray(image, "RGB")
    raise UserError(
        f"image {i}: a path, binary file, PIL image, tensor or array was expected, "
        f"got {type(image).__name__}"
    )


def _is_whole(value: object) -> bool:
    """An integer (numpy's too), not a bool: True is not a batch size."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_scorer_arguments(
    checkpoint: object, device: object, resize: object, patch_num: object, batch_size: object
) -> None:
    """The Scorer's own arguments, with one clear error each (its users are programs)."""
    if not isinstance(checkpoint, str | os.PathLike):
        raise UserError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    if device not in DEVICE_CHOICES:
        raise UserError(f"device must be auto, cuda or cpu, got {device!r}")
    if not _is_whole(batch_size) or batch_size < 1:
        raise UserError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if patch_num is not None and (
        not _is_whole(patch_num) or not 1 <= patch_num <= MAX_PATCHES_PER_IMAGE
    ):
        raise UserError(
            f"patch_num must be a whole number from 1 to {MAX_PATCHES_PER_IMAGE}, got {patch_num!r}"
        )
    if resize is not None and not _is_resize(resize):
        raise UserError(
            f"resize must be (height, width), each {PATCH_SIZE} to {MAX_SIDE}, got {resize!r}"
        )


def _is_resize(value: object) -> bool:
    return (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(_is_whole(v) and PATCH_SIZE <= v <= MAX_SIDE for v in value)
    )
