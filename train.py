"""Train HyperIQA: ``python train.py [flags]`` (``--help`` lists them all).

One run, top to bottom (``train``): decide how to compute (device, precision,
loader), read and split the data, check the run folder and every image before
touching anything, build the model and the loaders, then train epoch by epoch,
writing metrics.json, best_model.pkl and a resume state after each one.
Everything that can fail on the user's input fails before the folder changes,
so a bad flag or a bad image never costs an earlier run.

The work inside an epoch is in ``hyperiqa/trainer.py``; the files of the run
folder (and resuming) in ``hyperiqa/run_folder.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hyperiqa.check_data import check_dataset
from hyperiqa.config import SPEED_FLAGS, TrainConfig, format_resize, parse_args, run_path
from hyperiqa.data import Sample, load_samples, split_samples
from hyperiqa.distributed import DistInfo, barrier, init_distributed, run_on_main
from hyperiqa.distributed import shutdown as shutdown_distributed
from hyperiqa.errors import USER_ERRORS, UserError, report
from hyperiqa.model import HyperNet, ModelLoadError, build_model
from hyperiqa.run_folder import (
    LOG,
    RESUME,
    History,
    RunFolder,
    WriteError,
    history_of,
    resume_state,
    run_logger,
)
from hyperiqa.runtime import Runtime, resolve_runtime
from hyperiqa.stopping import EXIT_INTERRUPTED, Interrupted, StopSignals
from hyperiqa.trainer import Split, Trainer, cpu_state_dict, format_epoch, is_better
from pipelines.factory import make_loader
from pipelines.patches import eval_plan, train_plan


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(argv)
    try:
        with StopSignals() as stop:
            # argv, not sys.argv: the resume command printed on a stop must repeat
            # the flags of this run, also when main() is called from Python.
            train(cfg, argv, stop)
    except USER_ERRORS as e:
        return report("train.py", e)
    except Interrupted:
        if stop.requested is None:  # set-up had not finished: nothing was written
            print("train.py: interrupted during setup, before any epoch ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        shutdown_distributed()  # a no-op without torchrun
    return 0


def train(cfg: TrainConfig, argv: Sequence[str], stop: StopSignals) -> Path:
    """Train as ``cfg`` says; returns the run folder. Raises a user error for bad input."""
    dist = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    notes = [run_on_main(dist, lambda: ensure_demo_dataset(cfg))]
    rt = resolve_runtime(
        device=cfg.device,
        amp=cfg.amp,
        loader=cfg.loader,
        num_workers=cfg.num_workers,
        batch_size=cfg.batch_size,
        channels_last=cfg.channels_last,
        dist=dist,
    )
    cfg = as_run(cfg, rt)  # what args.json records: the values actually used
    notes += [f"device: {rt.device}", rt.loader_reason, distributed_note(cfg, dist)]

    samples = load_samples(cfg.train_json, cfg.dataset_root)
    train_samples, val_samples = split_samples(samples, cfg.val_split, cfg.seed)
    run = open_run_folder(cfg)
    if not cfg.skip_check:
        paths = [s.path for s in samples]
        run_on_main(
            dist, lambda: check_dataset(paths, workers=cfg.num_workers, progress=cfg.progress)
        )
    model, model_note = build_model_for(cfg, rt)
    notes.append(model_note)
    train_split, val_split = make_splits(cfg, rt, train_samples, val_samples)
    saved = run.load_resume_state(rt.device) if cfg.resume else None

    # Everything is in place: now the folder may change (rank 0 alone writes,
    # once every rank has looked at the folder as it was).
    barrier(dist)
    if dist.is_main:
        if saved is not None:
            run.remove_stale_temps()  # a kill mid-write leaves its temp file behind
        elif cfg.overwrite or cfg.resume:
            run.clear_previous_run()  # resume without a saved epoch: nothing to keep
        run.write_json("args.json", cfg.to_json())

    echo = (tqdm.write if cfg.progress else print) if dist.is_main else (lambda _line: None)
    with run_logger(run.file(LOG) if dist.is_main else None, echo=echo) as log:
        trainer = Trainer(cfg, model, train_split, val_split, rt, stop)
        history = History()
        if saved is not None:
            trainer.restore(saved)
            history = history_of(saved)
            log.info(f"resuming {run.path} after epoch {history.epoch}")
        else:
            log.info(f"run folder: {run.path}")
        for note in filter(None, notes):
            log.info(note)
        log.info(
            f"{len(samples)} images: {train_split.num_images} train, "
            f"{val_split.num_images if val_split else 0} val; "
            f"resize {format_resize(cfg.resize)}, {cfg.train_patch_num} patches/image, "
            f"batch {cfg.batch_size}, amp {cfg.amp}"
        )
        try:
            with stop.deferred():
                for epoch in range(history.epoch + 1, cfg.epochs + 1):
                    row = trainer.run_epoch(epoch)
                    record_epoch(run if dist.is_main else None, cfg, trainer, history, row)
                    log.info(format_epoch(row, cfg.epochs))
                    if trainer.stop_agreed() and epoch < cfg.epochs:
                        raise Interrupted
        except Interrupted:
            log.info(
                f"stopped after epoch {history.epoch}; "
                f"resume with: {run.resume_command(argv, cfg.world_size)}"
                + (" (on every node, as launched)" if cfg.world_size > 1 else "")
            )
            raise
        except WriteError as e:
            # Every file is replaced atomically, so the earlier versions are
            # whole: say how to carry on once the disk is fixed.
            raise WriteError(
                f"{e}; the files written before are intact; once fixed, "
                f"resume with: {run.resume_command(argv, cfg.world_size)}"
            ) from None
        finally:
            train_split.loader.close()
            if val_split:
                val_split.loader.close()
        if dist.is_main:
            run.remove(RESUME)
        best = history.best
        if best and best["val_srcc"] is not None:
            log.info(
                f"done: best val_srcc {best['val_srcc']:.4f} (plcc {best['val_plcc']:.4f}) "
                f"at epoch {best['epoch']}"
            )
        else:
            log.info("done")
    return run.path


# -- the steps of the story --------------------------------------------------------


def ensure_demo_dataset(cfg: TrainConfig) -> str | None:
    """--demo: write the synthetic dataset to --dataset_root when its JSON is missing."""
    if not cfg.demo or Path(cfg.train_json).is_file():
        return None
    from scripts.make_demo_dataset import DEMO_JSON_NAME, write_demo_dataset

    root = Path(cfg.dataset_root)
    if Path(cfg.train_json) != root / DEMO_JSON_NAME:
        raise UserError(
            f"--demo writes its dataset to --dataset_root ({root / DEMO_JSON_NAME}), "
            f"but --train_json is {cfg.train_json}"
        )
    try:
        write_demo_dataset(root)
    except OSError as e:
        raise UserError(f"--demo: cannot write the demo dataset to {root}: {e}") from None
    return f"demo: wrote a synthetic dataset to {root}"


def as_run(cfg: TrainConfig, rt: Runtime) -> TrainConfig:
    """The flags with every ``auto`` replaced by what the runtime decided."""
    return dataclasses.replace(
        cfg,
        device=rt.device.type,
        loader=rt.loader,
        amp=rt.amp_name,
        num_workers=rt.num_workers,
        shuffle_window=cfg.shuffle_window or cfg.batch_size,
        channels_last=rt.channels_last,
        world_size=rt.dist.world_size,
    )


def distributed_note(cfg: TrainConfig, dist: DistInfo) -> str | None:
    if not dist.enabled:
        return None
    return (
        f"distributed: {dist.world_size} processes, "
        f"{cfg.batch_size // dist.world_size} patches per process and step"
    )


def open_run_folder(cfg: TrainConfig) -> RunFolder:
    """Check the folder against --resume/--overwrite without changing anything in it."""
    run = RunFolder(run_path(cfg))
    if cfg.resume:
        run.check_resume(cfg.to_json(), SPEED_FLAGS)
    elif not cfg.overwrite:
        run.refuse_existing()
    run.check_writable()
    return run


def build_model_for(cfg: TrainConfig, rt: Runtime) -> tuple[HyperNet, str | None]:
    """The model on its device; ``--backbone_weights auto`` falls back to random
    init when the ImageNet weights cannot be had (offline), and says so."""
    # Seed before building: the random init (hyper network, and the backbone
    # with --backbone_weights none) is part of what a seed reproduces.
    torch.manual_seed(cfg.seed)
    weights = "imagenet" if cfg.backbone_weights == "auto" else cfg.backbone_weights
    note = None
    try:
        model = build_model(weights, cfg.init_checkpoint)
    except ModelLoadError as e:
        if cfg.backbone_weights != "auto":
            raise UserError(str(e)) from None
        torch.manual_seed(cfg.seed)
        model = build_model("none", cfg.init_checkpoint)
        note = "ImageNet weights unavailable, training from random init (--backbone_weights auto)"
    return rt.prepare_model(model), note


def make_splits(
    cfg: TrainConfig, rt: Runtime, train_samples: list[Sample], val_samples: list[Sample]
) -> tuple[Split, Split | None]:
    """A loader, the scores and the patch plans of each split."""
    settings = rt.loader_settings(
        cfg.resize,
        dali_threads=cfg.dali_threads,
        dali_hw_decoder_load=cfg.dali_hw_decoder_load,
        dali_prefetch=cfg.dali_prefetch,
    )
    crops = {"patch_size": cfg.patch_size, "resize": cfg.resize, "window": cfg.shuffle_window}

    def split(samples: list[Sample], plan) -> Split:
        loader = make_loader(rt.loader, [s.path for s in samples], settings)
        return Split(loader, np.array([s.score for s in samples], dtype=np.float64), plan)

    n_train = len(train_samples)
    train = split(
        train_samples,
        lambda epoch: train_plan(
            n_train, seed=cfg.seed, epoch=epoch, patches_per_image=cfg.train_patch_num, **crops
        ),
    )
    if not val_samples:
        return train, None
    fixed_val_plan = eval_plan(len(val_samples), patches_per_image=cfg.val_patch_num, **crops)
    return train, split(val_samples, lambda _epoch: fixed_val_plan)


def record_epoch(
    run: RunFolder | None, cfg: TrainConfig, trainer: Trainer, history: History, row: dict
) -> None:
    """Add the epoch to the history and, on rank 0, write its files."""
    if not np.isfinite(row["train_loss"]):
        # Before anything is written: the folder stays at the last good epoch.
        raise UserError(
            f"training diverged in epoch {row['epoch']} (loss {row['train_loss']}); "
            "lower --lr and start again with --overwrite"
        )
    improved = is_better(row, history.best, has_val=trainer.val is not None)
    history.add(row, improved)
    if run is None:  # not rank 0: the history above is all this rank keeps
        return
    best = cpu_state_dict(trainer.model) if improved else None
    every = (best or cpu_state_dict(trainer.model)) if cfg.save_all_epochs else None
    state = resume_state(history, **trainer.states()) if history.epoch < cfg.epochs else None
    run.record_epoch(
        history, cfg.epochs, best_weights=best, epoch_weights=every, resume_state=state
    )


if __name__ == "__main__":
    sys.exit(main())
