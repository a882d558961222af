"""Tests for pipelines.patches: the seeded patch plan both loaders consume."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.patches import PatchPlan, eval_plan, train_plan

RESIZE = (226, 230)  # leaves 3 top and 7 left positions for a 224 patch
S = 224


def _train(num_images: int = 10, **kw) -> PatchPlan:
    args = dict(seed=42, epoch=1, patches_per_image=25, patch_size=S, resize=RESIZE, window=4)
    args.update(kw)
    return train_plan(num_images, **args)


def _eval(num_images: int = 10, **kw) -> PatchPlan:
    args = dict(seed=42, patches_per_image=25, patch_size=S, resize=RESIZE, window=4)
    args.update(kw)
    return eval_plan(num_images, **args)


def _assert_same(a: PatchPlan, b: PatchPlan) -> None:
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.tops, b.tops)
    np.testing.assert_array_equal(a.lefts, b.lefts)
    np.testing.assert_array_equal(a.flips, b.flips)
    assert a.window == b.window and a.patch_size == b.patch_size
    assert len(a.window_perms) == len(b.window_perms)
    for pa, pb in zip(a.window_perms, b.window_perms, strict=True):
        np.testing.assert_array_equal(pa, pb)


def _patch_set(plan: PatchPlan) -> list[tuple[int, int, int, int, bool]]:
    """Every (image, k, top, left, flip) of a plan; k numbers an image's patches."""
    out = []
    for row, image in enumerate(plan.order):
        for k in range(plan.patches_per_image):
            out.append(
                (
                    int(image),
                    k,
                    int(plan.tops[row, k]),
                    int(plan.lefts[row, k]),
                    bool(plan.flips[row, k]),
                )
            )
    return out


# -- train plan -----------------------------------------------------------------------


def test_train_plan_shapes_and_types() -> None:
    plan = _train(10, patches_per_image=5, window=4)
    assert plan.num_images == 10
    assert plan.patches_per_image == 5
    assert plan.num_patches == 50
    assert plan.order.dtype == np.int64
    assert plan.tops.shape == plan.lefts.shape == plan.flips.shape == (10, 5)
    assert plan.flips.dtype == bool
    assert plan.patch_size == S
    # Windows of 4, 4 and 2 images.
    assert [len(p) for p in plan.window_perms] == [20, 20, 10]


def test_train_plan_deterministic() -> None:
    _assert_same(_train(), _train())


def test_train_plan_epochs_differ() -> None:
    a, b = _train(epoch=1), _train(epoch=2)
    assert not np.array_equal(a.order, b.order)
    assert not np.array_equal(a.tops, b.tops)
    assert not np.array_equal(a.lefts, b.lefts)
    assert not np.array_equal(a.flips, b.flips)


def test_train_plan_seeds_differ() -> None:
    a, b = _train(seed=1), _train(seed=2)
    assert not np.array_equal(a.lefts, b.lefts)
    assert not np.array_equal(a.flips, b.flips)


def test_train_order_is_a_permutation() -> None:
    plan = _train(30)
    assert sorted(plan.order.tolist()) == list(range(30))
    assert plan.order.tolist() != list(range(30))


def test_train_offsets_in_range_and_extremes_reached() -> None:
    plan = _train(200, patches_per_image=25)
    h, w = RESIZE
    assert plan.tops.min() == 0 and plan.tops.max() == h - S
    assert plan.lefts.min() == 0 and plan.lefts.max() == w - S
    # Uniform: every admissible position appears, roughly equally often.
    top_counts = np.bincount(plan.tops.ravel(), minlength=h - S + 1)
    left_counts = np.bincount(plan.lefts.ravel(), minlength=w - S + 1)
    assert len(top_counts) == h - S + 1 and len(left_counts) == w - S + 1
    n = plan.tops.size
    assert np.all(np.abs(top_counts - n / len(top_counts)) < 0.1 * n / len(top_counts))
    assert np.all(np.abs(left_counts - n / len(left_counts)) < 0.15 * n / len(left_counts))


def test_train_offsets_when_patch_fills_the_image() -> None:
    plan = _train(5, resize=(S, S))
    assert not plan.tops.any() and not plan.lefts.any()


def test_train_flips_about_half() -> None:
    plan = _train(200, patches_per_image=25)
    share = plan.flips.mean()
    assert 0.47 < share < 0.53  # 5000 draws: sd ~0.007


def test_train_window_perms_are_permutations() -> None:
    plan = _train(10, patches_per_image=3, window=4)
    sizes = [4 * 3, 4 * 3, 2 * 3]
    for perm, size in zip(plan.window_perms, sizes, strict=True):
        assert sorted(perm.tolist()) == list(range(size))
    assert any(perm.tolist() != list(range(len(perm))) for perm in plan.window_perms)


def test_windows_cover_rows() -> None:
    plan = _train(10, patches_per_image=2, window=4)
    slices = [rows for rows, _ in plan.windows()]
    assert slices == [slice(0, 4), slice(4, 8), slice(8, 10)]


def test_window_larger_than_plan() -> None:
    plan = _train(3, patches_per_image=2, window=100)
    assert len(plan.window_perms) == 1
    assert sorted(plan.window_perms[0].tolist()) == list(range(6))


def test_empty_plan() -> None:
    plan = _train(0)
    assert plan.num_images == 0 and plan.num_patches == 0
    assert plan.window_perms == ()


@pytest.mark.parametrize("make", [_train, _eval])
def test_patch_larger_than_resize_raises(make) -> None:
    with pytest.raises(ValueError, match="smaller than patch_size"):
        make(resize=(223, 300))
    with pytest.raises(ValueError, match="smaller than patch_size"):
        make(resize=(300, 200))


@pytest.mark.parametrize("make", [_train, _eval])
def test_window_zero_raises(make) -> None:
    with pytest.raises(ValueError, match="window"):
        make(window=0)


# -- eval plan --------------------------------------------------------------------------


def test_eval_plan_fixed() -> None:
    plan = _eval(10, patches_per_image=5, window=4)
    assert plan.order.tolist() == list(range(10))
    assert not plan.flips.any()
    for perm in plan.window_perms:
        assert perm.tolist() == list(range(len(perm)))
    assert [len(p) for p in plan.window_perms] == [20, 20, 10]


def test_eval_plan_same_every_call() -> None:
    # It takes no epoch: val crops are the same every epoch.
    _assert_same(_eval(), _eval())


def test_eval_plan_changes_with_seed() -> None:
    a, b = _eval(seed=1), _eval(seed=2)
    assert not np.array_equal(a.tops, b.tops) or not np.array_equal(a.lefts, b.lefts)


def test_eval_plan_offsets_in_range() -> None:
    plan = _eval(200)
    h, w = RESIZE
    assert plan.tops.min() == 0 and plan.tops.max() == h - S
    assert plan.lefts.min() == 0 and plan.lefts.max() == w - S


def test_eval_plan_not_any_train_epoch_plan() -> None:
    ev = _eval()
    for epoch in (1, 2, 3):
        assert not np.array_equal(ev.lefts, _train(epoch=epoch).lefts)


def test_eval_plan_prefix_stable_in_window() -> None:
    # The window only groups images for decoding: it does not change any crop.
    a, b = _eval(window=4), _eval(window=7)
    np.testing.assert_array_equal(a.tops, b.tops)
    np.testing.assert_array_equal(a.lefts, b.lefts)


# -- shard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_images", "window", "world"), [(10, 3, 2), (10, 3, 3), (11, 2, 4), (5, 4, 3), (9, 1, 2)]
)
def test_shard_disjoint_and_covering(num_images: int, window: int, world: int) -> None:
    plan = _train(num_images, patches_per_image=4, window=window)
    shards = [plan.shard(rank, world) for rank in range(world)]
    got = [p for s in shards for p in _patch_set(s)]
    assert sorted(got) == sorted(_patch_set(plan))
    assert len(got) == len(set(got)) == plan.num_patches
    images = [int(i) for s in shards for i in s.order]
    assert sorted(images) == list(range(num_images))
    for s in shards:
        assert s.window == plan.window and s.patch_size == plan.patch_size
        assert s.patches_per_image == plan.patches_per_image
        # Each shard is a consistent plan: its windows match its perms.
        assert sum(len(p) for p in s.window_perms) == s.num_patches
        for rows, perm in s.windows():
            assert len(perm) == (rows.stop - rows.start) * s.patches_per_image


def test_shard_keeps_window_permutations() -> None:
    plan = _train(10, patches_per_image=3, window=3)
    shard = plan.shard(1, 2)  # windows 1 and 3 of 0..3
    assert len(shard.window_perms) == 2
    assert shard.window_perms[0] is plan.window_perms[1]
    assert shard.window_perms[1] is plan.window_perms[3]
    np.testing.assert_array_equal(shard.order, plan.order[[3, 4, 5, 9]])


def test_shard_more_ranks_than_windows() -> None:
    plan = _train(2, patches_per_image=3, window=4)
    empty = plan.shard(1, 2)
    assert empty.num_images == 0 and empty.num_patches == 0
    assert empty.window_perms == ()
    assert list(empty.windows()) == []


def test_shard_world_one_is_the_plan() -> None:
    plan = _train()
    assert plan.shard(0, 1) is plan
