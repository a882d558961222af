"""The command line of train.py (and the scoring flags of evaluate.py and
predict.py): every flag once, with its default and checks, and ``resolve``,
which turns the parsed flags into the run's ``RunSpec``.

Plain argparse (like torchvision's references): an invalid value is an
argparse error naming the flag. Nothing below the command line sees these
flags: it receives the ``RunSpec``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from hyperiqa.arg_types import (
    DEVICE_CHOICES,
    LOADER_CHOICES,
    HelpFormatter,
    format_resize,
    fraction,
    named,
    named_type,
    non_negative_float,
    non_negative_int,
    patch_count,
    positive_float,
    positive_int,
    resize_type,
    seed_type,
    unit_interval,
)
from hyperiqa.model import BACKBONES, PATCH_SIZE
from hyperiqa.runtime import resolve_runtime
from hyperiqa.spec import TEST, TRAIN, VAL, RunSpec
from pipelines.patches import DEFAULT_PATCHES_PER_IMAGE, DEFAULT_RESIZE

DEFAULT_CHECKPOINTS = Path("../checkpoints")
DEFAULT_DATASET_ROOT = "../datasets/"
DEFAULT_VAL_SPLIT = 0.1
# The training guide's optimisation (the benchmark builds its optimiser with them too).
DEFAULT_LR = 2e-5
DEFAULT_LR_RATIO = 10.0
DEFAULT_WEIGHT_DECAY = 5e-4


def patch_size_type(text: str) -> int:
    """The architecture's LDA branches assume 224x224 patches (7x7 pooling of 56/28/14/7 maps)."""
    value = positive_int(text)
    if value != PATCH_SIZE:
        raise argparse.ArgumentTypeError(f"HyperIQA's architecture needs {PATCH_SIZE}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train HyperIQA (Su et al., CVPR 2020) on an IQA dataset such as KonIQ-10k.",
        formatter_class=HelpFormatter,
        # No abbreviations: --epoch silently meaning --epochs helps nobody
        # reading a command line later.
        allow_abbrev=False,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset_root", default=DEFAULT_DATASET_ROOT, help="image paths are relative to this"
    )
    data.add_argument(
        "--train_json",
        default="../datasets/metas/koniq_train.json",
        help="metadata JSON: a list of {image, score}",
    )
    data.add_argument(
        "--val_split",
        type=fraction,
        default=None,
        help="share of --train_json held out for validation, by image (0: none; "
        "default 0.1, or none with --val_json)",
    )
    data.add_argument(
        "--val_json",
        default=None,
        help="validate on this metadata JSON (e.g. KonIQ's official validation set) "
        "instead of carving --val_split out of --train_json",
    )
    data.add_argument(
        "--test_json",
        default=None,
        help="score best_model.pkl on this metadata JSON at the end of the run "
        "(metrics.json 'test'; the same fixed crops as evaluate.py)",
    )
    data.add_argument(
        "--eval_json",
        type=named_type,
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="also score best_model.pkl on this set at the end (cross-dataset tests; "
        "metrics.json 'eval'.NAME); repeatable",
    )
    data.add_argument(
        "--eval_root",
        type=named_type,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="image root of the --eval_json set NAME (default: --dataset_root); repeatable",
    )
    data.add_argument(
        "--resize",
        type=resize_type,
        default=DEFAULT_RESIZE,
        help="HxW every image is resized to before cropping (the original used 512x384)",
    )
    data.add_argument(
        "--patch_size",
        type=patch_size_type,
        default=PATCH_SIZE,
        help=f"side of the square crops (the architecture needs {PATCH_SIZE})",
    )
    data.add_argument(
        "--train_patch_num",
        type=patch_count,
        default=DEFAULT_PATCHES_PER_IMAGE,
        help="crops per training image",
    )
    data.add_argument(
        "--val_patch_num",
        type=patch_count,
        default=DEFAULT_PATCHES_PER_IMAGE,
        help="crops per validation image",
    )
    data.add_argument(
        "--shuffle_window",
        type=positive_int,
        default=None,
        help="images whose patches are shuffled together (default: batch_size)",
    )
    data.add_argument(
        "--skip_check", action="store_true", help="skip decoding every image once before training"
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=positive_float, default=DEFAULT_LR, help="backbone learning rate")
    opt.add_argument(
        "--lr_ratio",
        type=positive_float,
        default=DEFAULT_LR_RATIO,
        help="hyper-network learning rate = lr * lr_ratio (epochs 1-8)",
    )
    opt.add_argument("--weight_decay", type=non_negative_float, default=DEFAULT_WEIGHT_DECAY)
    opt.add_argument("--batch_size", type=positive_int, default=96, help="patches per step")
    opt.add_argument("--epochs", type=positive_int, default=16)
    opt.add_argument(
        "--seed",
        type=seed_type,
        default=42,
        help="seeds the split, the patch plans and the model init",
    )

    model = p.add_argument_group("model")
    model.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        default="resnet50",
        help="resnet50: the paper's; tiny: one block per ResNet stage, about 4x faster, "
        "for smoke runs and tests (random init only)",
    )
    model.add_argument(
        "--backbone_weights",
        default="imagenet",
        help="imagenet (torchvision download), none (random), auto (imagenet when it "
        "loads, else none; the demo's default), or a ResNet-50 state_dict PATH",
    )
    model.add_argument(
        "--init_checkpoint",
        default=None,
        help="start from a full HyperNet state_dict (e.g. koniq_pretrained.pkl)",
    )

    run = p.add_argument_group("run")
    run.add_argument(
        "--checkpoint_dir",
        default=None,
        help="run folder (default ../checkpoints/lr{lr}_bs{bs}_ep{ep}_val{val}_seed{seed})",
    )
    run.add_argument("--save_all_epochs", action="store_true", help="also keep epoch_N.pkl")
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="log loss, learning rates and metrics for TensorBoard under RUN/tensorboard/ "
        "(needs: pip install tensorboard)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in the folder (once this run has started cleanly)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the folder from its last completed epoch",
    )
    run.add_argument(
        "--demo",
        action="store_true",
        help="train on a small generated dataset with demo-sized settings",
    )
    run.add_argument(
        "--no_progress",
        dest="progress",
        action="store_false",
        help="no progress bar (log lines only)",
    )

    hw = p.add_argument_group("hardware")
    hw.add_argument(
        "--loader",
        choices=LOADER_CHOICES,
        default="auto",
        help="auto: dali when CUDA and DALI are present, else pillow",
    )
    hw.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    hw.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=None,
        help="Pillow decode processes (default: 0 on the CPU, the usable cores up to 8 on a GPU)",
    )
    hw.add_argument(
        "--amp",
        choices=["bf16", "fp16", "off"],
        default=None,
        help="autocast precision on CUDA (default bf16; CPU always fp32)",
    )
    hw.add_argument(
        "--no_channels_last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW memory layout on CUDA",
    )
    hw.add_argument(
        "--no_cudnn_benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="turn off cuDNN's autotuner on CUDA (on by default: fastest kernels for the "
        "fixed patch shape, at the price of run-to-run bit differences)",
    )
    hw.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step (slow first steps; measure with bench --compile)",
    )
    hw.add_argument("--dali_threads", type=positive_int, default=4, help="DALI CPU threads")
    hw.add_argument(
        "--dali_hw_decoder_load",
        type=unit_interval,
        default=0.65,
        help="share of JPEGs sent to the hardware JPEG decoder (A100/H100)",
    )
    hw.add_argument(
        "--dali_prefetch",
        type=positive_int,
        default=2,
        help="windows DALI decodes ahead of training",
    )
    return p


# The demo trains HyperIQA from random init on 2 CPU cores in about 2 minutes:
# the tiny backbone (one bottleneck block per ResNet stage: the same hyper and
# target networks, a quarter of ResNet-50's work; it learned this data better
# than ResNet-50 did at this budget), 144 generated 256x320 images (no
# resampling at this --resize, so the blur and noise reach the network intact),
# 96 train x 2 patches x 4 epochs (768 training patches, about 28 s an epoch on
# 2 idle cores) and 48 val images x 1 patch (enough for SRCC to mean something,
# and cheap: forward only). Measured: best val SRCC 0.76 (seed 42) and 0.69
# (seed 7) after 4 epochs. They are parser defaults under --demo, so flags typed
# explicitly still win.
DEMO_ROOT = Path("../datasets/demo")
# Not a parser default: --val_split and --val_json exclude each other, and a
# default would make --demo --val_json look like both were typed.
DEMO_VAL_SPLIT = 0.333
DEMO_DEFAULTS = {
    "dataset_root": str(DEMO_ROOT),
    "train_json": str(DEMO_ROOT / "demo.json"),
    "resize": (256, 320),
    "train_patch_num": 2,
    "val_patch_num": 1,
    "batch_size": 16,
    "epochs": 4,
    "lr": 1e-4,
    "lr_ratio": 10.0,
    "backbone": "tiny",
    "backbone_weights": "none",
}


def check_patch_fits(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Crops are cut from the resized image, so --patch_size must fit in --resize."""
    if ns.resize and ns.patch_size > min(ns.resize):
        parser.error(
            f"argument --patch_size: {ns.patch_size} does not fit in --resize "
            f"{format_resize(ns.resize)}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags as typed, checked one against another (argparse's error, exit 2)."""
    parser = build_parser()
    # --demo changes the defaults, not the flags: a first pass learns whether it
    # was given, the second parses with the demo's defaults in place.
    if parser.parse_known_args(argv)[0].demo:
        parser.set_defaults(**DEMO_DEFAULTS)
    ns = parser.parse_args(argv)
    check_patch_fits(parser, ns)
    if ns.resume and ns.overwrite:
        parser.error("argument --resume: not allowed with argument --overwrite")
    if ns.checkpoint_dir is not None and not ns.checkpoint_dir.strip():
        parser.error("argument --checkpoint_dir: empty; leave it out for the default folder")
    if ns.val_json and ns.val_split is not None:
        parser.error("argument --val_split: not allowed with argument --val_json")
    names = [named(text)[0] for text in ns.eval_json]
    roots = [named(text)[0] for text in ns.eval_root]
    for flag, given in (("--eval_json", names), ("--eval_root", roots)):
        for name in sorted({n for n in given if given.count(n) > 1}):
            parser.error(f"argument {flag}: the name {name!r} is used twice")
    for name in sorted(set(names) & {TRAIN, VAL, TEST}):
        parser.error(
            f"argument --eval_json: {name!r} names the run's own {name} set; choose another name"
        )
    for name in roots:
        if name not in names:
            parser.error(f"argument --eval_root: no --eval_json named {name!r}")
    return ns


def resolve(args: argparse.Namespace) -> RunSpec:
    """The run the flags describe, every ``auto`` and every default that depends
    on another flag decided, the runtime included (under torchrun this joins the
    process group). Raises UserError for a request this machine cannot meet."""
    train_json = args.train_json
    if args.demo and train_json == DEMO_DEFAULTS["train_json"]:
        # --demo --dataset_root X: the demo dataset lives (or is written) in X.
        train_json = str(Path(args.dataset_root) / Path(train_json).name)
    val_split = resolved_val_split(args)
    runtime = resolve_runtime(
        device=args.device,
        amp=args.amp,
        loader=args.loader,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        channels_last=args.channels_last,
        cudnn_benchmark=args.cudnn_benchmark,
        compile=args.compile,
        distributed=True,
        dali_threads=args.dali_threads,
        dali_hw_decoder_load=args.dali_hw_decoder_load,
        dali_prefetch=args.dali_prefetch,
    )
    # Every other field of the spec is the flag of the same name, as given.
    as_given = {f.name: getattr(args, f.name) for f in fields(RunSpec) if f.name in vars(args)}
    return RunSpec(
        **{
            **as_given,
            "train_json": train_json,
            "val_split": val_split,
            "eval_json": tuple(args.eval_json),
            "eval_root": tuple(args.eval_root),
            "shuffle_window": args.shuffle_window or args.batch_size,
            "run_dir": run_dir(args),
            "runtime": runtime,
        }
    )


def run_dir(args: argparse.Namespace) -> Path:
    """The run folder: --checkpoint_dir, else ../checkpoints/ and the run's name
    (``demo_`` first for --demo). Decided from the flags alone, so the docs' tests
    can tell which folder a documented command trains into."""
    name = run_name(
        args.lr, args.batch_size, args.epochs, resolved_val_split(args), args.val_json, args.seed
    )
    return Path(args.checkpoint_dir or DEFAULT_CHECKPOINTS / f"{'demo_' * args.demo}{name}")


def add_scoring_flags(parser: argparse.ArgumentParser) -> None:
    """The flags evaluate.py and predict.py share: checkpoint, crops, hardware."""
    p = parser
    p.add_argument("--checkpoint", required=True, help="HyperNet state_dict (best_model.pkl)")
    p.add_argument(
        "--patch_num",
        type=patch_count,
        default=None,
        help="crops averaged per image (default: the run's val_patch_num from the args.json "
        f"beside the checkpoint, else {DEFAULT_PATCHES_PER_IMAGE})",
    )
    p.add_argument(
        "--patch_size",
        type=patch_size_type,
        default=PATCH_SIZE,
        help=f"the architecture needs {PATCH_SIZE}",
    )
    p.add_argument(
        "--resize",
        type=resize_type,
        default=None,
        metavar="HxW",
        help="size images are resized to (default: the run's, from the args.json beside the "
        f"checkpoint, else {format_resize(DEFAULT_RESIZE)})",
    )
    p.add_argument("--batch_size", type=positive_int, default=96, help="patches per forward pass")
    p.add_argument("--loader", choices=LOADER_CHOICES, default="auto")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=None,
        help="Pillow decode processes (default: as train.py: 0 on the CPU, the cores up to 8 "
        "on a GPU)",
    )


# The scoring flags that hyperiqa.scorer.score_files takes as keywords.
SCORING_OPTIONS = (
    "device",
    "loader",
    "num_workers",
    "batch_size",
    "resize",
    "patch_num",
    "patch_size",
)


def scoring_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in SCORING_OPTIONS}


def parse_scoring_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    check_patch_fits(parser, args)
    return args


def resolved_val_split(args: argparse.Namespace) -> float:
    """--val_split, or its default: none with --val_json, a third for --demo, else 0.1."""
    if args.val_split is not None:
        return args.val_split
    return 0.0 if args.val_json else DEMO_VAL_SPLIT if args.demo else DEFAULT_VAL_SPLIT


def flags_json(args: argparse.Namespace) -> dict:
    """The flags as given (``auto`` left in), in args.json's form: what a protocol
    records as its training settings, before any machine has decided anything."""
    out = {**vars(args), "val_split": resolved_val_split(args)}
    out["resize"] = format_resize(args.resize)
    out["eval_json"], out["eval_root"] = list(args.eval_json), list(args.eval_root)
    return out


def format_lr(lr: float) -> str:
    """``2e-05`` -> ``2e-5``, ``0.0001`` -> ``1e-4``, ``2.5e-05`` -> ``2.5e-5``."""
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_name(
    lr: float, batch_size: int, epochs: int, val_split: float, val_json: str | None, seed: int
) -> str:
    """``lr{lr}_bs{bs}_ep{ep}_val{val}_seed{seed}``; with --val_json the validation
    set is a file, and its name stands where the share would."""
    val = Path(val_json).stem if val_json else f"{val_split:g}"
    return f"lr{format_lr(lr)}_bs{batch_size}_ep{epochs}_val{val}_seed{seed}"
