"""Training flags, their defaults and checks, and the run-folder name.

Plain argparse (like torchvision's references): every flag is listed once
here, with its default; an invalid value is an argparse error naming the flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_CHECKPOINTS = Path("../checkpoints")


@dataclass(frozen=True)
class TrainConfig:
    dataset_root: str
    train_json: str
    val_split: float
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
    # Not a flag: how many processes train together (torchrun), recorded in args.json.
    world_size: int = 1

    def to_json(self) -> dict:
        d = asdict(self)
        d["resize"] = format_resize(self.resize)
        return d


# -- argparse value types: each raises ArgumentTypeError, which argparse turns
#    into "argument --flag: message" and exit code 2.


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A value in [0, 1): the share of images held out for validation."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def resize_type(text: str) -> tuple[int, int]:
    """``HxW``, e.g. ``384x512`` (height first)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW such as 384x512, got {text!r}")
    height, width = (int(p) for p in parts)
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return height, width


def format_resize(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train HyperIQA (Su et al., CVPR 2020) on an IQA dataset such as KonIQ-10k.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        # No abbreviations: --demo must know which flags were typed (and --epoch
        # silently meaning --epochs helps nobody reading a command line later).
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
        default=0.1,
        help="share of images held out for validation (0: none)",
    )
    data.add_argument(
        "--resize",
        type=resize_type,
        default=(384, 512),
        help="HxW every image is resized to before cropping (the original used 512x384)",
    )
    data.add_argument(
        "--patch_size",
        type=positive_int,
        default=224,
        help="side of the square crops (the architecture expects 224)",
    )
    data.add_argument(
        "--train_patch_num", type=positive_int, default=25, help="crops per training image"
    )
    data.add_argument(
        "--val_patch_num", type=positive_int, default=25, help="crops per validation image"
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
        type=non_negative_int,
        default=42,
        help="seeds the split, the patch plans and the model init",
    )

    model = p.add_argument_group("model")
    model.add_argument(
        "--backbone_weights",
        default="imagenet",
        help="imagenet (torchvision download), none (random), or a ResNet-50 state_dict PATH",
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
        choices=["auto", "pillow", "dali"],
        default="auto",
        help="auto: dali when CUDA and DALI are present, else pillow",
    )
    hw.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    hw.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=None,
        help="Pillow decode processes (default: CPU cores, at most 8)",
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


# The demo trains a random-init ResNet-50 on 2 CPU cores in about 3 minutes:
# 144 generated 256x320 images (no resampling at this --resize, so the blur and
# noise reach the network intact), 96 train x 2 patches x 6 epochs (~1,150
# training patches) and 48 val images x 1 patch (enough for SRCC to mean
# something, and cheap: forward only). Explicit flags win.
DEMO_ROOT = Path("../datasets/demo")
DEMO_DEFAULTS = {
    "dataset_root": str(DEMO_ROOT),
    "train_json": str(DEMO_ROOT / "demo.json"),
    "val_split": 0.333,
    "resize": (256, 320),
    "train_patch_num": 2,
    "val_patch_num": 1,
    "batch_size": 16,
    "epochs": 6,
    "lr": 1e-4,
    "lr_ratio": 10.0,
}


def check_patch_fits(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Crops are cut from the resized image, so --patch_size must fit in --resize."""
    if ns.patch_size > min(ns.resize):
        parser.error(
            f"argument --patch_size: {ns.patch_size} does not fit in --resize "
            f"{format_resize(ns.resize)}"
        )


def _explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the flags the user actually typed (``--x v`` or ``--x=v``)."""
    typed = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return {
        action.dest
        for action in parser._actions
        if any(opt in typed for opt in action.option_strings)
    }


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.demo:
        explicit = _explicit_flags(parser, argv)
        for key, value in DEMO_DEFAULTS.items():
            if key not in explicit:
                setattr(ns, key, value)
    check_patch_fits(parser, ns)
    if ns.resume and ns.overwrite:
        parser.error("argument --resume: not allowed with argument --overwrite")
    return TrainConfig(**vars(ns))


def format_lr(lr: float) -> str:
    """``2e-05`` -> ``2e-5``, ``0.0001`` -> ``1e-4``, ``2.5e-05`` -> ``2.5e-5``."""
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_name(cfg: TrainConfig) -> str:
    val = f"{cfg.val_split:g}"
    name = f"lr{format_lr(cfg.lr)}_bs{cfg.batch_size}_ep{cfg.epochs}_val{val}_seed{cfg.seed}"
    return f"demo_{name}" if cfg.demo else name


def run_path(cfg: TrainConfig) -> Path:
    if cfg.checkpoint_dir:
        return Path(cfg.checkpoint_dir)
    return DEFAULT_CHECKPOINTS / run_name(cfg)
