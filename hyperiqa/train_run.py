"""From resolved flags to a finished run folder.

Order matters for "never lose a run": everything that can fail on the user's
input (device, loader, data, model weights, folder permissions) is checked
before the folder is touched; only then is an old run replaced (--overwrite)
or continued (--resume).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hyperiqa.check_data import check_dataset
from hyperiqa.config import TrainConfig, format_resize, run_path
from hyperiqa.data import Sample, load_samples, split_samples
from hyperiqa.distributed import (
    DistInfo,
    barrier,
    init_distributed,
    per_rank_batch,
    run_on_main,
)
from hyperiqa.errors import UserError
from hyperiqa.model import ModelLoadError, build_model
from hyperiqa.run_dir import ARGS, LOG, METRICS, RESUME, RunDir, WriteError, run_logger
from hyperiqa.trainer import Interrupted, TrainData, Trainer
from pipelines.factory import (
    LoaderSettings,
    default_workers,
    delivery_dtype,
    make_loader,
    resolve_device,
    resolve_loader,
)
from pipelines.patches import eval_plan, train_plan

# Flags that change how fast a run goes, not what it computes: a resume may change them.
NON_RESULT_FLAGS = {
    "resume",
    "overwrite",
    "progress",
    "skip_check",
    "num_workers",
    "save_all_epochs",
    "checkpoint_dir",
    "dali_threads",
    "dali_prefetch",
    "dali_hw_decoder_load",
}


def resolve(
    cfg: TrainConfig, dist: DistInfo | None = None
) -> tuple[TrainConfig, torch.device, list[str]]:
    """Turn auto values into the ones used; returns notes to log.

    With torchrun (``dist``), each rank uses the GPU of its local rank and
    ``--batch_size`` stays the global batch, split evenly over the ranks.
    """
    dist = dist or DistInfo()
    device = resolve_device(cfg.device)
    if device.type != "cuda" and cfg.amp in ("bf16", "fp16"):
        raise UserError(f"--amp {cfg.amp} needs CUDA; on the CPU training runs in fp32")
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    per_rank_batch(cfg.batch_size, dist)  # refuse a batch that does not divide
    loader, loader_note = resolve_loader(cfg.loader, device)
    resolved = dataclasses.replace(
        cfg,
        device=device.type,
        loader=loader,
        amp=(cfg.amp or "bf16") if device.type == "cuda" else "off",
        num_workers=default_workers(device) if cfg.num_workers is None else cfg.num_workers,
        shuffle_window=cfg.shuffle_window or cfg.batch_size,
        channels_last=cfg.channels_last and device.type == "cuda",
        world_size=dist.world_size,
    )
    notes = [f"device: {device}", loader_note]
    if dist.enabled:
        notes.append(
            f"distributed: {dist.world_size} processes, "
            f"{cfg.batch_size // dist.world_size} patches per process and step"
        )
    return resolved, device, notes


def ensure_demo_dataset(cfg: TrainConfig) -> str | None:
    """--demo: write the synthetic dataset to --dataset_root when its JSON is missing."""
    if not cfg.demo or Path(cfg.train_json).is_file():
        return None
    from hyperiqa.synthetic import DEMO_JSON_NAME, write_demo_dataset

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


def args_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    now = cfg.to_json()
    keys = sorted((set(saved) | set(now)) - NON_RESULT_FLAGS)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def open_run_dir(cfg: TrainConfig) -> RunDir:
    """Check the folder against --resume/--overwrite without changing anything in it."""
    run = RunDir(run_path(cfg))
    if cfg.resume:
        if not run.file(ARGS).is_file():
            raise UserError(f"--resume: {run.path} holds no run to continue")
        diffs = args_differences(run.read_json(ARGS), cfg)
        if diffs:
            raise UserError(f"--resume: flags differ from {run.file(ARGS)}: " + "; ".join(diffs))
        if run.file(METRICS).is_file() and run.read_json(METRICS).get("completed"):
            raise UserError(f"--resume: the run in {run.path} is already complete")
    elif not cfg.overwrite:
        run.refuse_existing()
    run.check_writable()
    return run


def build_model_for(cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, str | None]:
    # Seed before building: the random init (hyper network, and the backbone
    # with --backbone_weights none) is part of what a seed reproduces.
    torch.manual_seed(cfg.seed)
    note = None
    try:
        model = build_model(cfg.backbone_weights, cfg.init_checkpoint)
    except ModelLoadError as e:
        if not (cfg.demo and cfg.backbone_weights == "imagenet"):
            raise UserError(str(e)) from None
        torch.manual_seed(cfg.seed)
        model = build_model("none", cfg.init_checkpoint)
        note = "demo: ImageNet weights unavailable, training from random init (--backbone_weights none)"
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, note


def split_data(
    cfg: TrainConfig, device: torch.device, samples: list[Sample]
) -> tuple[TrainData, TrainData | None]:
    train_samples, val_samples = split_samples(samples, cfg.val_split, cfg.seed)
    settings = LoaderSettings(
        resize=cfg.resize,
        batch_size=cfg.batch_size // cfg.world_size,
        device=device,
        num_workers=cfg.num_workers,
        dtype=delivery_dtype(device, cfg.amp),
        dali_threads=cfg.dali_threads,
        dali_hw_decoder_load=cfg.dali_hw_decoder_load,
        dali_prefetch=cfg.dali_prefetch,
    )
    common = {"patch_size": cfg.patch_size, "resize": cfg.resize, "window": cfg.shuffle_window}

    def data(split: list[Sample], plan) -> TrainData:
        loader = make_loader(
            cfg.loader, [s.path for s in split], [s.score for s in split], settings
        )
        scores = np.array([s.score for s in split], dtype=np.float64)
        return TrainData(loader, len(split), scores, plan)

    n_train, n_val = len(train_samples), len(val_samples)
    train = data(
        train_samples,
        lambda epoch: train_plan(
            n_train, seed=cfg.seed, epoch=epoch, patches_per_image=cfg.train_patch_num, **common
        ),
    )
    if not val_samples:
        return train, None
    fixed_val_plan = eval_plan(n_val, patches_per_image=cfg.val_patch_num, **common)
    return train, data(val_samples, lambda _epoch: fixed_val_plan)


def resume_command(run: RunDir, argv: Sequence[str], world_size: int = 1) -> str:
    """The command that continues this run: the same flags, with --resume (and the
    same number of processes: a resume with another world size is refused)."""
    argv = [a for a in argv if a != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    if "--checkpoint_dir" not in " ".join(argv):
        argv += ["--checkpoint_dir", str(run.path)]
    launcher = ["python", "train.py"]
    if world_size > 1:
        launcher = ["torchrun", "--nproc_per_node", str(world_size), "train.py"]
    return shlex.join([*launcher, *argv])


def load_saved_state(run: RunDir, device: torch.device) -> dict:
    path = run.file(RESUME)
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # written atomically, so only a damaged disk or a foreign file gets here
        raise UserError(
            f"--resume: cannot read {path} ({type(e).__name__}: {e}); "
            "start the run again with --overwrite"
        ) from None


def run_training(cfg: TrainConfig, argv: Sequence[str] | None = None) -> Path:
    """Train as ``cfg`` says; returns the run folder. Raises ``UserError`` for bad input.

    ``argv`` (default ``sys.argv[1:]``) is what the printed resume command repeats.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    dist = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    notes = [run_on_main(dist, lambda: ensure_demo_dataset(cfg))]
    cfg, device, resolve_notes = resolve(cfg, dist)
    notes += resolve_notes
    samples = load_samples(cfg.train_json, cfg.dataset_root)
    run = open_run_dir(cfg)
    if not cfg.skip_check:
        paths = [s.path for s in samples]
        run_on_main(
            dist, lambda: check_dataset(paths, workers=cfg.num_workers, progress=cfg.progress)
        )
    model, model_note = build_model_for(cfg, device)
    notes.append(model_note)
    train, val = split_data(cfg, device, samples)
    saved_state = None
    if cfg.resume and run.file(RESUME).is_file():
        saved_state = load_saved_state(run, device)

    # Everything is in place: now the folder may change (rank 0 alone writes,
    # once every rank has looked at the folder as it was).
    barrier(dist)
    if dist.is_main:
        if saved_state is not None:
            run.remove_stale_temps()  # a kill mid-write leaves its temp file behind
        elif cfg.overwrite or cfg.resume:
            run.clear_previous_run()  # resume without a saved epoch: nothing to keep
        run.write_json(ARGS, cfg.to_json())

    echo = (tqdm.write if cfg.progress else print) if dist.is_main else (lambda _line: None)
    log_file = run.file(LOG) if dist.is_main else None
    with run_logger(log_file, echo=echo) as log:
        trainer = Trainer(cfg, model, train, val, run if dist.is_main else None, log, device, dist)
        if saved_state is not None:
            trainer.load_resume_state(saved_state)
            log.info(f"resuming {run.path} after epoch {trainer.state.epoch}")
        else:
            log.info(f"run folder: {run.path}")
        for note in filter(None, notes):
            log.info(note)
        log.info(
            f"{len(samples)} images: {train.num_images} train, {val.num_images if val else 0} val; "
            f"resize {format_resize(cfg.resize)}, {cfg.train_patch_num} patches/image, "
            f"batch {cfg.batch_size}, amp {cfg.amp}"
        )
        try:
            state = trainer.fit()
        except Interrupted:
            log.info(
                f"stopped after epoch {trainer.state.epoch}; "
                f"resume with: {resume_command(run, argv, cfg.world_size)}"
                + (" (on every node, as launched)" if cfg.world_size > 1 else "")
            )
            raise
        except WriteError as e:
            # Every file is replaced atomically, so the earlier versions are
            # whole: say how to carry on once the disk is fixed.
            raise WriteError(
                f"{e}; the files written before are intact; once fixed, "
                f"resume with: {resume_command(run, argv, cfg.world_size)}"
            ) from None
        finally:
            train.loader.close()
            if val:
                val.loader.close()
        best = state.best
        if best and best["val_srcc"] is not None:
            log.info(
                f"done: best val_srcc {best['val_srcc']:.4f} (plcc {best['val_plcc']:.4f}) "
                f"at epoch {best['epoch']}"
            )
        else:
            log.info("done")
    return run.path
