"""The training loop: L1 on raw scores, two Adam groups, the guide's schedule.

Readable top to bottom: ``Trainer.fit`` runs the epochs; each epoch sets the
learning rates, trains on that epoch's patch plan, validates on the fixed val
plan and records the results through ``RunDir``. The loop never synchronises
with the device per step: losses and predictions pile up on the device and are
read once per epoch (and every few dozen steps for the progress bar).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hyperiqa.config import TrainConfig
from hyperiqa.inference import autocast, predict_images, prepare_input
from hyperiqa.metrics import format_metric as fmt
from hyperiqa.metrics import plcc, srcc
from hyperiqa.model import HyperNet, param_groups
from hyperiqa.run_dir import BEST, METRICS, RESUME, RunDir, epoch_checkpoint
from hyperiqa.schedule import learning_rates
from pipelines.batching import PatchLoader
from pipelines.patches import PatchPlan

PROGRESS_EVERY = 20  # steps between progress-bar updates (each one reads the loss: a sync)


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
    def __init__(
        self,
        cfg: TrainConfig,
        model: HyperNet,
        train: TrainData,
        val: TrainData | None,
        run: RunDir,
        log: logging.Logger,
        device: torch.device,
    ) -> None:
        self.cfg, self.model, self.train, self.val = cfg, model, train, val
        self.run, self.log, self.device = run, log, device
        self.amp = cfg.amp if device.type == "cuda" else None
        self.channels_last = cfg.channels_last and device.type == "cuda"
        self.optimizer = make_optimizer(model, cfg)
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.state = RunState()
        self._stop_signal: int | None = None

    # -- one epoch -------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        cfg, model = self.cfg, self.model
        apply_schedule(self.optimizer, epoch, cfg)
        plan = self.train.plan(epoch)
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        preds, targets = [], []
        seen = 0
        start = time.perf_counter()
        bar = tqdm(
            total=plan.num_patches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="patch",
            disable=not cfg.progress,
            leave=False,
            dynamic_ncols=True,
        )
        with bar:
            for step, batch in enumerate(self.train.loader.batches(plan), 1):
                if self._stop_signal is not None:
                    raise Interrupted
                with autocast(self.device, self.amp):
                    pred = model(prepare_input(batch.images, self.channels_last))
                loss = F.l1_loss(pred.float(), batch.scores)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()

                n = batch.scores.shape[0]
                loss_sum += loss.detach() * n
                preds.append(pred.detach().float())
                targets.append(batch.scores)
                seen += n
                bar.update(n)
                if step % PROGRESS_EVERY == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        train_seconds = time.perf_counter() - start

        pred_np = torch.cat(preds).cpu().numpy()
        target_np = torch.cat(targets).cpu().numpy()
        rates = learning_rates(epoch, cfg.lr, cfg.lr_ratio)
        return {
            "epoch": epoch,
            "train_loss": float(loss_sum.item() / max(seen, 1)),
            "train_srcc": srcc(pred_np, target_np),
            "lr_backbone": rates.backbone,
            "lr_hypernet": rates.hypernet,
            "train_patches": seen,
            "train_seconds": round(train_seconds, 3),
            "train_patches_per_s": round(seen / train_seconds, 2) if train_seconds > 0 else None,
        }

    def validate(self) -> dict:
        if self.val is None:
            return {"val_srcc": None, "val_plcc": None}
        pred = predict_images(
            self.model,
            self.val.loader,
            self.val.plan(0),
            self.val.num_images,
            amp=self.amp,
            channels_last=self.channels_last,
        )
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
        weights = None
        improved = self.val is None or (
            row["val_srcc"] is not None
            and (state.best is None or row["val_srcc"] > state.best["val_srcc"])
        )
        if improved:
            weights = cpu_state_dict(self.model)
            run.save(BEST, weights)
            state.best = {k: row[k] for k in ("epoch", "val_srcc", "val_plcc")}
        if cfg.save_all_epochs:
            run.save(epoch_checkpoint(row["epoch"]), weights or cpu_state_dict(self.model))
        state.epochs.append(row)
        state.epoch = row["epoch"]
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
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_resume_state(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
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
                row["epoch_seconds"] = round(time.perf_counter() - start, 3)
                self._record(row)
                self.log.info(format_epoch(row, cfg.epochs))
                if self._stop_signal is not None and epoch < cfg.epochs:
                    raise Interrupted
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.run.remove(RESUME)
        return self.state


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train_srcc {fmt(row['train_srcc'])}  val_srcc {fmt(row['val_srcc'])}  "
        f"val_plcc {fmt(row['val_plcc'])}  lr {row['lr_backbone']:.2e}/{row['lr_hypernet']:.2e}  "
        f"{row['train_patches_per_s']} patches/s  {row['epoch_seconds']:.1f}s"
    )
