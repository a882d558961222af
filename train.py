"""Train HyperIQA: ``python train.py [flags]`` (``--help`` lists them all).

One run, top to bottom (``train``): decide how to compute (device, precision,
loader), read the data sets, claim the run folder and check it and every image
before touching anything, build the model and the loaders, train epoch by
epoch (metrics.json, best_model.pkl and a resume state after each one), then
score best_model.pkl on the test sets. Everything that can fail on the user's
input fails before the folder changes, so a bad flag or a bad image never
costs an earlier run.

The work inside an epoch is in ``hyperiqa/trainer.py``; the files of the run
folder (and resuming) in ``hyperiqa/run_folder.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hyperiqa import tensorboard
from hyperiqa.check_data import check_dataset
from hyperiqa.config import SPEED_FLAGS, TrainConfig, format_resize, parse_args, run_path
from hyperiqa.data import Sample, check_disjoint, load_samples, split_samples
from hyperiqa.distributed import DistInfo, barrier, init_distributed, run_on_main
from hyperiqa.distributed import shutdown as shutdown_distributed
from hyperiqa.errors import USER_ERRORS, UserError, report
from hyperiqa.metrics import format_metric as fmt
from hyperiqa.model import HyperNet, ModelLoadError, build_model
from hyperiqa.run_folder import (
    ARGS,
    BEST,
    DATA,
    LOG,
    METRICS,
    RESUME,
    VAL_IMAGES,
    History,
    RunFolder,
    WriteError,
    history_of,
    interpreter,
    resume_state,
)
from hyperiqa.run_log import run_logger
from hyperiqa.runtime import Runtime, resolve_runtime
from hyperiqa.stopping import EXIT_INTERRUPTED, Interrupted, StopSignals
from hyperiqa.tensorboard import Board
from hyperiqa.trainer import Split, Trainer, cpu_state_dict, format_epoch, is_better
from pipelines.factory import make_loader
from pipelines.patches import eval_plan, train_plan

TRAIN, VAL = "train", "val"


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
    except Interrupted as stopped:
        if not stopped.reported:  # stopped before the run folder was touched
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
        cudnn_benchmark=cfg.cudnn_benchmark,
        dist=dist,
    )
    cfg = as_run(cfg, rt)  # what args.json records: the values actually used
    if cfg.tensorboard:
        tensorboard.require()
    notes += [f"device: {rt.device}", rt.loader_reason, distributed_note(cfg, dist)]
    sets = load_sets(cfg)
    data = describe_sets(cfg, sets)

    run = RunFolder(run_path(cfg))
    # Rank 0 holds the folder's lock for the whole run; a failed start leaves nothing.
    with run.claim() if dist.is_main else contextlib.nullcontext():
        start = open_run(cfg, run, data)
        if not cfg.skip_check:
            paths = [s.path for samples in sets.values() for s in samples]
            run_on_main(
                dist, lambda: check_dataset(paths, workers=cfg.num_workers, progress=cfg.progress)
            )
        model, model_note = build_model_for(cfg, rt)
        notes.append(model_note)
        splits = make_splits(cfg, rt, sets)
        saved = run.load_resume_state(rt.device) if start == "continue" else None

        # Everything is in place: now the folder may change (rank 0 alone writes,
        # once every rank has looked at the folder as it was).
        barrier(dist)
        if dist.is_main:
            with stop.deferred():  # a folder half prepared is not left behind by Ctrl-C
                prepare_folder(run, cfg, start, data, sets.get(VAL))

        echo = (tqdm.write if cfg.progress else print) if dist.is_main else (lambda _line: None)
        board = Board(run.path) if cfg.tensorboard and dist.is_main else None
        with run_logger(run.file(LOG) if dist.is_main else None, echo=echo) as log:
            # Known before the try: a stop anywhere in it names the right epoch.
            history = (
                history_of(saved)
                if saved is not None
                else run.history()
                if start == "finish"
                else History()
            )
            try:
                if stop.requested is not None:  # it came while the folder was prepared
                    raise Interrupted
                trainer = Trainer(cfg, model, splits[TRAIN], splits.get(VAL), rt, stop)
                trainer.on_step = board.step if board else None
                if saved is not None:
                    trainer.restore(saved)
                    log.info(f"resuming {run.path} after epoch {history.epoch}")
                elif start == "finish":
                    log.info(f"resuming {run.path}: every epoch is done, scoring the test sets")
                elif start == "start_over":
                    log.info(
                        f"resuming {run.path} from the start: it stopped before or while saving "
                        "epoch 1, so there is no resume state (epoch 1 is recomputed identically)"
                    )
                else:
                    log.info(f"run folder: {run.path}")
                for note in filter(None, notes):
                    log.info(note)
                log.info(describe_run(cfg, splits))
                main_run = run if dist.is_main else None
                with stop.deferred():
                    for epoch in range(history.epoch + 1, cfg.epochs + 1):
                        row = trainer.run_epoch(epoch)
                        record_epoch(main_run, cfg, trainer, history, row)
                        log.info(format_epoch(row, cfg.epochs))
                        if board:
                            board.epoch(row)
                        if trainer.stop_agreed() and epoch < cfg.epochs:
                            raise Interrupted
                    score_held_out(run, trainer, history, splits, log, board)
                    # Still deferred: a stop now lets the run end. The resume state
                    # goes first, so a kill between the two leaves a folder that
                    # --resume finishes (scores the test sets, marks it complete).
                    history.completed = True
                    if main_run is not None:
                        run.remove(RESUME)
                        run.write_json(METRICS, history.metrics_json(cfg.epochs))
                    for line in final_report(cfg, run, history, has_val=VAL in splits):
                        log.info(line)
            except Interrupted as stopped:
                log.info(
                    f"stopped after epoch {history.epoch}; "
                    f"resume with: {run.resume_command(argv, cfg.world_size)}"
                    + (" (on every node, as launched)" if cfg.world_size > 1 else "")
                )
                stopped.reported = True
                raise
            except WriteError as e:
                # Every file is replaced atomically, so the earlier versions are
                # whole: say how to carry on once the disk is fixed.
                raise WriteError(
                    f"{e}; the files written before are intact; once fixed, "
                    f"resume with: {run.resume_command(argv, cfg.world_size)}"
                ) from None
            finally:
                for split in splits.values():
                    split.loader.close()
                if board:
                    board.close()
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
            f"--train_json {cfg.train_json} not found; --demo generates its dataset as "
            f"{root / DEMO_JSON_NAME} (in --dataset_root), so leave --train_json out"
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
        cudnn_benchmark=rt.cudnn_benchmark,
        world_size=rt.dist.world_size,
    )


def distributed_note(cfg: TrainConfig, dist: DistInfo) -> str | None:
    if not dist.enabled:
        return None
    return (
        f"distributed: {dist.world_size} processes, "
        f"{cfg.batch_size // dist.world_size} patches per process and step"
    )


def load_sets(cfg: TrainConfig) -> dict[str, list[Sample]]:
    """Every set the run uses: train, val (carved out or --val_json), test and
    --eval_json sets. No image may sit in two of them, and validation must be
    able to rank (it chooses best_model.pkl)."""

    # Without --skip_check the image check lists missing and broken files together.
    def load(path: str, root: str) -> list[Sample]:
        return load_samples(path, root, require_files=cfg.skip_check)

    samples = load(cfg.train_json, cfg.dataset_root)
    if cfg.val_json:
        train, val = samples, load(cfg.val_json, cfg.dataset_root)
    else:
        train, val = split_samples(samples, cfg.val_split, cfg.seed)
    sets = {TRAIN: train, VAL: val} if val else {TRAIN: train}
    for name, (path, root) in cfg.eval_sets().items():
        sets[name] = load(path, root)
    check_disjoint(sets)
    if val and (len(val) < 2 or len({s.score for s in val}) < 2):
        raise UserError(
            f"the validation set ({len(val)} images, {len({s.score for s in val})} distinct "
            "scores) cannot rank images, so it cannot choose best_model.pkl; use a larger "
            "--val_split, another --val_json, or --val_split 0 (best = last epoch)"
        )
    return sets


def describe_sets(cfg: TrainConfig, sets: dict[str, list[Sample]]) -> dict:
    """data.json: per set, where it came from and a fingerprint of what it holds.

    The fingerprint covers every image name, score and file size, in order
    (the order fixes which image each plan index means). Image bytes are not
    hashed: that would read the whole dataset again (2.5 GB for KonIQ) at every
    start; a replaced or re-encoded image changes its size and is caught.
    """
    sources = {TRAIN: cfg.train_json, VAL: cfg.val_json or cfg.train_json}
    sources |= {name: path for name, (path, _root) in cfg.eval_sets().items()}
    roots = {name: root for name, (_path, root) in cfg.eval_sets().items()}
    out = {}
    for name, samples in sets.items():
        listing = [[s.image, s.score, file_size(s.path)] for s in samples]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        out[name] = {
            "metadata": sources[name],
            "dataset_root": roots.get(name, cfg.dataset_root),
            "images": len(samples),
            "fingerprint": f"sha256:{digest}",
        }
    return out


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # missing: the image check reports it before anything is written
        return None


def open_run(cfg: TrainConfig, run: RunFolder, data: dict) -> str:
    """Check the folder against --resume/--overwrite without changing anything in it;
    returns how the run starts: "new", or --resume's "continue", "finish", "start_over"."""
    inputs = [cfg.train_json, cfg.val_json, cfg.init_checkpoint, cfg.backbone_weights]
    inputs += [path for path, _root in cfg.eval_sets().values()]
    run.refuse_inputs([path for path in inputs if path and Path(path).is_file()])
    if cfg.resume:
        return run.check_resume(cfg.to_json(), data, SPEED_FLAGS)
    if not cfg.overwrite:
        run.refuse_existing()
    return "new"


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


def make_splits(cfg: TrainConfig, rt: Runtime, sets: dict[str, list[Sample]]) -> dict[str, Split]:
    """A loader, the scores and the patch plans of each set. Training crops are
    random per epoch; every other set is cut at the fixed evaluation crops."""
    settings = rt.loader_settings(
        cfg.resize,
        dali_threads=cfg.dali_threads,
        dali_hw_decoder_load=cfg.dali_hw_decoder_load,
        dali_prefetch=cfg.dali_prefetch,
    )
    crops = {"patch_size": cfg.patch_size, "resize": cfg.resize, "window": cfg.shuffle_window}
    splits = {}
    for name, samples in sets.items():
        n = len(samples)
        if name == TRAIN:

            def plan(epoch: int, n: int = n) -> object:
                return train_plan(
                    n, seed=cfg.seed, epoch=epoch, patches_per_image=cfg.train_patch_num, **crops
                )

        else:
            fixed = eval_plan(n, patches_per_image=cfg.val_patch_num, **crops)

            def plan(_epoch: int, fixed: object = fixed) -> object:
                return fixed

        loader = make_loader(rt.loader, [s.path for s in samples], settings)
        splits[name] = Split(loader, np.array([s.score for s in samples], np.float64), plan)
    return splits


def prepare_folder(
    run: RunFolder, cfg: TrainConfig, start: str, data: dict, val: list[Sample] | None
) -> None:
    """Rank 0, once set-up has succeeded: clear what a new start replaces, then
    record the flags, the data and the validation images."""
    if start in ("continue", "finish"):
        run.remove_stale_temps()  # a kill mid-write leaves its temp file behind
    elif start == "start_over" or cfg.overwrite:
        run.clear_previous_run()  # --overwrite, or a resume with nothing to keep
    run.write_json(ARGS, cfg.to_json())
    run.write_json(DATA, data)
    if val:  # evaluate.py --test_json RUN/val_images.json reproduces the val metrics
        run.write_json(VAL_IMAGES, [{"image": s.image, "score": s.score} for s in val])


def describe_run(cfg: TrainConfig, splits: dict[str, Split]) -> str:
    counts = ", ".join(f"{split.num_images} {name}" for name, split in splits.items())
    per = "patch" if cfg.train_patch_num == 1 else "patches"
    return (
        f"images: {counts}; resize {format_resize(cfg.resize)}, "
        f"{cfg.train_patch_num} {per} per training image, batch {cfg.batch_size}, amp {cfg.amp}"
    )


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


def score_held_out(
    run: RunFolder,
    trainer: Trainer,
    history: History,
    splits: dict[str, Split],
    log: logging.Logger,
    board: Board | None,
) -> None:
    """Score best_model.pkl (read back from the folder, so a resumed run scores
    exactly what an uninterrupted one does) on the test and --eval_json sets."""
    held_out = {name: s for name, s in splits.items() if name not in (TRAIN, VAL)}
    if not held_out or history.scores:
        return
    barrier(trainer.dist)  # rank 0 has written best_model.pkl
    best = torch.load(run.file(BEST), map_location=trainer.rt.device, weights_only=True)
    trainer.model.load_state_dict(best)
    epoch = history.best["epoch"] if history.best else history.epoch
    for name, split in held_out.items():
        if trainer.stop_agreed():  # Ctrl-C while scoring: --resume finishes the scoring
            raise Interrupted
        result = {"epoch": epoch, **trainer.score(split)}
        history.scores[name] = result
        if board:
            board.scores(name, result)
        log.info(
            f"{name} (best_model.pkl, epoch {epoch}): srcc {fmt(result['srcc'])}  "
            f"plcc {fmt(result['plcc'])}  krcc {fmt(result['krcc'])}  "
            f"{result['num_images']} images"
        )


def final_report(cfg: TrainConfig, run: RunFolder, history: History, has_val: bool) -> list[str]:
    """What happened, where the files are, and what to run next."""
    best = history.best
    if best and best["val_srcc"] is not None:
        lines = [
            f"done: best val_srcc {best['val_srcc']:.4f} (plcc {best['val_plcc']:.4f}) "
            f"at epoch {best['epoch']} of {cfg.epochs}"
        ]
    elif has_val:
        lines = [
            f"done: val SRCC was undefined in every epoch (constant predictions), so "
            f"best_model.pkl is epoch {best['epoch'] if best else history.epoch}, the first one"
        ]
    else:
        lines = [f"done: no validation set, so best_model.pkl is the last epoch ({history.epoch})"]
    q = shlex.quote  # the commands work as printed, whatever the folder names
    python, ckpt = q(interpreter()), q(str(run.file(BEST)))
    lines.append(f"files: {run.path} (best_model.pkl, metrics.json, train.log)")
    if has_val:
        lines.append(
            f"evaluate: {python} evaluate.py --checkpoint {ckpt} "
            f"--test_json {q(str(run.file(VAL_IMAGES)))} --dataset_root {q(cfg.dataset_root)}"
        )
    lines.append(f"predict:  {python} predict.py --checkpoint {ckpt} IMAGE ...")
    curves = q(str(run.path / "curves.png"))
    lines.append(f"plot:     {python} scripts/plot_metrics.py {q(str(run.path))} -o {curves}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
