"""Run train.py and record which images each rank trained on, per epoch.

    torchrun ... tests/trace_patches.py TRACE_DIR [train.py flags]

Used by tests/test_distributed.py: the training loop has no test hooks, so this
driver wraps ``Trainer.train_one_epoch`` from outside and watches the batches
the training loader delivers. Each rank writes ``TRACE_DIR/rank{r}_epoch{e}.npy``
(the image index of every training patch, in delivery order).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import train
from hyperiqa.fit import Trainer
from pipelines.loader import PatchBatch, PatchLoader
from pipelines.patches import PatchPlan


class Recorder:
    """A loader that passes another one's batches through, noting their image indices."""

    def __init__(self, loader: PatchLoader) -> None:
        self.loader, self.name, self.seen = loader, loader.name, []

    def batches(self, plan: PatchPlan) -> Iterator[PatchBatch]:
        for batch in self.loader.batches(plan):
            self.seen.append(batch.image_idx.cpu())
            yield batch

    def close(self) -> None:
        self.loader.close()


def main() -> int:
    trace, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", 0))
    train_one_epoch = Trainer.train_one_epoch

    def traced(self: Trainer, epoch: int) -> dict:
        loader = self.train.loader
        self.train.loader = recorder = Recorder(loader)
        try:
            return train_one_epoch(self, epoch)
        finally:
            self.train.loader = loader
            seen = torch.cat(recorder.seen).numpy() if recorder.seen else np.zeros(0, np.int64)
            np.save(trace / f"rank{rank}_epoch{epoch}.npy", seen)

    Trainer.train_one_epoch = traced
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
