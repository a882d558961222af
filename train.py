"""Train HyperIQA: ``python train.py [flags]`` (``--help`` lists them all).

One run, top to bottom (``train``): resolve the flags into the run's spec (every
decision: device, processes, precision, loader), read the data sets, claim the
run folder and check it and every image before touching anything, build the
model and the loaders, then ``fit``: epoch after epoch (metrics.json,
best_model.pkl and a resume state after each), then best_model.pkl on the
held-out sets. Everything that can fail on the user's input fails before the
folder changes, so a bad flag or a bad image never costs an earlier run.

Where the rest lives: the flags and ``resolve`` in hyperiqa/config.py, the
epochs in hyperiqa/fit.py, the run folder's files (and resuming) in
hyperiqa/run_folder.py, the data sets in hyperiqa/data.py.
"""

from __future__ import annotations

from hyperiqa.stopping import quiet_start  # the standard library only: loads at once

if __name__ == "__main__":  # a command, not an import: Ctrl-C while torch loads is one line
    quiet_start("train.py", "interrupted during setup, before any epoch ran")

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from hyperiqa import tensorboard
from hyperiqa.atomic import WriteError
from hyperiqa.check_data import check_dataset
from hyperiqa.config import parse_args, resolve
from hyperiqa.data import Sample, describe_sets, load_sets
from hyperiqa.distributed import barrier, run_on_main
from hyperiqa.distributed import shutdown as shutdown_distributed
from hyperiqa.errors import USER_ERRORS, UserError, report
from hyperiqa.fit import ImageSet, final_report, fit, image_sets, prepare_trainer
from hyperiqa.model import HyperNet, ModelLoadError, build_model
from hyperiqa.run_folder import RunFolder, Start
from hyperiqa.spec import VAL, RunSpec
from hyperiqa.stopping import EXIT_INTERRUPTED, Interrupted, StopSignals
from hyperiqa.tensorboard import Board

HERE = Path(__file__).parent  # train.py, evaluate.py and predict.py live together


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        with StopSignals() as stop:
            # argv, not sys.argv: the resume command printed on a stop must repeat
            # the flags of this run, also when main() is called from Python.
            train(args, argv, stop)
    except USER_ERRORS as e:
        return report("train.py", e)
    except Interrupted as stopped:
        if not stopped.reported:  # stopped before the run folder was touched
            print("train.py: interrupted during setup, before any epoch ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        shutdown_distributed()  # a no-op without torchrun
    return 0


def train(args: argparse.Namespace, argv: Sequence[str], stop: StopSignals) -> Path:
    """Train as the flags say; returns the run folder. Raises a user error for bad input."""
    spec = resolve(args)
    rt, dist = spec.runtime, spec.runtime.dist
    notes = [run_on_main(dist, lambda: ensure_demo_dataset(spec))]
    if spec.tensorboard:
        tensorboard.require()
    notes += [f"device: {rt.device}", rt.loader_reason, distributed_note(spec)]
    samples = load_sets(spec)
    data = describe_sets(spec, samples)

    run = RunFolder(
        spec.run_dir, epochs=spec.epochs, save_all_epochs=spec.save_all_epochs, writes=dist.is_main
    )
    # Rank 0 holds the folder's lock for the whole run; a failed start leaves nothing.
    with run.claim():
        start = run.open(
            spec.to_json(), data, spec.input_files(), resume=spec.resume, overwrite=spec.overwrite
        )
        if not spec.skip_check:
            paths = [s.path for listed in samples.values() for s in listed]
            run_on_main(dist, lambda: check_dataset(paths, rt.num_workers, spec.progress))
        model, model_note = build_model_for(spec, start)
        notes.append(model_note)
        sets = image_sets(spec, samples)
        trainer = prepare_trainer(spec, model, sets, run, stop)

        # Everything is in place: now the folder may change (rank 0 alone writes,
        # once every rank has looked at the folder as it was).
        barrier(dist)
        with stop.deferred():  # a folder half prepared is not left behind by Ctrl-C
            run.begin(start, spec.to_json(), data, val_images(samples))

        echo = (tqdm.write if spec.progress else print) if dist.is_main else (lambda _line: None)
        board = Board(run.path) if spec.tensorboard and dist.is_main else None
        with run.logger(echo) as log:
            try:
                if stop.requested is not None:  # it came while the folder was prepared
                    raise Interrupted
                log.info(start_line(start, run))
                for note in filter(None, notes):
                    log.info(note)
                log.info(describe_run(spec, sets))
                with stop.deferred():  # a stop during the report lets the run end
                    fit(trainer, run, log, board)
                    for line in final_report(spec, run, HERE):
                        log.info(line)
            except Interrupted as stopped:
                resume = run.resume_command(Path(__file__), argv, dist.world_size)
                on_every_node = " (on every node, as launched)" if dist.world_size > 1 else ""
                log.info(
                    f"stopped after epoch {run.history.epoch}; resume with: {resume}{on_every_node}"
                )
                stopped.reported = True
                raise
            except WriteError as e:
                # Every file is replaced atomically, so the earlier versions are
                # whole: say how to carry on once the disk is fixed.
                resume = run.resume_command(Path(__file__), argv, dist.world_size)
                raise WriteError(
                    f"{e}; the files written before are intact; once fixed, resume with: {resume}"
                ) from None
            finally:
                for image_set in sets.values():
                    image_set.loader.close()
                if board:
                    board.close()
    return run.path


# -- the steps of the story --------------------------------------------------------------


def ensure_demo_dataset(spec: RunSpec) -> str | None:
    """--demo: write the synthetic dataset to --dataset_root when its JSON is missing."""
    if not spec.demo or Path(spec.train_json).is_file():
        return None
    from hyperiqa.demo_data import DEMO_JSON_NAME, write_demo_dataset  # --demo's alone

    root = Path(spec.dataset_root)
    if Path(spec.train_json) != root / DEMO_JSON_NAME:
        raise UserError(
            f"--train_json {spec.train_json} not found; --demo generates its dataset as "
            f"{root / DEMO_JSON_NAME} (in --dataset_root), so leave --train_json out"
        )
    try:
        write_demo_dataset(root)
    except OSError as e:
        raise UserError(f"--demo: cannot write the demo dataset to {root}: {e}") from None
    return f"demo: wrote a synthetic dataset to {root}"


def distributed_note(spec: RunSpec) -> str | None:
    dist = spec.runtime.dist
    if not dist.enabled:
        return None
    return (
        f"distributed: {dist.world_size} processes, "
        f"{spec.runtime.batch_per_rank} patches per process and step"
    )


def build_model_for(spec: RunSpec, start: Start) -> tuple[HyperNet, str | None]:
    """The model on its device; ``--backbone_weights auto`` falls back to random
    init when the ImageNet weights cannot be had (offline), and says so."""
    # Seed before building: the random init (hyper network, and the backbone
    # with --backbone_weights none) is part of what a seed reproduces.
    torch.manual_seed(spec.seed)
    weights, note = spec.backbone_weights, None
    if start in (Start.CONTINUE, Start.FINISH):
        # The weights come from the run folder (the resume state or best_model.pkl):
        # nothing to download or read that would be overwritten at once.
        weights, init_checkpoint = "none", None
    else:
        init_checkpoint = spec.init_checkpoint
        if weights == "auto":
            weights = "imagenet" if spec.backbone == "resnet50" else "none"
    try:
        model = build_model(weights, init_checkpoint, spec.backbone)
    except ModelLoadError as e:
        if spec.backbone_weights != "auto":
            raise UserError(str(e)) from None
        torch.manual_seed(spec.seed)
        model = build_model("none", init_checkpoint, spec.backbone)
        note = "ImageNet weights unavailable, training from random init (--backbone_weights auto)"
    return spec.runtime.prepare_model(model), note


def val_images(samples: dict[str, list[Sample]]) -> list[dict] | None:
    """val_images.json: ``evaluate.py --test_json RUN/val_images.json`` reproduces
    the val metrics."""
    val = samples.get(VAL)
    return [{"image": s.image, "score": s.label} for s in val] if val else None


def start_line(start: Start, run: RunFolder) -> str:
    if start is Start.CONTINUE:
        return f"resuming {run.path} after epoch {run.history.epoch}"
    if start is Start.FINISH:
        return f"resuming {run.path}: every epoch is done, scoring the test sets"
    if start is Start.START_OVER:
        return (
            f"resuming {run.path} from the start: it stopped before or while saving "
            "epoch 1, so there is no resume state (epoch 1 is recomputed identically)"
        )
    return f"run folder: {run.path}"


def describe_run(spec: RunSpec, sets: dict[str, ImageSet]) -> str:
    counts = ", ".join(f"{s.num_images} {name}" for name, s in sets.items())
    per = "patch" if spec.train_patch_num == 1 else "patches"
    return (
        f"images: {counts}; resize {spec.resize[0]}x{spec.resize[1]}, "
        f"{spec.train_patch_num} {per} per training image, batch {spec.batch_size}, "
        f"amp {spec.runtime.amp_name}"
    )


if __name__ == "__main__":
    sys.exit(main())
