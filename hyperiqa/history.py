"""What a run remembers: one record per epoch, the best epoch, the held-out results.

``History`` is what metrics.json holds and what a resume state carries. Plain
data with no torch, so the tools that read run folders start instantly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hyperiqa.spec import TEST


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training and validation: a row of metrics.json's "epochs"."""

    epoch: int
    train_loss: float
    train_srcc: float | None
    lr_backbone: float
    lr_hypernet: float
    train_patches: int
    train_seconds: float
    train_patches_per_s: float | None  # None when the epoch took no measurable time
    # Validation comes after training (the record is completed with dataclasses.replace).
    val_srcc: float | None = None  # None without validation, or undefined (constant predictions)
    val_plcc: float | None = None
    epoch_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> EpochRecord:
        """A row written by train.py (extra keys, from a newer version, are ignored)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Best:
    """The epoch best_model.pkl holds."""

    epoch: int
    val_srcc: float | None
    val_plcc: float | None


@dataclass(frozen=True)
class Correlations:
    """How well predictions rank and fit the labels of a set of images."""

    srcc: float | None  # None when undefined (constant predictions or labels)
    plcc: float | None
    krcc: float | None
    num_images: int


@dataclass(frozen=True)
class HeldOutResult:
    """best_model.pkl on a held-out set (the test set or an --eval_json set)."""

    epoch: int  # the epoch best_model.pkl holds
    correlations: Correlations

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, **asdict(self.correlations)}


def format_correlation(value: float | None) -> str:
    """Four decimals, or "n/a" for an undefined correlation."""
    return "n/a" if value is None else f"{value:.4f}"


@dataclass
class History:
    """The epochs recorded so far, the best of them, and the held-out results."""

    records: list[EpochRecord] = field(default_factory=list)
    best: Best | None = None
    held_out: dict[str, HeldOutResult] = field(default_factory=dict)
    completed: bool = False

    @property
    def epoch(self) -> int:
        """The last completed epoch (0 before the first)."""
        return self.records[-1].epoch if self.records else 0

    def add(self, record: EpochRecord, is_best: bool) -> None:
        if is_best:
            self.best = Best(record.epoch, record.val_srcc, record.val_plcc)
        self.records.append(record)

    def metrics_json(self, epochs_planned: int) -> dict[str, Any]:
        """metrics.json: {"epochs_planned", "completed", "best", "epochs", "test", "eval"}
        (the --test_json set's result under "test", the --eval_json sets' under "eval")."""
        out: dict[str, Any] = {
            "epochs_planned": epochs_planned,
            "completed": self.completed,
            "best": asdict(self.best) if self.best else None,
            "epochs": [r.to_json() for r in self.records],
        }
        if TEST in self.held_out:
            out[TEST] = self.held_out[TEST].to_json()
        others = {name: r.to_json() for name, r in self.held_out.items() if name != TEST}
        if others:
            out["eval"] = others
        return out

    def resume_json(self) -> dict[str, Any]:
        """The history's part of resume_state.pt (held-out results come after the last epoch)."""
        return {
            "epoch": self.epoch,
            "best": asdict(self.best) if self.best else None,
            "epochs": [r.to_json() for r in self.records],
        }

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> History:
        """From metrics.json or a resume state: the epochs and the best one."""
        best = saved.get("best")
        return cls(
            records=[EpochRecord.from_json(row) for row in saved["epochs"]],
            best=Best(**best) if best else None,
        )
