"""The learning-rate schedule (two step decays, at epochs 7 and 9), as a pure function."""

from __future__ import annotations

from typing import NamedTuple


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
