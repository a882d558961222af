"""Training flags, their defaults and checks, and the run-folder name.

Plain argparse (like torchvision's references): every flag is listed once
here, with its default; an invalid value is an argparse error naming the flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
    patch_size_type,
    positive_float,
    positive_int,
    resize_type,
    seed_type,
    unit_interval,
)

DEFAULT_CHECKPOINTS = Path("../checkpoints")
DEFAULT_VAL_SPLIT = 0.1
# The sets a run has by itself: an --eval_json set may not take one of their names.
RESERVED_SET_NAMES = frozenset({"train", "val", "test"})


@dataclass(frozen=True)
class TrainConfig:
    dataset_root: str
    train_json: str
    val_split: float | None  # None until resolved: 0.1, or 0 with --val_json
    val_json: str | None
    test_json: str | None
    eval_json: tuple[str, ...]  # NAME=FILE, as typed
    eval_root: tuple[str, ...]  # NAME=DIR, as typed
    lr: float
    lr_ratio: float
    weight_decay: float
    batch_size: int
    epochs: int
    seed: int
    patch_size: int
    train_patch_num: int
    val_patch_num: int
    checkpoint_dir: str | None
    save_all_epochs: bool
    tensorboard: bool
    loader: str
    device: str
    num_workers: int | None
    resize: tuple[int, int]
    shuffle_window: int | None
    amp: str | None
    channels_last: bool
    compile: bool
    backbone_weights: str
    init_checkpoint: str | None
    overwrite: bool
    resume: bool
    demo: bool
    skip_check: bool
    progress: bool
    dali_threads: int
    dali_hw_decoder_load: float
    dali_prefetch: int
    # --no_cudnn_benchmark sets it False; with a default, so an args.json written
    # before the flag existed still loads (and a resume may change it: SPEED_FLAGS).
    cudnn_benchmark: bool = True
    # Not a flag: how many processes train together (torchrun), recorded in args.json.
    world_size: int = 1

    def to_json(self) -> dict:
        d = asdict(self)
        d["resize"] = format_resize(self.resize)
        d["eval_json"], d["eval_root"] = list(self.eval_json), list(self.eval_root)
        return d

    def eval_sets(self) -> dict[str, tuple[str, str]]:
        """The sets scored with best_model.pkl at the end: name -> (metadata JSON, image root)."""
        roots = dict(named(text) for text in self.eval_root)
        sets = {"test": (self.test_json, self.dataset_root)} if self.test_json else {}
        for text in self.eval_json:
            name, path = named(text)
            sets[name] = (path, roots.get(name, self.dataset_root))
        return sets


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
        "--dataset_root", default="../datasets/", help="image paths are relative to this"
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
        default=(384, 512),
        help="HxW every image is resized to before cropping (the original used 512x384)",
    )
    data.add_argument(
        "--patch_size",
        type=patch_size_type,
        default=224,
        help="side of the square crops (the architecture needs 224)",
    )
    data.add_argument(
        "--train_patch_num", type=patch_count, default=25, help="crops per training image"
    )
    data.add_argument(
        "--val_patch_num", type=patch_count, default=25, help="crops per validation image"
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
    opt.add_argument("--lr", type=positive_float, default=2e-5, help="backbone learning rate")
    opt.add_argument(
        "--lr_ratio",
        type=positive_float,
        default=10.0,
        help="hyper-network learning rate = lr * lr_ratio (epochs 1-8)",
    )
    opt.add_argument("--weight_decay", type=non_negative_float, default=5e-4)
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


# The demo trains a random-init ResNet-50 on 2 CPU cores in a few minutes:
# 144 generated 256x320 images (no resampling at this --resize, so the blur and
# noise reach the network intact), 96 train x 2 patches x 6 epochs (~1,150
# training patches) and 48 val images x 1 patch (enough for SRCC to mean
# something, and cheap: forward only). They are parser defaults under --demo,
# so flags typed explicitly still win.
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
    "epochs": 6,
    "lr": 1e-4,
    "lr_ratio": 10.0,
    "backbone_weights": "auto",
}

# Flags that change how fast a run goes, not what it computes: a resume may change them.
SPEED_FLAGS = frozenset(
    {
        "resume",
        "overwrite",
        "progress",
        "skip_check",
        "num_workers",
        "save_all_epochs",
        "tensorboard",
        "checkpoint_dir",
        "dali_threads",
        "dali_prefetch",
        "dali_hw_decoder_load",
        "cudnn_benchmark",
    }
)


def check_patch_fits(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Crops are cut from the resized image, so --patch_size must fit in --resize."""
    if ns.resize and ns.patch_size > min(ns.resize):
        parser.error(
            f"argument --patch_size: {ns.patch_size} does not fit in --resize "
            f"{format_resize(ns.resize)}"
        )


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
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
    if ns.demo and ns.train_json == DEMO_DEFAULTS["train_json"]:
        # --demo --dataset_root X: the demo dataset lives (or is written) in X.
        ns.train_json = str(Path(ns.dataset_root) / Path(ns.train_json).name)
    if ns.val_json and ns.val_split is not None:
        parser.error("argument --val_split: not allowed with argument --val_json")
    if ns.val_split is None:
        ns.val_split = 0.0 if ns.val_json else DEMO_VAL_SPLIT if ns.demo else DEFAULT_VAL_SPLIT
    names = [named(text)[0] for text in ns.eval_json]
    for name in sorted({n for n in names if names.count(n) > 1}):
        parser.error(f"argument --eval_json: the name {name!r} is used twice")
    for name in sorted(set(names) & RESERVED_SET_NAMES):
        parser.error(
            f"argument --eval_json: {name!r} names the run's own {name} set; choose another name"
        )
    for text in ns.eval_root:
        if named(text)[0] not in names:
            parser.error(f"argument --eval_root: no --eval_json named {named(text)[0]!r}")
    ns.eval_json, ns.eval_root = tuple(ns.eval_json), tuple(ns.eval_root)
    return TrainConfig(**vars(ns))


def add_scoring_flags(parser: argparse.ArgumentParser) -> None:
    """The flags evaluate.py and predict.py share: checkpoint, crops, hardware."""
    p = parser
    p.add_argument("--checkpoint", required=True, help="HyperNet state_dict (best_model.pkl)")
    p.add_argument(
        "--patch_num",
        type=patch_count,
        default=None,
        help="crops averaged per image (default: the run's val_patch_num from the args.json "
        "beside the checkpoint, else 25)",
    )
    p.add_argument(
        "--patch_size", type=patch_size_type, default=224, help="the architecture needs 224"
    )
    p.add_argument(
        "--resize",
        type=resize_type,
        default=None,
        metavar="HxW",
        help="size images are resized to (default: the run's, from the args.json beside the "
        "checkpoint, else 384x512)",
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


# The scoring flags that hyperiqa.evaluation.score_files takes as keywords.
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


def format_lr(lr: float) -> str:
    """``2e-05`` -> ``2e-5``, ``0.0001`` -> ``1e-4``, ``2.5e-05`` -> ``2.5e-5``."""
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_name(cfg: TrainConfig) -> str:
    # With --val_json the validation set is a file: its name stands where the share would.
    val = Path(cfg.val_json).stem if cfg.val_json else f"{cfg.val_split:g}"
    name = f"lr{format_lr(cfg.lr)}_bs{cfg.batch_size}_ep{cfg.epochs}_val{val}_seed{cfg.seed}"
    return f"demo_{name}" if cfg.demo else name


def run_path(cfg: TrainConfig) -> Path:
    if cfg.checkpoint_dir:
        return Path(cfg.checkpoint_dir)
    return DEFAULT_CHECKPOINTS / run_name(cfg)
