"""LoadBalancer (convnp.runtime.balance): shares of each global batch by the ranks' speed."""

from __future__ import annotations

import pytest

from convnp.runtime.balance import LoadBalancer


def simulate(balancer: LoadBalancer, n: int, fixed: float, per_sample: list[float], steps: int):
    """Feed ``steps`` steps of ranks whose busy time is fixed + per_sample[r]·n_r; returns
    the last step's busy times."""
    for _ in range(steps):
        bounds = balancer.bounds(n)
        counts = [bounds[r + 1] - bounds[r] for r in range(balancer.ranks)]
        seconds = [fixed + cost * count for cost, count in zip(per_sample, counts)]
        balancer.record(n, seconds)
    return seconds


@pytest.mark.parametrize("ranks", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [1, 2, 5, 50, 1000])
def test_bounds_cover_the_batch_once_in_rank_order(ranks, n):
    balancer = LoadBalancer(ranks)
    simulate(balancer, 64, 1e-4, [1e-5 * (r + 1) for r in range(ranks)], steps=200)
    bounds = balancer.bounds(n)
    assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == ranks + 1
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))


def test_equal_speeds_keep_the_even_split():
    balancer = LoadBalancer(4, window=5)
    simulate(balancer, 64, 2e-4, [3e-5] * 4, steps=100)
    assert balancer.shares == [0.25] * 4
    assert balancer.bounds(64) == [0, 16, 32, 48, 64]


@pytest.mark.parametrize("per_sample", [[1e-5, 2e-5], [1e-5, 1e-5, 3e-5], [4e-5, 1e-5, 2e-5, 1e-5]])
def test_uneven_speeds_converge_to_equal_busy_time(per_sample):
    """Ranks with a fixed cost per step and different costs per sample end within about a
    sample's cost of each other (the split is in whole samples), where the even split
    leaves them far apart."""
    n, fixed = 200, 3e-4
    even = simulate(LoadBalancer(len(per_sample), window=10**6), n, fixed, per_sample, 1)
    balancer = LoadBalancer(len(per_sample), window=10)
    busy = simulate(balancer, n, fixed, per_sample, steps=500)
    assert max(busy) - min(busy) <= 1.5 * max(per_sample)
    assert max(busy) < 0.8 * max(even)
    # the faster a rank's samples, the larger its share
    order = sorted(range(len(per_sample)), key=per_sample.__getitem__)
    assert [balancer.shares[r] for r in order] == sorted(balancer.shares, reverse=True)


def test_shares_move_only_at_the_end_of_a_window_and_by_the_damping():
    balancer = LoadBalancer(2, window=3, damping=0.5)
    for _ in range(2):
        assert balancer.record(20, [0.01, 0.03]) is False
        assert balancer.shares == [0.5, 0.5]
    assert balancer.record(20, [0.01, 0.03]) is True
    # rates 10:3.33 -> target shares 0.75, 0.25; half way from 0.5
    assert balancer.shares == pytest.approx([0.625, 0.375])


def test_long_steps_end_a_window_early():
    balancer = LoadBalancer(2, window=50, window_seconds=0.5, damping=1.0)
    assert balancer.record(20, [0.2, 0.4]) is False
    assert balancer.record(20, [0.2, 0.4]) is True  # rank 1 busy 0.8 s >= 0.5 s
    assert balancer.shares == pytest.approx([2 / 3, 1 / 3])


def test_a_very_slow_rank_keeps_a_floor_share():
    balancer = LoadBalancer(2, window=1, damping=1.0, floor=0.25)
    simulate(balancer, 100, 0.0, [1e-6, 1e-2], steps=50)
    assert balancer.shares[1] >= 0.1  # about floor/P, after the shares are rescaled
    assert balancer.bounds(100)[1] < 100


def test_a_window_without_samples_or_time_changes_nothing():
    balancer = LoadBalancer(2, window=1)
    assert balancer.bounds(1) == [0, 0, 1]  # rank 0 gets none of a batch of one
    assert balancer.record(1, [1.0, 1.0]) is False
    assert balancer.record(10, [0.0, 1.0]) is False
    assert balancer.shares == [0.5, 0.5]


def test_the_same_figures_give_the_same_shares_on_every_rank():
    """Every rank runs its own balancer on the figures the Allreduce gives all of them:
    they must agree exactly, or the ranks would train on overlapping slices."""
    ranks = [LoadBalancer(3, window=7) for _ in range(3)]
    for balancer in ranks:
        simulate(balancer, 97, 1.7e-4, [1.3e-5, 2.9e-5, 1.1e-5], steps=300)
    assert ranks[0].shares == ranks[1].shares == ranks[2].shares
    assert ranks[0].bounds(97) == ranks[1].bounds(97) == ranks[2].bounds(97)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ranks": 0}, "ranks must be >= 1"),
        ({"ranks": 2, "window": 0}, "window >= 1"),
        ({"ranks": 2, "window_seconds": 0.0}, "window_seconds > 0"),
        ({"ranks": 2, "damping": 0.0}, "damping in (0, 1]"),
        ({"ranks": 2, "floor": 1.5}, "floor in (0, 1]"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        LoadBalancer(**kwargs)


def test_record_needs_one_time_per_rank():
    with pytest.raises(ValueError, match="expected 3 times, one per rank, got 2"):
        LoadBalancer(3).record(30, [0.1, 0.2])
