"""--tensorboard: the run's curves in TensorBoard, under RUN/tensorboard/.

Per step: the training loss and both learning rates, every few dozen steps
(reading the loss waits for the device, so not every step). Per epoch: the
epoch's metrics and patches/s. At the end: the test and --eval_json scores.
The tensorboard package is optional and imported only when asked for.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from hyperiqa.errors import UserError
from hyperiqa.history import EpochRecord, HeldOutResult
from hyperiqa.run_folder import BOARD

EPOCH_SCALARS = ("train_loss", "train_srcc", "val_srcc", "val_plcc", "train_patches_per_s")


def require() -> None:
    """Fail before the run folder changes when --tensorboard cannot work."""
    try:
        import tensorboard  # noqa: F401  (SummaryWriter needs the package)
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None


class Board:
    """A SummaryWriter with the run's names; rank 0 alone keeps one."""

    def __init__(self, run_path: Path) -> None:
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_path) / BOARD))

    def step(self, step: int, loss: float, lr_backbone: float, lr_hypernet: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr_backbone", lr_backbone, step)
        self.writer.add_scalar("step/lr_hypernet", lr_hypernet, step)

    def epoch(self, record: EpochRecord) -> None:
        for key in EPOCH_SCALARS:
            value = getattr(record, key)
            if value is not None:
                self.writer.add_scalar(f"epoch/{key}", value, record.epoch)
        self.writer.flush()

    def held_out(self, name: str, result: HeldOutResult) -> None:
        for key, value in asdict(result.correlations).items():
            if key != "num_images" and value is not None:
                self.writer.add_scalar(f"{name}/{key}", value, result.epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
