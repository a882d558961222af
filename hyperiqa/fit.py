"""Training a run: ``fit`` runs the epochs, keeps the best one, scores the
held-out sets with it and reports.

Top to bottom: ``fit`` (the epoch loop), ``image_sets`` (what each set feeds),
``Trainer`` (one epoch of training, one pass of prediction), ``TrainStep``
(one optimisation step, shared with the benchmark), the optimiser and its
learning-rate schedule, and the report.

The loop never synchronises with the device per step: losses and predictions
pile up on the device and are read once per epoch (and every few dozen steps
for the progress bar).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from hyperiqa.data import Sample
from hyperiqa.distributed import any_rank, barrier, gather_arrays
from hyperiqa.errors import UserError
from hyperiqa.history import Best, EpochRecord, HeldOutResult, History, format_correlation
from hyperiqa.model import HyperNet, ModelLoadError, load_weights, param_groups
from hyperiqa.progress import progress_bar
from hyperiqa.run_folder import BEST, RESUME, VAL_IMAGES, RunFolder, shell_path
from hyperiqa.runtime import Runtime
from hyperiqa.scoring import correlations, per_image_mean, plcc, predict_patches, srcc
from hyperiqa.spec import TRAIN, VAL, RunSpec
from hyperiqa.stopping import Interrupted, StopSignals
from hyperiqa.tensorboard import Board
from pipelines.factory import make_loader
from pipelines.loader import PatchLoader
from pipelines.patches import PatchPlan, eval_plan, train_plan

PROGRESS_EVERY = 20  # steps between progress-bar updates (each one reads the loss: a sync)
# The first epoch a process runs says how long the run will take after this many
# steps beyond the first (which pays for warm-up); an epoch line can be minutes away.
ETA_STEPS = 5
# Validation is a forward pass only: about 3x faster per patch than a training step.
VAL_SPEEDUP = 3.0


def fit(
    trainer: Trainer, run: RunFolder, log: logging.Logger, board: Board | None = None
) -> History:
    """Train from where ``run`` stands (its history; the trainer holds its saved
    states, see ``prepare_trainer``) to the last epoch, then score best_model.pkl on
    the held-out sets and mark the run complete.

    A stop signal ends the run at the next safe point (Interrupted); every file
    written by then is whole, and --resume continues from the last epoch."""
    spec, stop = trainer.spec, trainer.stop
    trainer.on_step = board.step if board else None
    trainer.on_eta = log.info
    history = run.history
    with stop.deferred():
        for epoch in range(history.epoch + 1, spec.epochs + 1):
            record = trainer.run_epoch(epoch)
            if not math.isfinite(record.train_loss):
                # Before anything is written: the folder stays at the last good epoch.
                raise UserError(
                    f"training diverged in epoch {epoch} (loss {record.train_loss}); "
                    "lower --lr and start again with --overwrite"
                )
            is_best = is_better(record, history.best, trainer.val is not None)
            run.record(record, is_best, trainer.states)
            log.info(format_epoch(record, spec.epochs) + remaining(history, spec.epochs))
            if board:
                board.epoch(record)
            if trainer.stop_agreed() and epoch < spec.epochs:
                raise Interrupted
        # Still deferred: a stop from here on lets the run end.
        held_out = trainer.held_out
        run.finish(score_held_out(trainer, run, held_out, log, board) if held_out else {})
    return history


def prepare_trainer(
    spec: RunSpec, model: HyperNet, sets: dict[str, ImageSet], run: RunFolder, stop: StopSignals
) -> Trainer:
    """The trainer of ``model`` on ``sets``, with the states a resume continues from.
    Called before the run folder changes: a resume state that does not fit (tampered,
    or from another model) is refused with the folder as it was."""
    trainer = Trainer(spec, model, sets, stop)
    if run.saved_states is not None:
        try:
            trainer.restore(run.saved_states)
        except (RuntimeError, TypeError, ValueError, KeyError) as e:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise UserError(
                f"--resume: {run.file(RESUME)} does not fit this run's model and optimizer "
                f"({reason}); nothing was changed. Start the run again with --overwrite"
            ) from None
    return trainer


def is_better(record: EpochRecord, best: Best | None, has_val: bool) -> bool:
    """Does this epoch replace best_model.pkl? Without validation every epoch
    does (the last one wins); with it, a higher val SRCC does. An undefined
    SRCC (constant predictions) never beats a defined one, but the first
    epoch always writes a best_model.pkl, so a run never ends without one."""
    if not has_val or best is None:
        return True
    if record.val_srcc is None:
        return False
    return best.val_srcc is None or record.val_srcc > best.val_srcc


def score_held_out(
    trainer: Trainer,
    run: RunFolder,
    sets: dict[str, ImageSet],
    log: logging.Logger,
    board: Board | None,
) -> dict[str, HeldOutResult]:
    """best_model.pkl (read back from the folder, so a resumed run scores exactly
    what an uninterrupted one does) on the test and --eval_json sets."""
    barrier(trainer.rt.dist)  # rank 0 has written best_model.pkl
    try:
        load_weights(trainer.model, run.file(BEST), BEST)
    except ModelLoadError as e:
        raise UserError(
            f"cannot score the held-out sets: {e}; every epoch is recorded and the run's "
            f"other files in {run.path} are intact"
        ) from None
    best = run.history.best
    epoch = best.epoch if best else run.history.epoch
    results = {}
    for name, image_set in sets.items():
        if trainer.stop_agreed():  # Ctrl-C while scoring: --resume finishes the scoring
            raise Interrupted
        result = HeldOutResult(epoch, correlations(trainer.predict(image_set), image_set.labels))
        results[name] = result
        if board:
            board.held_out(name, result)
        c = result.correlations
        log.info(
            f"{name} ({BEST}, epoch {epoch}): srcc {format_correlation(c.srcc)}  "
            f"plcc {format_correlation(c.plcc)}  krcc {format_correlation(c.krcc)}  "
            f"{c.num_images} images"
        )
    return results


# -- what each set feeds --------------------------------------------------------------------


@dataclass
class ImageSet:
    """One set of images as training sees it: a loader, the labels, the plan maker."""

    loader: PatchLoader
    labels: np.ndarray  # per image, float64, for the correlations
    plan: Callable[[int], PatchPlan]  # epoch -> plan (every set but training ignores the epoch)

    @property
    def num_images(self) -> int:
        return len(self.labels)


def image_sets(spec: RunSpec, samples: dict[str, list[Sample]]) -> dict[str, ImageSet]:
    """A loader, the labels and the patch plans of each set. Training crops are
    random per epoch; every other set is cut at the fixed evaluation crops."""
    settings = spec.runtime.loader_settings(spec.resize)
    crops = {"patch_size": spec.patch_size, "resize": spec.resize, "window": spec.shuffle_window}
    sets = {}
    for name, listed in samples.items():
        n = len(listed)
        if name == TRAIN:

            def plan(epoch: int, n: int = n) -> PatchPlan:
                return train_plan(
                    n, seed=spec.seed, epoch=epoch, patches_per_image=spec.train_patch_num, **crops
                )

        else:
            fixed = eval_plan(n, patches_per_image=spec.val_patch_num, **crops)

            def plan(_epoch: int, fixed: PatchPlan = fixed) -> PatchPlan:
                return fixed

        loader = make_loader(spec.runtime.loader, [s.path for s in listed], settings)
        sets[name] = ImageSet(loader, np.array([s.label for s in listed], np.float64), plan)
    return sets


# -- one epoch --------------------------------------------------------------------------------


class Trainer:
    """Trains ``model``; with torchrun, one Trainer per rank, each on its shard.

    Every rank computes everything (the gathered metrics too, so every rank
    takes the same decisions); writing files is the run folder's business.
    """

    def __init__(
        self, spec: RunSpec, model: HyperNet, sets: dict[str, ImageSet], stop: StopSignals
    ) -> None:
        self.spec, self.model, self.stop = spec, model, stop
        self.train, self.val = sets[TRAIN], sets.get(VAL)
        # The test and --eval_json sets, scored with best_model.pkl at the end.
        self.held_out = {name: s for name, s in sets.items() if name not in (TRAIN, VAL)}
        self.rt = rt = spec.runtime
        # Called every PROGRESS_EVERY steps with (global step, loss, backbone lr,
        # hypernet lr): TensorBoard's per-step curve.
        self.on_step: Callable[[int, float, float, float], None] | None = None
        # Called once, early in the first epoch this process runs, with a line
        # saying how long the run will take.
        self.on_eta: Callable[[str], None] | None = None
        # DDP averages gradients over ranks during backward; ``self.model`` stays
        # the plain module for prediction and for state_dicts without "module.".
        self.net: torch.nn.Module = model
        if rt.dist.enabled:
            device_ids = [rt.device.index] if rt.cuda else None
            self.net = DistributedDataParallel(model, device_ids=device_ids)
        self.optimizer = make_optimizer(
            model, lr=spec.lr, lr_ratio=spec.lr_ratio, weight_decay=spec.weight_decay
        )
        # Compiled for training only: prediction and state_dicts use the plain module.
        step_net = torch.compile(self.net) if rt.compile else self.net
        self.step = TrainStep(step_net, self.optimizer, rt)
        # Targets are looked up on the device by image index: uploaded once.
        self.train_targets = torch.tensor(self.train.labels, dtype=torch.float32, device=rt.device)

    # -- what a resume restores ------------------------------------------------------------

    def states(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, saved: dict) -> None:
        """The states of ``states()``, as loaded on the CPU: each goes where it belongs."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])

    # -- one epoch -------------------------------------------------------------------------

    def run_epoch(self, epoch: int) -> EpochRecord:
        """Train one epoch, then validate."""
        start = time.perf_counter()
        try:
            trained = self.train_one_epoch(epoch)
            val_srcc, val_plcc = self.validate()
        except Exception:
            # Ctrl-C reaches the whole process group. A decode worker still
            # starting up (spawn/forkserver: before it could ignore the signal)
            # dies of it, and the loader then fails; the stop is the real story.
            if self.stop.requested is not None:
                raise Interrupted from None
            raise
        seconds = round(time.perf_counter() - start, 3)
        return replace(trained, val_srcc=val_srcc, val_plcc=val_plcc, epoch_seconds=seconds)

    def stop_agreed(self) -> bool:
        """Did any rank get a stop signal? (A collective: every rank must ask.)"""
        return any_rank(self.stop.requested is not None, self.rt.dist, self.rt.device)

    def _safe_steps(self, full_plan: PatchPlan) -> float:
        """Steps every rank takes this epoch. Ranks may get a batch more or less
        (whole windows are sharded); DDP's Join covers the uneven tail, and a
        stop is only agreed on (a collective) within the steps all ranks take."""
        dist = self.rt.dist
        if not dist.enabled:
            return math.inf
        ws, batch = dist.world_size, self.rt.batch_per_rank
        return min(math.ceil(full_plan.shard(r, ws).num_patches / batch) for r in range(ws))

    def _should_stop(self, step: int, safe_steps: float) -> bool:
        asked = self.stop.requested is not None
        if not self.rt.dist.enabled:
            return asked
        if step % PROGRESS_EVERY or step > safe_steps:
            return False
        return any_rank(asked, self.rt.dist, self.rt.device)

    def train_one_epoch(self, epoch: int) -> EpochRecord:
        """Train one epoch: its record, without the validation fields."""
        spec, net, dist = self.spec, self.net, self.rt.dist
        rates = apply_schedule(self.optimizer, epoch, lr=spec.lr, lr_ratio=spec.lr_ratio)
        full_plan = self.train.plan(epoch)
        plan = full_plan.shard(dist.rank, dist.world_size)
        safe_steps = self._safe_steps(full_plan)
        first_step = (epoch - 1) * math.ceil(plan.num_patches / self.rt.batch_per_rank)
        net.train()
        loss_sum = torch.zeros((), device=self.rt.device)
        preds, image_idx = [], []
        seen = 0
        start = time.perf_counter()
        bar = progress_bar(
            total=plan.num_patches,
            desc=f"epoch {epoch}/{spec.epochs}",
            unit="patch",
            show=spec.progress and dist.is_main,
        )
        join = Join([net]) if dist.enabled else contextlib.nullcontext()
        with bar, join:
            for step, batch in enumerate(self.train.loader.batches(plan), 1):
                if self._should_stop(step, safe_steps):
                    raise Interrupted
                targets = self.train_targets[batch.image_idx]
                pred, loss = self.step(batch.images, targets)
                n = targets.shape[0]
                loss_sum += loss * n
                preds.append(pred)
                image_idx.append(batch.image_idx)
                seen += n
                bar.update(n)
                if self.on_eta and step in (1, 1 + ETA_STEPS):
                    self._estimate(step, epoch, plan.num_patches)
                if step % PROGRESS_EVERY == 0 and (self.on_step or not bar.disable):
                    value = loss.item()  # the only per-step sync
                    bar.set_postfix(loss=f"{value:.3f}")
                    if self.on_step:
                        self.on_step(first_step + step, value, rates.backbone, rates.hypernet)
        train_seconds = time.perf_counter() - start

        # One device-to-host copy per epoch; with torchrun, every rank gets all ranks' patches.
        pred_np, idx_np = (
            torch.cat(t).cpu().numpy() if t else np.zeros(0, dtype=dtype)  # empty shard
            for t, dtype in ((preds, np.float32), (image_idx, np.int64))
        )
        pred_np, idx_np, totals = gather_arrays(
            dist, pred_np, idx_np, np.array([[loss_sum.item(), seen]])
        )
        loss_total, seen = totals.sum(axis=0)
        seen = int(seen)
        return EpochRecord(
            epoch=epoch,
            train_loss=float(loss_total / max(seen, 1)),
            train_srcc=srcc(pred_np, self.train.labels[idx_np]),
            lr_backbone=rates.backbone,
            lr_hypernet=rates.hypernet,
            train_patches=seen,
            train_seconds=round(train_seconds, 3),
            train_patches_per_s=round(seen / train_seconds, 2) if train_seconds > 0 else None,
        )

    def _estimate(self, step: int, epoch: int, patches: int) -> None:
        """At step 1 note the time, at step 1 + ETA_STEPS say how long the run will take
        (two host syncs in a run: the timing must include the device's work)."""
        if self.rt.cuda:
            torch.cuda.synchronize(self.rt.device)
        now = time.perf_counter()
        if step == 1:
            self._eta_start = now
            return
        per_patch = (now - self._eta_start) / (ETA_STEPS * self.rt.batch_per_rank)
        val_patches = self.val.plan(0).num_patches / self.rt.dist.world_size if self.val else 0
        per_epoch = per_patch * (patches + val_patches / VAL_SPEEDUP)
        left = self.spec.epochs - epoch + 1
        self.on_eta(
            f"eta: about {duration(per_epoch * left)} for {left} epoch{'s' * (left > 1)} "
            f"({duration(per_epoch)} each, from the speed of steps 2-{step})"
        )
        self.on_eta = None

    def predict(self, image_set: ImageSet) -> np.ndarray:
        """Per-image scores of ``image_set`` at its fixed crops, with the current weights.

        Each rank predicts its shard with the plain module (no gradient sync
        needed); the per-image means are taken over all ranks' patches.
        """
        dist = self.rt.dist
        plan = image_set.plan(0).shard(dist.rank, dist.world_size)
        show = self.spec.progress and dist.is_main
        pred, image_idx = predict_patches(self.model, image_set.loader, plan, self.rt, show)
        pred, image_idx = gather_arrays(dist, pred, image_idx)
        return per_image_mean(pred, image_idx, image_set.num_images)

    def validate(self) -> tuple[float | None, float | None]:
        """(val SRCC, val PLCC), or (None, None) without a validation set."""
        if self.val is None:
            return None, None
        pred = self.predict(self.val)
        return srcc(pred, self.val.labels), plcc(pred, self.val.labels)


class TrainStep:
    """One optimisation step: autocast forward, L1 on raw scores, backward, Adam.

    Shared by the trainer and the benchmark, so the benchmark times the real step.
    """

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime) -> None:
        self.net, self.optimizer, self.rt = net, optimizer, rt
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.amp == torch.float16)

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (predictions, loss), detached and still on the device: no host sync."""
        with self.rt.autocast():
            pred = self.net(self.rt.prepare_input(images))
        loss = F.l1_loss(pred.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return pred.detach().float(), loss.detach()


# -- the optimiser and its schedule -----------------------------------------------------------


class LearningRates(NamedTuple):
    backbone: float
    hypernet: float


def learning_rates(epoch: int, lr: float, lr_ratio: float) -> LearningRates:
    """Learning rates of the two Adam groups for a 1-based ``epoch``.

    Epochs 1-6 train at ``lr`` with the hyper network at ``lr * lr_ratio``;
    epochs 7-8 drop both by 10x; from epoch 9 the hyper network also loses its
    ratio and trains at the backbone's rate.
    """
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    if epoch <= 6:
        return LearningRates(lr, lr * lr_ratio)
    if epoch <= 8:
        return LearningRates(lr / 10, lr / 10 * lr_ratio)
    return LearningRates(lr / 10, lr / 10)


def make_optimizer(
    model: HyperNet, *, lr: float, lr_ratio: float, weight_decay: float
) -> torch.optim.Adam:
    """Two groups: 0 = hyper network (lr * lr_ratio), 1 = backbone (lr)."""
    hyper, backbone = param_groups(model)
    return torch.optim.Adam(
        [
            {"params": hyper, "lr": lr * lr_ratio},
            {"params": backbone, "lr": lr},
        ],
        weight_decay=weight_decay,
    )


def apply_schedule(
    optimizer: torch.optim.Optimizer, epoch: int, *, lr: float, lr_ratio: float
) -> LearningRates:
    """Set this epoch's rates in place: Adam's moments survive (the original rebuilt Adam)."""
    rates = learning_rates(epoch, lr, lr_ratio)
    optimizer.param_groups[0]["lr"] = rates.hypernet
    optimizer.param_groups[1]["lr"] = rates.backbone
    return rates


# -- the report ---------------------------------------------------------------------------------


def format_epoch(record: EpochRecord, epochs: int) -> str:
    speed = record.train_patches_per_s
    return (
        f"epoch {record.epoch}/{epochs}  loss {record.train_loss:.4f}  "
        f"train_srcc {format_correlation(record.train_srcc)}  "
        f"val_srcc {format_correlation(record.val_srcc)}  "
        f"val_plcc {format_correlation(record.val_plcc)}  "
        f"lr {record.lr_backbone:.2e}/{record.lr_hypernet:.2e}  "
        f"{'n/a' if speed is None else speed} patches/s  {record.epoch_seconds:.1f}s"
    )


def remaining(history: History, epochs: int) -> str:
    """``  eta 3.5 min`` for the epochs still to run, at the mean pace of those run so far."""
    left = epochs - history.epoch
    if not left:
        return ""
    seconds = [r.epoch_seconds for r in history.records]
    return f"  eta {duration(left * sum(seconds) / len(seconds))}"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def final_report(spec: RunSpec, run: RunFolder, tools: Path) -> list[str]:
    """What happened, where the files are, and what to run next (``tools``: the
    folder of train.py, evaluate.py and predict.py)."""
    history, has_val = run.history, spec.val_split > 0 or spec.val_json is not None
    best = history.best
    if best and best.val_srcc is not None:
        lines = [
            f"done: best val_srcc {best.val_srcc:.4f} (plcc {best.val_plcc:.4f}) "
            f"at epoch {best.epoch} of {spec.epochs}"
        ]
    elif has_val:
        lines = [
            f"done: val SRCC was undefined in every epoch (constant predictions), so "
            f"{BEST} is epoch {best.epoch if best else history.epoch}, the first one"
        ]
    else:
        lines = [f"done: no validation set, so {BEST} is the last epoch ({history.epoch})"]
    q = shlex.quote  # the commands work as printed, whatever the folder names
    python = q(shell_path(Path(sys.executable)))

    def tool(name: str) -> str:
        return f"{python} {q(shell_path(tools / name))}"

    ckpt = q(str(run.file(BEST)))
    lines.append(f"files: {run.path} ({BEST}, metrics.json, train.log)")
    if has_val:
        lines.append(
            f"evaluate: {tool('evaluate.py')} --checkpoint {ckpt} "
            f"--test_json {q(str(run.file(VAL_IMAGES)))} --dataset_root {q(spec.dataset_root)}"
        )
    lines.append(f"predict:  {tool('predict.py')} --checkpoint {ckpt} IMAGE ...")
    curves = q(str(run.path / "curves.png"))
    plot = tool(str(Path("scripts") / "plot_metrics.py"))
    lines.append(f"plot:     {plot} {q(str(run.path))} -o {curves}")
    return lines
