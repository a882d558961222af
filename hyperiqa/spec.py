"""``RunSpec``: everything a training run is, decided, with no ``auto`` left.

``hyperiqa.config.resolve`` builds it from the command line, once; everything
below the command line (the data sets, the run folder, ``fit``) receives it and
nothing else. ``args.json`` is written from it, one key per flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperiqa.arg_types import format_resize, named

if TYPE_CHECKING:  # torch-free at run time: the tools that read run folders import this
    from hyperiqa.runtime import Runtime

# The sets every run has by itself; held-out sets are "test" (--test_json) and
# the --eval_json names, which may not take one of these names.
TRAIN, VAL, TEST = "train", "val", "test"


@dataclass(frozen=True)
class HeldOutSet:
    """A set best_model.pkl is scored on at the end: its metadata JSON and image root."""

    metadata: str
    dataset_root: str


@dataclass(frozen=True)
class RunSpec:
    # -- data
    dataset_root: str
    train_json: str
    val_split: float  # share of train_json held out for validation (0 with --val_json)
    val_json: str | None
    test_json: str | None
    eval_json: tuple[str, ...]  # NAME=FILE, as typed
    eval_root: tuple[str, ...]  # NAME=DIR, as typed
    # -- crops
    resize: tuple[int, int]  # (H, W) every image is resized to
    patch_size: int
    train_patch_num: int  # random crops per training image and epoch
    val_patch_num: int  # fixed crops per image of every other set
    shuffle_window: int  # images whose patches are shuffled together
    # -- optimisation
    lr: float
    lr_ratio: float
    weight_decay: float
    batch_size: int  # patches per step, over all processes
    epochs: int
    seed: int
    # -- model
    backbone: str  # a name of hyperiqa.model.BACKBONES
    backbone_weights: str  # imagenet, none, auto or a file
    init_checkpoint: str | None
    # -- the run
    run_dir: Path
    checkpoint_dir: str | None  # as typed (None: the default folder, run_dir)
    save_all_epochs: bool
    tensorboard: bool
    overwrite: bool
    resume: bool
    demo: bool
    skip_check: bool
    progress: bool
    # -- how it computes: device, processes, precision, loader, workers
    runtime: Runtime

    def held_out_sets(self) -> dict[str, HeldOutSet]:
        """The sets scored with best_model.pkl at the end, by name ("test" first)."""
        roots = dict(named(text) for text in self.eval_root)
        sets = {TEST: HeldOutSet(self.test_json, self.dataset_root)} if self.test_json else {}
        for text in self.eval_json:
            name, path = named(text)
            sets[name] = HeldOutSet(path, roots.get(name, self.dataset_root))
        return sets

    def input_files(self) -> list[str]:
        """Files the run reads (its run folder may not write over them)."""
        files = [self.train_json, self.val_json, self.init_checkpoint, self.backbone_weights]
        files += [s.metadata for s in self.held_out_sets().values()]
        return [f for f in files if f and Path(f).is_file()]

    def to_json(self) -> dict[str, Any]:
        """args.json: every flag with the value used (the runtime's decisions included)."""
        rt = self.runtime
        return {
            "dataset_root": self.dataset_root,
            "train_json": self.train_json,
            "val_split": self.val_split,
            "val_json": self.val_json,
            "test_json": self.test_json,
            "eval_json": list(self.eval_json),
            "eval_root": list(self.eval_root),
            "lr": self.lr,
            "lr_ratio": self.lr_ratio,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "seed": self.seed,
            "patch_size": self.patch_size,
            "train_patch_num": self.train_patch_num,
            "val_patch_num": self.val_patch_num,
            "checkpoint_dir": self.checkpoint_dir,
            "save_all_epochs": self.save_all_epochs,
            "tensorboard": self.tensorboard,
            "loader": rt.loader,
            "device": rt.device.type,
            "num_workers": rt.num_workers,
            "resize": format_resize(self.resize),
            "shuffle_window": self.shuffle_window,
            "amp": rt.amp_name,
            "channels_last": rt.channels_last,
            "compile": rt.compile,
            "backbone": self.backbone,
            "backbone_weights": self.backbone_weights,
            "init_checkpoint": self.init_checkpoint,
            "overwrite": self.overwrite,
            "resume": self.resume,
            "demo": self.demo,
            "skip_check": self.skip_check,
            "progress": self.progress,
            "dali_threads": rt.dali_threads,
            "dali_hw_decoder_load": rt.dali_hw_decoder_load,
            "dali_prefetch": rt.dali_prefetch,
            "cudnn_benchmark": rt.cudnn_benchmark,
            "world_size": rt.dist.world_size,
        }


# args.json keys added since the first release, with the value every run
# before them used: a resume of such a run compares against these.
ADDED_SINCE_FIRST_RELEASE = {"backbone": "resnet50"}

# args.json keys a resume may change: how fast a run goes and what it shows,
# not what it computes. Every other key must match the run being resumed.
RESUME_MAY_CHANGE = frozenset(
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
