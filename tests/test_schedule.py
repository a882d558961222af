"""Tests for the learning-rate schedule and the optimizer set-up of hyperiqa.fit: the
learning rates per epoch, two Adam groups, rates changed in place."""

from __future__ import annotations

import argparse

import pytest
import torch

from hyperiqa.fit import LearningRates, apply_schedule, learning_rates, make_optimizer
from hyperiqa.model import HyperNet

LR, RATIO = 2e-5, 10.0

# (backbone, hypernet) per 1-based epoch, for lr 2e-5 and lr_ratio 10.
GUIDE = {
    **{e: (2e-5, 2e-4) for e in range(1, 7)},
    **{e: (2e-6, 2e-5) for e in (7, 8)},
    **{e: (2e-6, 2e-6) for e in range(9, 17)},
}


@pytest.mark.parametrize("epoch", range(1, 17))
def test_learning_rates_every_epoch(epoch: int) -> None:
    rates = learning_rates(epoch, LR, RATIO)
    backbone, hypernet = GUIDE[epoch]
    assert isinstance(rates, LearningRates)
    assert rates.backbone == pytest.approx(backbone, rel=1e-12)
    assert rates.hypernet == pytest.approx(hypernet, rel=1e-12)


def test_learning_rates_beyond_16_stay_at_the_floor() -> None:
    assert learning_rates(100, LR, RATIO) == pytest.approx((2e-6, 2e-6))


def test_learning_rates_other_lr_and_ratio() -> None:
    assert learning_rates(1, 1e-4, 5.0) == pytest.approx((1e-4, 5e-4))
    assert learning_rates(7, 1e-4, 5.0) == pytest.approx((1e-5, 5e-5))
    assert learning_rates(9, 1e-4, 5.0) == pytest.approx((1e-5, 1e-5))


@pytest.mark.parametrize("epoch", [0, -1])
def test_epoch_below_one_raises(epoch: int) -> None:
    with pytest.raises(ValueError, match="1-based"):
        learning_rates(epoch, LR, RATIO)


def test_learning_rates_is_pure() -> None:
    assert learning_rates(7, LR, RATIO) == learning_rates(7, LR, RATIO)


# -- the optimizer ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> HyperNet:
    torch.manual_seed(0)
    return HyperNet(backbone="tiny")  # the groups, not the architecture, are under test


@pytest.fixture
def cfg():
    return argparse.Namespace(lr=LR, lr_ratio=RATIO, weight_decay=5e-4)


def test_make_optimizer_groups(model: HyperNet, cfg) -> None:
    opt = make_optimizer(model, lr=cfg.lr, lr_ratio=cfg.lr_ratio, weight_decay=cfg.weight_decay)
    assert isinstance(opt, torch.optim.Adam)
    assert len(opt.param_groups) == 2
    hyper, backbone = opt.param_groups
    assert hyper["lr"] == pytest.approx(LR * RATIO)
    assert backbone["lr"] == pytest.approx(LR)
    assert hyper["weight_decay"] == backbone["weight_decay"] == 5e-4

    names = {id(p): n for n, p in model.named_parameters()}
    hyper_names = [names[id(p)] for p in hyper["params"]]
    backbone_names = [names[id(p)] for p in backbone["params"]]
    assert hyper_names and backbone_names
    assert all(n.startswith("res.") for n in backbone_names)
    assert not any(n.startswith("res.") for n in hyper_names)
    # Every parameter trains, in exactly one group.
    assert sorted(hyper_names + backbone_names) == sorted(names.values())
    assert len(set(hyper_names) | set(backbone_names)) == len(names)


def test_make_optimizer_groups_are_lists_not_exhausted_iterators(model: HyperNet, cfg) -> None:
    # The original's `filter` iterator left the hyper group empty on rebuild.
    first = make_optimizer(model, lr=cfg.lr, lr_ratio=cfg.lr_ratio, weight_decay=cfg.weight_decay)
    second = make_optimizer(model, lr=cfg.lr, lr_ratio=cfg.lr_ratio, weight_decay=cfg.weight_decay)
    assert len(second.param_groups[0]["params"]) == len(first.param_groups[0]["params"]) > 0


def test_apply_schedule_changes_rates_in_place(model: HyperNet, cfg) -> None:
    opt = make_optimizer(model, lr=cfg.lr, lr_ratio=cfg.lr_ratio, weight_decay=cfg.weight_decay)
    groups = opt.param_groups
    group_objs = list(groups)
    params_before = [list(g["params"]) for g in groups]

    # One real Adam step so that there is state to keep.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    probe = opt.param_groups[0]["params"][0]
    probe_bb = opt.param_groups[1]["params"][0]
    state_before = opt.state[probe]
    assert int(state_before["step"]) == 1
    exp_avg = state_before["exp_avg"]

    try:
        for epoch in range(1, 11):
            apply_schedule(opt, epoch, lr=cfg.lr, lr_ratio=cfg.lr_ratio)
            backbone, hypernet = GUIDE[epoch]
            assert opt.param_groups is groups
            assert all(a is b for a, b in zip(opt.param_groups, group_objs, strict=True))
            assert opt.param_groups[0]["lr"] == pytest.approx(hypernet)
            assert opt.param_groups[1]["lr"] == pytest.approx(backbone)
            assert [list(g["params"]) for g in opt.param_groups] == params_before
            assert opt.param_groups[0]["weight_decay"] == 5e-4
            # Adam's moments survive the schedule change.
            assert opt.state[probe] is state_before
            assert opt.state[probe]["exp_avg"] is exp_avg
            assert int(opt.state[probe]["step"]) == 1
            assert probe_bb in opt.state
    finally:
        for p in model.parameters():
            p.grad = None
