"""The training loop: L1 on raw scores, two Adam groups, the guide's schedule.

Readable top to bottom: ``Trainer.fit`` runs the epochs; each epoch sets the
learning rates, trains on that epoch's patch plan, validates on the fixed val
plan and records the results through ``RunDir``. The loop never synchronises
with the device per step: losses and predictions pile up on the device and are
read once per epoch (and every few dozen steps for the progress bar).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hyperiqa.config import TrainConfig
from hyperiqa.distributed import DistInfo, any_rank, gather_arrays
from hyperiqa.errors import UserError
from hyperiqa.inference import autocast, predict_patches, prepare_input
from hyperiqa.metrics import format_metric as fmt
from hyperiqa.metrics import per_image_mean, plcc, srcc
from hyperiqa.model import HyperNet, param_groups
from hyperiqa.run_dir import BEST, METRICS, RESUME, RunDir, epoch_checkpoint
from hyperiqa.schedule import learning_rates
from pipelines.batching import PatchLoader
from pipelines.patches import PatchPlan

PROGRESS_EVERY = 20  # steps between progress-bar updates (each one reads the loss: a sync)

# Tests set this to a folder to get each rank's patch order per epoch
# (rank{r}_epoch{e}.npy: image index of every patch trained on).
TRACE_PATCHES_ENV = "HYPERIQA_TRACE_PATCHES"


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the run stopped at a safe point and can be resumed."""


def make_optimizer(model: HyperNet, cfg: TrainConfig) -> torch.optim.Adam:
    """Two groups: 0 = hyper network (lr * lr_ratio), 1 = backbone (lr)."""
    hyper, backbone = param_groups(model)
    return torch.optim.Adam(
        [
            {"params": hyper, "lr": cfg.lr * cfg.lr_ratio},
            {"params": backbone, "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )


def apply_schedule(optimizer: torch.optim.Optimizer, epoch: int, cfg: TrainConfig) -> None:
    """Set this epoch's rates in place: Adam's moments survive (the original rebuilt Adam)."""
    rates = learning_rates(epoch, cfg.lr, cfg.lr_ratio)
    optimizer.param_groups[0]["lr"] = rates.hypernet
    optimizer.param_groups[1]["lr"] = rates.backbone


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A device-independent copy: best_model.pkl loads anywhere without map_location."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class TrainStep:
    """One optimisation step: autocast forward, L1 on raw scores, backward, Adam.

    Shared by the trainer and the benchmark, so the benchmark times the real step.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: str | None,
        channels_last: bool,
    ) -> None:
        self.net, self.optimizer, self.device = net, optimizer, device
        self.amp, self.channels_last = amp, channels_last
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    def __call__(
        self, images: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (predictions, loss), detached and still on the device: no host sync."""
        with autocast(self.device, self.amp):
            pred = self.net(prepare_input(images, self.channels_last))
        loss = F.l1_loss(pred.float(), scores)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return pred.detach().float(), loss.detach()


@dataclass
class TrainData:
    """One split as the trainer sees it: a loader, its image count and the plan maker."""

    loader: PatchLoader
    num_images: int
    scores: np.ndarray  # per image, float64, for metrics
    plan: Callable[[int], PatchPlan]  # epoch -> plan (val ignores the epoch)


@dataclass
class RunState:
    """What survives between epochs, and what a resume restores."""

    epoch: int = 0  # last completed epoch
    best: dict | None = None  # {"epoch", "val_srcc", "val_plcc"}
    epochs: list[dict] = field(default_factory=list)  # metrics.json "epochs"


class Trainer:
    """Trains ``model``; with torchrun, one Trainer per rank, each on its shard.

    ``run`` is None on ranks other than 0: they compute everything (the
    gathered metrics too, so every rank takes the same decisions) but write
    nothing.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: HyperNet,
        train: TrainData,
        val: TrainData | None,
        run: RunDir | None,
        log: logging.Logger,
        device: torch.device,
        dist: DistInfo | None = None,
    ) -> None:
        self.cfg, self.model, self.train, self.val = cfg, model, train, val
        self.run, self.log, self.device = run, log, device
        self.dist = dist or DistInfo()
        # DDP averages gradients over ranks during backward; ``self.model`` stays
        # the plain module for evaluation and for state_dicts without "module.".
        self.net: torch.nn.Module = model
        if self.dist.enabled:
            device_ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=device_ids)
        self.amp = cfg.amp if device.type == "cuda" else None
        self.channels_last = cfg.channels_last and device.type == "cuda"
        self.optimizer = make_optimizer(model, cfg)
        # Compiled for training only: evaluation and state_dicts use the plain module.
        step_net = torch.compile(self.net) if cfg.compile else self.net
        self.step = TrainStep(step_net, self.optimizer, device, self.amp, self.channels_last)
        self.state = RunState()
        self._stop_signal: int | None = None

    # -- one epoch -------------------------------------------------------------

    def _safe_steps(self, full_plan: PatchPlan, batch_size: int) -> int:
        """Steps every rank takes this epoch. Ranks may get a batch more or less
        (whole windows are sharded); DDP's Join covers the uneven tail, and a
        stop is only agreed on (a collective) within the steps all ranks take."""
        if not self.dist.enabled:
            return math.inf
        ws = self.dist.world_size
        return min(math.ceil(full_plan.shard(r, ws).num_patches / batch_size) for r in range(ws))

    def _should_stop(self, step: int, safe_steps: float) -> bool:
        if not self.dist.enabled:
            return self._stop_signal is not None
        if step % PROGRESS_EVERY or step > safe_steps:
            return False
        return any_rank(self._stop_signal is not None, self.dist, self.device)

    def train_epoch(self, epoch: int) -> dict:
        cfg, model, dist = self.cfg, self.net, self.dist
        apply_schedule(self.optimizer, epoch, cfg)
        full_plan = self.train.plan(epoch)
        plan = full_plan.shard(dist.rank, dist.world_size)
        safe_steps = self._safe_steps(full_plan, cfg.batch_size // dist.world_size)
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        preds, image_idx = [], []
        seen = 0
        start = time.perf_counter()
        bar = tqdm(
            total=plan.num_patches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="patch",
            disable=not (cfg.progress and dist.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        join = Join([model]) if dist.enabled else contextlib.nullcontext()
        with bar, join:
            for step, batch in enumerate(self.train.loader.batches(plan), 1):
                if self._should_stop(step, safe_steps):
                    raise Interrupted
                pred, loss = self.step(batch.images, batch.scores)
                n = batch.scores.shape[0]
                loss_sum += loss * n
                preds.append(pred)
                image_idx.append(batch.image_idx)
                seen += n
                bar.update(n)
                if step % PROGRESS_EVERY == 0 and not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}")  # the only per-step sync
        train_seconds = time.perf_counter() - start

        # One device-to-host copy per epoch; with torchrun, every rank gets all ranks' patches.
        pred_np, idx_np = (
            torch.cat(t).cpu().numpy() if t else np.zeros(0, dtype=dtype)  # empty shard
            for t, dtype in ((preds, np.float32), (image_idx, np.int64))
        )
        self._trace(epoch, idx_np)
        pred_np, idx_np, totals = gather_arrays(
            dist, pred_np, idx_np, np.array([[loss_sum.item(), seen]])
        )
        target_np = self.train.scores[idx_np]  # a patch's target is its image's score
        loss_total, seen = totals.sum(axis=0)
        seen = int(seen)
        rates = learning_rates(epoch, cfg.lr, cfg.lr_ratio)
        return {
            "epoch": epoch,
            "train_loss": float(loss_total / max(seen, 1)),
            "train_srcc": srcc(pred_np, target_np),
            "lr_backbone": rates.backbone,
            "lr_hypernet": rates.hypernet,
            "train_patches": seen,
            "train_seconds": round(train_seconds, 3),
            "train_patches_per_s": round(seen / train_seconds, 2) if train_seconds > 0 else None,
        }

    def _trace(self, epoch: int, image_idx: np.ndarray) -> None:
        folder = os.environ.get(TRACE_PATCHES_ENV)
        if folder:
            np.save(Path(folder) / f"rank{self.dist.rank}_epoch{epoch}.npy", image_idx)

    def validate(self) -> dict:
        if self.val is None:
            return {"val_srcc": None, "val_plcc": None}
        # Each rank predicts its shard with the plain module (no gradient sync
        # needed); the per-image means are taken over all ranks' patches.
        patch_pred, image_idx = predict_patches(
            self.model,
            self.val.loader,
            self.val.plan(0).shard(self.dist.rank, self.dist.world_size),
            amp=self.amp,
            channels_last=self.channels_last,
        )
        patch_pred, image_idx = gather_arrays(self.dist, patch_pred, image_idx)
        pred = per_image_mean(patch_pred, image_idx, self.val.num_images)
        return {
            "val_srcc": srcc(pred, self.val.scores),
            "val_plcc": plcc(pred, self.val.scores),
        }

    # -- the run ---------------------------------------------------------------

    def _record(self, row: dict) -> None:
        """Write this epoch's files. Order matters for a crash between writes:
        the resume state goes last, so a resume redoes an epoch whose files may
        be partly written, and rewrites them identically."""
        cfg, state, run = self.cfg, self.state, self.run
        improved = is_better(row, state.best, has_val=self.val is not None)
        if improved:
            state.best = {k: row[k] for k in ("epoch", "val_srcc", "val_plcc")}
        state.epochs.append(row)
        state.epoch = row["epoch"]
        if run is None:  # not rank 0: the state above is all this rank keeps
            return
        weights = None
        if improved:
            weights = cpu_state_dict(self.model)
            run.save(BEST, weights)
        if cfg.save_all_epochs:
            run.save(epoch_checkpoint(row["epoch"]), weights or cpu_state_dict(self.model))
        run.write_json(METRICS, self.metrics_json(completed=state.epoch == cfg.epochs))
        if state.epoch < cfg.epochs:
            run.save(RESUME, self.resume_state())

    def metrics_json(self, completed: bool) -> dict:
        return {
            "epochs_planned": self.cfg.epochs,
            "completed": completed,
            "best": self.state.best,
            "epochs": self.state.epochs,
        }

    def resume_state(self) -> dict:
        return {
            "epoch": self.state.epoch,
            "best": self.state.best,
            "epochs": self.state.epochs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_resume_state(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = RunState(epoch=saved["epoch"], best=saved["best"], epochs=saved["epochs"])

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stop_signal is not None:
            # Asked twice: stop now. That is as safe as a kill (every file is
            # replaced atomically), and the resume command still gets printed.
            raise Interrupted
        self._stop_signal = signum
        # Say so at once: the step, or a whole validation pass, may take a while.
        # os.write, not print: a handler can run in the middle of a print.
        name = signal.Signals(signum).name
        os.write(2, f"\n{name}: stopping at the next safe point (again to stop now)\n".encode())

    def _run_epoch(self, epoch: int) -> dict:
        try:
            row = self.train_epoch(epoch)
            row.update(self.validate())
        except Exception:
            # Ctrl-C reaches the whole process group. A decode worker still
            # starting up (spawn/forkserver: before it could ignore the signal)
            # dies of it, and the loader then fails; the stop is the real story.
            if self._stop_signal is not None:
                raise Interrupted from None
            raise
        return row

    def fit(self) -> RunState:
        """Train the remaining epochs. Raises ``Interrupted`` after SIGINT/SIGTERM,
        with the folder left at the last completed epoch."""
        cfg = self.cfg
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for epoch in range(self.state.epoch + 1, cfg.epochs + 1):
                start = time.perf_counter()
                row = self._run_epoch(epoch)
                if not math.isfinite(row["train_loss"]):
                    # Before anything is written: the folder stays at the last good epoch.
                    raise UserError(
                        f"training diverged in epoch {epoch} (loss {row['train_loss']}); "
                        "lower --lr and start again with --overwrite"
                    )
                row["epoch_seconds"] = round(time.perf_counter() - start, 3)
                self._record(row)
                self.log.info(format_epoch(row, cfg.epochs))
                stop = any_rank(self._stop_signal is not None, self.dist, self.device)
                if stop and epoch < cfg.epochs:
                    raise Interrupted
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.run is not None:
            self.run.remove(RESUME)
        return self.state


def is_better(row: dict, best: dict | None, has_val: bool) -> bool:
    """Does this epoch replace best_model.pkl? Without validation every epoch
    does (the last one wins); with it, a higher val SRCC does. An undefined
    SRCC (constant predictions) never beats a defined one, but the first
    epoch always writes a best_model.pkl, so a run never ends without one."""
    if not has_val or best is None:
        return True
    if row["val_srcc"] is None:
        return False
    return best["val_srcc"] is None or row["val_srcc"] > best["val_srcc"]


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train_srcc {fmt(row['train_srcc'])}  val_srcc {fmt(row['val_srcc'])}  "
        f"val_plcc {fmt(row['val_plcc'])}  lr {row['lr_backbone']:.2e}/{row['lr_hypernet']:.2e}  "
        f"{row['train_patches_per_s']} patches/s  {row['epoch_seconds']:.1f}s"
    )
