"""One epoch of training and one pass of validation: L1 on raw scores, two Adam
groups, the step learning-rate schedule of hyperiqa.schedule.

``train.py`` runs the epochs; this module does the work inside one. The loop
never synchronises with the device per step: losses and predictions pile up on
the device and are read once per epoch (and every few dozen steps for the
progress bar).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hyperiqa.config import TrainConfig
from hyperiqa.distributed import any_rank, gather_arrays
from hyperiqa.evaluation import predict_patches
from hyperiqa.metrics import format_metric as fmt
from hyperiqa.metrics import krcc, per_image_mean, plcc, srcc
from hyperiqa.model import HyperNet, param_groups
from hyperiqa.run_log import bars_off
from hyperiqa.runtime import Runtime
from hyperiqa.schedule import learning_rates
from hyperiqa.stopping import Interrupted, StopSignals
from pipelines.loader import PatchLoader
from pipelines.patches import PatchPlan

PROGRESS_EVERY = 20  # steps between progress-bar updates (each one reads the loss: a sync)


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
) -> None:
    """Set this epoch's rates in place: Adam's moments survive (the original rebuilt Adam)."""
    rates = learning_rates(epoch, lr, lr_ratio)
    optimizer.param_groups[0]["lr"] = rates.hypernet
    optimizer.param_groups[1]["lr"] = rates.backbone


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A device-independent copy: best_model.pkl loads anywhere without map_location."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class TrainStep:
    """One optimisation step: autocast forward, L1 on raw scores, backward, Adam.

    Shared by the trainer and the benchmark, so the benchmark times the real step.
    """

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime) -> None:
        self.net, self.optimizer, self.rt = net, optimizer, rt
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.amp == torch.float16)

    def __call__(
        self, images: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (predictions, loss), detached and still on the device: no host sync."""
        with self.rt.autocast():
            pred = self.net(self.rt.prepare_input(images))
        loss = F.l1_loss(pred.float(), scores)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return pred.detach().float(), loss.detach()


@dataclass
class Split:
    """One set of images as the trainer sees it: a loader, the scores, the plan maker."""

    loader: PatchLoader
    scores: np.ndarray  # per image, float64, for metrics
    plan: Callable[[int], PatchPlan]  # epoch -> plan (validation ignores the epoch)

    @property
    def num_images(self) -> int:
        return len(self.scores)


class Trainer:
    """Trains ``model``; with torchrun, one Trainer per rank, each on its shard.

    Every rank computes everything (the gathered metrics too, so every rank
    takes the same decisions); writing files is the caller's business.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: HyperNet,
        train: Split,
        val: Split | None,
        rt: Runtime,
        stop: StopSignals,
    ) -> None:
        self.cfg, self.model, self.train, self.val, self.rt = cfg, model, train, val, rt
        self.stop = stop
        # Called every PROGRESS_EVERY steps with (global step, loss, backbone lr,
        # hypernet lr): TensorBoard's per-step curve.
        self.on_step: Callable[[int, float, float, float], None] | None = None
        self.dist = rt.dist
        # DDP averages gradients over ranks during backward; ``self.model`` stays
        # the plain module for evaluation and for state_dicts without "module.".
        self.net: torch.nn.Module = model
        if self.dist.enabled:
            device_ids = [rt.device.index] if rt.cuda else None
            self.net = DistributedDataParallel(model, device_ids=device_ids)
        self.optimizer = make_optimizer(
            model, lr=cfg.lr, lr_ratio=cfg.lr_ratio, weight_decay=cfg.weight_decay
        )
        # Compiled for training only: evaluation and state_dicts use the plain module.
        step_net = torch.compile(self.net) if cfg.compile else self.net
        self.step = TrainStep(step_net, self.optimizer, rt)
        # Targets are looked up on the device by image index: uploaded once.
        self.train_targets = torch.tensor(train.scores, dtype=torch.float32, device=rt.device)

    # -- what a resume restores ------------------------------------------------------

    def states(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])

    # -- one epoch -------------------------------------------------------------------

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch, then validate: the epoch's metrics row."""
        start = time.perf_counter()
        try:
            row = self.train_one_epoch(epoch)
            row.update(self.validate())
        except Exception:
            # Ctrl-C reaches the whole process group. A decode worker still
            # starting up (spawn/forkserver: before it could ignore the signal)
            # dies of it, and the loader then fails; the stop is the real story.
            if self.stop.requested is not None:
                raise Interrupted from None
            raise
        row["epoch_seconds"] = round(time.perf_counter() - start, 3)
        return row

    def stop_agreed(self) -> bool:
        """Did any rank get a stop signal? (A collective: every rank must ask.)"""
        return any_rank(self.stop.requested is not None, self.dist, self.rt.device)

    def _safe_steps(self, full_plan: PatchPlan) -> float:
        """Steps every rank takes this epoch. Ranks may get a batch more or less
        (whole windows are sharded); DDP's Join covers the uneven tail, and a
        stop is only agreed on (a collective) within the steps all ranks take."""
        if not self.dist.enabled:
            return math.inf
        ws, batch = self.dist.world_size, self.rt.batch_per_rank
        return min(math.ceil(full_plan.shard(r, ws).num_patches / batch) for r in range(ws))

    def _should_stop(self, step: int, safe_steps: float) -> bool:
        asked = self.stop.requested is not None
        if not self.dist.enabled:
            return asked
        if step % PROGRESS_EVERY or step > safe_steps:
            return False
        return any_rank(asked, self.dist, self.rt.device)

    def train_one_epoch(self, epoch: int) -> dict:
        cfg, net, dist = self.cfg, self.net, self.dist
        apply_schedule(self.optimizer, epoch, lr=cfg.lr, lr_ratio=cfg.lr_ratio)
        full_plan = self.train.plan(epoch)
        plan = full_plan.shard(dist.rank, dist.world_size)
        safe_steps = self._safe_steps(full_plan)
        rates = learning_rates(epoch, cfg.lr, cfg.lr_ratio)
        first_step = (epoch - 1) * math.ceil(plan.num_patches / self.rt.batch_per_rank)
        net.train()
        loss_sum = torch.zeros((), device=self.rt.device)
        preds, image_idx = [], []
        seen = 0
        start = time.perf_counter()
        bar = tqdm(
            total=plan.num_patches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="patch",
            disable=bars_off(cfg.progress and dist.is_main),
            leave=False,
            dynamic_ncols=True,
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
        return {
            "epoch": epoch,
            "train_loss": float(loss_total / max(seen, 1)),
            "train_srcc": srcc(pred_np, self.train.scores[idx_np]),
            "lr_backbone": rates.backbone,
            "lr_hypernet": rates.hypernet,
            "train_patches": seen,
            "train_seconds": round(train_seconds, 3),
            "train_patches_per_s": round(seen / train_seconds, 2) if train_seconds > 0 else None,
        }

    def predict(self, split: Split) -> np.ndarray:
        """Per-image predictions on ``split`` at its fixed crops, with the current weights.

        Each rank predicts its shard with the plain module (no gradient sync
        needed); the per-image means are taken over all ranks' patches.
        """
        plan = split.plan(0).shard(self.dist.rank, self.dist.world_size)
        progress = self.cfg.progress and self.dist.is_main
        patch_pred, image_idx = predict_patches(self.model, split.loader, plan, self.rt, progress)
        patch_pred, image_idx = gather_arrays(self.dist, patch_pred, image_idx)
        return per_image_mean(patch_pred, image_idx, split.num_images)

    def validate(self) -> dict:
        if self.val is None:
            return {"val_srcc": None, "val_plcc": None}
        pred = self.predict(self.val)
        return {
            "val_srcc": srcc(pred, self.val.scores),
            "val_plcc": plcc(pred, self.val.scores),
        }

    def score(self, split: Split) -> dict:
        """SRCC, PLCC and KRCC of the current weights on a held-out set."""
        pred = self.predict(split)
        return {
            "srcc": srcc(pred, split.scores),
            "plcc": plcc(pred, split.scores),
            "krcc": krcc(pred, split.scores),
            "num_images": split.num_images,
        }


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
    speed = row["train_patches_per_s"]  # None when the epoch took no measurable time
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train_srcc {fmt(row['train_srcc'])}  val_srcc {fmt(row['val_srcc'])}  "
        f"val_plcc {fmt(row['val_plcc'])}  lr {row['lr_backbone']:.2e}/{row['lr_hypernet']:.2e}  "
        f"{'n/a' if speed is None else speed} patches/s  {row['epoch_seconds']:.1f}s"
    )
