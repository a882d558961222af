"""Scoring a list of images with a trained checkpoint (evaluate.py, predict.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hyperiqa.config import check_patch_fits, non_negative_int, positive_int, resize_type
from hyperiqa.errors import UserError
from hyperiqa.inference import predict_images
from hyperiqa.model import HyperNet, ModelLoadError, build_model
from pipelines.factory import (
    LoaderSettings,
    delivery_dtype,
    make_loader,
    resolve_device,
    resolve_loader,
)
from pipelines.patches import EVAL_SEED, eval_plan

EVAL_WINDOW = 32  # images decoded together


def load_checkpoint(path: str, device: torch.device) -> HyperNet:
    """A HyperNet with the weights of ``path`` (best_model.pkl, koniq_pretrained.pkl), in eval mode."""
    try:
        model = build_model("none", init_checkpoint=path)
    except ModelLoadError as e:
        raise UserError(str(e)) from None
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def resolve_inference(loader: str, device: str) -> tuple[str, torch.device, str]:
    dev = resolve_device(device)
    kind, note = resolve_loader(loader, dev)
    return kind, dev, note


def score_images(
    model: HyperNet,
    paths: Sequence[Path],
    *,
    loader: str,
    device: torch.device,
    patch_num: int = 25,
    patch_size: int = 224,
    resize: tuple[int, int] = (384, 512),
    batch_size: int = 96,
    num_workers: int = 0,
    seed: int = EVAL_SEED,
) -> np.ndarray:
    """One score per image: the mean prediction over ``patch_num`` seeded crops."""
    amp = "bf16" if device.type == "cuda" else None
    settings = LoaderSettings(
        resize=resize,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        dtype=delivery_dtype(device, amp),
    )
    scores = [0.0] * len(paths)  # unused by inference; the loader wants one per image
    patch_loader = make_loader(loader, paths, scores, settings)
    plan = eval_plan(
        len(paths),
        seed=seed,
        patches_per_image=patch_num,
        patch_size=patch_size,
        resize=resize,
        # Crops do not depend on the window; a larger one keeps DALI's batches full.
        window=EVAL_WINDOW,
    )
    try:
        return predict_images(
            model, patch_loader, plan, len(paths), amp=amp, channels_last=device.type == "cuda"
        )
    finally:
        patch_loader.close()


def add_scoring_flags(parser: argparse.ArgumentParser) -> None:
    """The flags evaluate.py and predict.py share: checkpoint, crops, hardware."""
    p = parser
    p.add_argument("--checkpoint", required=True, help="HyperNet state_dict (best_model.pkl)")
    p.add_argument("--patch_num", type=positive_int, default=25, help="crops averaged per image")
    p.add_argument("--patch_size", type=positive_int, default=224)
    p.add_argument("--resize", type=resize_type, default=(384, 512), help="HxW, as in training")
    p.add_argument("--batch_size", type=positive_int, default=96, help="patches per forward pass")
    p.add_argument("--loader", choices=["auto", "pillow", "dali"], default="auto")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--num_workers", type=non_negative_int, default=0)


def parse_scoring_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    check_patch_fits(parser, args)
    return args


def score_with_flags(args: argparse.Namespace, paths: Sequence[Path]) -> np.ndarray:
    """Load ``args.checkpoint`` and score ``paths`` as the shared flags say."""
    loader, device, note = resolve_inference(args.loader, args.device)
    print(note, file=sys.stderr)
    model = load_checkpoint(args.checkpoint, device)
    return score_images(
        model,
        paths,
        loader=loader,
        device=device,
        patch_num=args.patch_num,
        patch_size=args.patch_size,
        resize=args.resize,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
