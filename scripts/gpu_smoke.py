"""The GPU check's smoke step (scripts/gpu_check.sh): training's own geometry and
dtype through the DALI GPU path, compared patch by patch with DALI's CPU backend.

    python scripts/gpu_smoke.py --work DIR [--standin]

KonIQ-sized JPEGs (plus a grayscale and a progressive one) resized to 384x512,
25 patches of 224 per image, in the dtype the runtime feeds training (float16
under the default bf16 autocast), at least 3 plan windows with DALI's prefetch
on, through the "mixed" decoder; the same plan through DALI's CPU backend in
float32 is the reference. Per patch: the mean and the max absolute difference in
grey levels, each with a limit. Prints its verdict, writes it to DIR/smoke.note
and exits 1 when a limit is crossed.

Stand-in mode (no GPU): the device under test is DALI's CPU backend too, with
fewer images per window; the same code path, which proves the plumbing only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hyperiqa.demo_data import write_koniq_like_jpegs
from hyperiqa.runtime import resolve_runtime
from pipelines.dali import DaliLoader
from pipelines.loader import IMAGENET_STD, LoaderSettings, PatchBatch
from pipelines.patches import PatchPlan, train_plan

RESIZE = (384, 512)  # train.py's default --resize
PATCH = 224
PER_IMAGE = 25  # train.py's default --train_patch_num
WINDOWS = 3  # at least: the prefetch queue fills, drains and refills
PREFETCH = 2  # train.py's default --dali_prefetch
GPU_WINDOW, GPU_BATCH = 8, 96  # images per window; patches per batch (train.py's default)
STANDIN_WINDOW, STANDIN_BATCH = 2, 25

# Limits in grey levels (0-255), per patch. nvJPEG with fancy upsampling against
# libjpeg-turbo differs by IDCT and colour-conversion rounding: DALI's own tests
# allow a mean of 1 per decoded image, and the resize to 384x512 averages such
# noise down. A crop one pixel off moves a patch's mean by 3.7 or more on these
# images (measured: 3.7-13 over 150 patches): the mean limit sits between the two.
PATCH_MEAN_LIMIT = 2.0
# The max catches a region of wrong pixels (another image, a buffer not yet
# written) that a patch's mean dilutes: such pixels are tens to hundreds of grey
# levels off. Even chroma upsampled the other way (nearest instead of fancy)
# stays within 6 after the resize (measured on these images), rounding within 2.
MAX_LIMIT = 16.0


def smoke_images(folder: Path, count: int) -> list[Path]:
    """``count - 2`` KonIQ-like 1024x768 JPEGs, a grayscale and a progressive JPEG."""
    paths = write_koniq_like_jpegs(folder / "koniq", count - 2, seed=3, height=768, width=1024)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:400]
    texture = np.stack([128 + 90 * np.sin(x / (7 + c) + y / (11 + c)) for c in range(3)], -1)
    texture = np.clip(texture + rng.normal(0, 12, texture.shape), 0, 255).astype(np.uint8)
    Image.fromarray(texture[..., 0]).save(folder / "gray.jpg", quality=90)
    Image.fromarray(texture[:120, :160]).save(
        folder / "progressive.jpg", quality=85, progressive=True
    )
    return [*paths, folder / "gray.jpg", folder / "progressive.jpg"]


def deliver(
    paths: list[Path], plan: PatchPlan, device: torch.device, dtype: torch.dtype, batch: int
) -> tuple[list[PatchBatch], float]:
    """One epoch of ``plan`` as training receives it, on the host; and the seconds it took."""
    settings = LoaderSettings(
        resize=RESIZE,
        batch_size=batch,
        device=device,
        dtype=dtype,
        dali_threads=4,
        dali_prefetch=PREFETCH,
    )
    start = time.perf_counter()
    loader = DaliLoader(paths, settings)
    try:
        out = []
        for b in loader.batches(plan):
            if b.images.dtype != dtype or b.images.device.type != device.type:
                raise RuntimeError(f"got {b.images.dtype} on {b.images.device}")
            out.append(PatchBatch(b.images.cpu(), b.image_idx.cpu()))  # waits for the device
    finally:
        loader.close()
    return out, time.perf_counter() - start


def compare(got: list[PatchBatch], ref: list[PatchBatch]) -> dict:
    """Per-patch mean and max |difference| in grey levels, and the image order."""
    to_grey = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    means, maxes = [], []
    for g, r in zip(got, ref, strict=True):
        diff = ((g.images.float() - r.images.float()) * to_grey).abs().flatten(1)
        means.append(diff.mean(1))
        maxes.append(diff.amax(1))
    mean, top = torch.cat(means), torch.cat(maxes)
    return {
        "order_same": torch.equal(
            torch.cat([g.image_idx for g in got]), torch.cat([r.image_idx for r in ref])
        ),
        "finite": all(torch.isfinite(g.images).all() for g in got),
        "patch_mean": mean,
        "patch_max": top,
        "image_idx": torch.cat([r.image_idx for r in ref]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_smoke.py", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="scratch folder; smoke.note goes here")
    p.add_argument("--standin", action="store_true", help="DALI's CPU backend, fewer images")
    args = p.parse_args(argv)
    if args.standin:
        device, window, batch = torch.device("cpu"), STANDIN_WINDOW, STANDIN_BATCH
        # What training feeds under CUDA's default bf16 autocast; on the CPU the
        # runtime trains in fp32, so ask it as CUDA would decide.
        rt = resolve_runtime(device="cpu", batch_size=batch)
        dtype = dataclasses.replace(rt, amp=torch.bfloat16).input_dtype
    else:
        device, window, batch = torch.device("cuda"), GPU_WINDOW, GPU_BATCH
        dtype = resolve_runtime(device="cuda", batch_size=batch).input_dtype

    folder = args.work / "smoke"
    folder.mkdir(parents=True, exist_ok=True)
    paths = smoke_images(folder, WINDOWS * window)
    plan = train_plan(
        len(paths),
        seed=0,
        epoch=0,
        patches_per_image=PER_IMAGE,
        patch_size=PATCH,
        resize=RESIZE,
        window=window,
    )
    windows = len(plan.window_perms)
    ref, ref_took = deliver(paths, plan, torch.device("cpu"), torch.float32, batch)
    got, took = deliver(paths, plan, device, dtype, batch)
    r = compare(got, ref)

    what = "mixed decoder" if device.type == "cuda" else "CPU backend (stand-in)"
    worst = int(r["patch_mean"].argmax())
    worst_name = paths[int(r["image_idx"][worst])].name
    print(f"{what}: {took:.1f} s; CPU backend reference: {ref_took:.1f} s (both with the build)")
    for i, path in enumerate(paths):
        mine = r["image_idx"] == i
        print(
            f"  {path.name}: per-patch mean |diff| up to {r['patch_mean'][mine].max():.3f}, "
            f"max {r['patch_max'][mine].max():.1f} grey levels"
        )
    problems = []
    if windows < WINDOWS:
        problems.append(f"only {windows} windows")
    if not r["order_same"]:
        problems.append("image order differs from the plan")
    if not r["finite"]:
        problems.append("non-finite values")
    if not r["patch_mean"].max() < PATCH_MEAN_LIMIT:
        problems.append(f"a patch's mean |diff| over {PATCH_MEAN_LIMIT} ({worst_name})")
    if not r["patch_max"].max() < MAX_LIMIT:
        problems.append(f"max |diff| over {MAX_LIMIT}")
    dtype_name = str(dtype).removeprefix("torch.")
    note = (
        f"{what} ({dtype_name}) vs CPU backend (float32), {windows} windows x {window} images, "
        f"{RESIZE[0]}x{RESIZE[1]}, {PER_IMAGE} patches of {PATCH}, prefetch {PREFETCH}: "
        f"per-patch mean |diff| {r['patch_mean'].mean():.3f} on average, worst "
        f"{r['patch_mean'].max():.3f} (limit {PATCH_MEAN_LIMIT}); max |diff| "
        f"{r['patch_max'].max():.2f} (limit {MAX_LIMIT}) grey levels"
    )
    note += f"; {'; '.join(problems)}" if problems else "; image order identical"
    (args.work / "smoke.note").write_text(note + "\n")
    print(note)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
