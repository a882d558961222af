"""Score images with a trained HyperIQA checkpoint.

    python predict.py --checkpoint best_model.pkl photo1.jpg photo2.png ...

Each image (any size or format Pillow and DALI read) is resized to the training
size and scored as the mean over ``--patch_num`` seeded crops, as in the
original demo; the same images give the same scores on every run. Patches of
many images share a forward pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hyperiqa.check_data import find_problems, problems_message
from hyperiqa.config import non_negative_int, positive_int, resize_type
from hyperiqa.errors import UserError, report
from hyperiqa.scoring import load_checkpoint, resolve_inference, score_images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Score images with a HyperIQA checkpoint (higher = better quality).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to score")
    p.add_argument("--checkpoint", required=True, help="HyperNet state_dict (best_model.pkl)")
    p.add_argument("--patch_num", type=positive_int, default=25, help="crops averaged per image")
    p.add_argument("--patch_size", type=positive_int, default=224)
    p.add_argument("--resize", type=resize_type, default=(384, 512), help="HxW, as in training")
    p.add_argument("--batch_size", type=positive_int, default=96, help="patches per forward pass")
    p.add_argument("--loader", choices=["auto", "pillow", "dali"], default="auto")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--num_workers", type=non_negative_int, default=0)
    p.add_argument("--json", action="store_true", help='print a JSON list of {"image", "score"}')
    return p


def predict(args: argparse.Namespace) -> list[tuple[str, float]]:
    paths = [Path(p) for p in args.images]
    # Check every image first: a bad file is named here, not as a pipeline failure.
    problems = find_problems(paths)
    if problems:
        raise UserError(problems_message(problems, len(paths)))
    loader, device, note = resolve_inference(args.loader, args.device)
    print(note, file=sys.stderr)
    model = load_checkpoint(args.checkpoint, device)
    scores = score_images(
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
    return [(str(p), float(s)) for p, s in zip(args.images, scores, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.patch_size > min(args.resize):
        parser.error(f"argument --patch_size: {args.patch_size} does not fit in --resize")
    try:
        results = predict(args)
    except UserError as e:
        return report("predict.py", e)
    if args.json:
        print(json.dumps([{"image": p, "score": s} for p, s in results], indent=2))
    else:
        for path, score in results:
            print(f"{path}\t{score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
