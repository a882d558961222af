"""Evaluate a checkpoint on a labelled set: SRCC, PLCC, KRCC and per-image predictions.

    python evaluate.py --checkpoint best_model.pkl --test_json koniq_test.json \
        [--dataset_root ../datasets/] [--patch_num 25] [--output out.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hyperiqa.config import non_negative_int, positive_int, resize_type
from hyperiqa.data import load_samples
from hyperiqa.errors import UserError, report
from hyperiqa.metrics import format_metric as fmt
from hyperiqa.metrics import krcc, plcc, srcc
from hyperiqa.run_dir import write_json_atomic
from hyperiqa.scoring import load_checkpoint, resolve_inference, score_images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a HyperIQA checkpoint on a labelled image set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="HyperNet state_dict (best_model.pkl)")
    p.add_argument("--test_json", required=True, help="metadata JSON: a list of {image, score}")
    p.add_argument("--dataset_root", default="../datasets/")
    p.add_argument("--patch_num", type=positive_int, default=25, help="crops averaged per image")
    p.add_argument("--patch_size", type=positive_int, default=224)
    p.add_argument("--resize", type=resize_type, default=(384, 512), help="HxW, as in training")
    p.add_argument("--batch_size", type=positive_int, default=96)
    p.add_argument("--loader", choices=["auto", "pillow", "dali"], default="auto")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--num_workers", type=non_negative_int, default=0)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    return p


def evaluate(args: argparse.Namespace) -> dict:
    samples = load_samples(args.test_json, args.dataset_root)
    loader, device, note = resolve_inference(args.loader, args.device)
    print(note, file=sys.stderr)
    model = load_checkpoint(args.checkpoint, device)
    pred = score_images(
        model,
        [s.path for s in samples],
        loader=loader,
        device=device,
        patch_num=args.patch_num,
        patch_size=args.patch_size,
        resize=args.resize,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    target = [s.score for s in samples]
    return {
        "srcc": srcc(pred, target),
        "plcc": plcc(pred, target),
        "krcc": krcc(pred, target),
        "num_images": len(samples),
        "predictions": [
            {"image": s.image, "score": s.score, "prediction": float(p)}
            for s, p in zip(samples, pred, strict=True)
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.patch_size > min(args.resize):
        build_parser().error(f"argument --patch_size: {args.patch_size} does not fit in --resize")
    try:
        result = evaluate(args)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(Path(args.output), result)
    except UserError as e:
        return report("evaluate.py", e)
    print(
        f"images {result['num_images']}  SRCC {fmt(result['srcc'])}  "
        f"PLCC {fmt(result['plcc'])}  KRCC {fmt(result['krcc'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
