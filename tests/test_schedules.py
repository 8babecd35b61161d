"""Learning-rate schedules: step by step against torch.optim.lr_scheduler, and the formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from convnp.optim import SGD
from convnp.schedules import (
    SCHEDULES,
    ConstantLR,
    CosineLR,
    ExponentialLR,
    InvLR,
    StepLR,
    make_schedule,
)


def _torch_lrs(base_lr, make_scheduler, steps):
    """The lr torch's optimizer uses at each of ``steps`` updates."""
    torch = pytest.importorskip("torch")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


def _assert_schedule_matches(schedule, reference):
    ours = np.array([schedule(step) for step in range(len(reference))])
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-15)


def test_step_lr_matches_torch():
    torch = pytest.importorskip("torch")
    reference = _torch_lrs(0.1, lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.5), 30)
    _assert_schedule_matches(StepLR(0.1, step_size=7, gamma=0.5), reference)
    assert StepLR(0.1, 7, 0.5)(14) == pytest.approx(0.1 * 0.5**2)


def test_exponential_lr_matches_torch():
    torch = pytest.importorskip("torch")
    reference = _torch_lrs(0.2, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9), 40)
    _assert_schedule_matches(ExponentialLR(0.2, gamma=0.9), reference)


def test_cosine_lr_matches_torch_then_holds_min_lr():
    torch = pytest.importorskip("torch")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR
    reference = _torch_lrs(0.1, lambda o: scheduler(o, T_max=20, eta_min=0.01), 21)
    schedule = CosineLR(0.1, total_steps=20, min_lr=0.01)
    _assert_schedule_matches(schedule, reference)
    assert schedule(10) == pytest.approx(0.055)  # half way: the mean of base_lr and min_lr
    assert schedule(20) == schedule(35) == pytest.approx(0.01)


def test_inv_lr_formula():
    schedule = InvLR(0.01, gamma=1e-4, power=0.75)  # Caffe's LeNet solver
    assert schedule(0) == 0.01
    assert schedule(10_000) == pytest.approx(0.01 * 2.0**-0.75, rel=1e-15)
    assert schedule(30_000) == pytest.approx(0.01 * 4.0**-0.75, rel=1e-15)


def test_constant_lr():
    assert ConstantLR(0.3)(0) == ConstantLR(0.3)(10**6) == 0.3


def test_warmup_matches_torch_sequential_lr():
    torch = pytest.importorskip("torch")
    schedulers = torch.optim.lr_scheduler

    def make(optimizer):
        warmup = schedulers.LinearLR(optimizer, start_factor=0.1, total_iters=5)
        cosine = schedulers.CosineAnnealingLR(optimizer, T_max=10, eta_min=0.001)
        return schedulers.SequentialLR(optimizer, [warmup, cosine], milestones=[5])

    reference = _torch_lrs(0.1, make, 16)
    schedule = CosineLR(0.1, 10, min_lr=0.001, warmup_steps=5, warmup_start_factor=0.1)
    _assert_schedule_matches(schedule, reference)


def test_warmup_from_zero_is_linear_then_hands_over():
    schedule = StepLR(0.4, step_size=3, gamma=0.5, warmup_steps=4)
    lrs = [schedule(step) for step in range(11)]
    np.testing.assert_allclose(lrs[:4], [0.0, 0.1, 0.2, 0.3])  # base_lr · t/W
    np.testing.assert_allclose(lrs[4:], [0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1])  # StepLR(t − W)


def test_schedule_drives_an_optimizer():
    weight = np.zeros(1)
    optimizer = SGD([("w", weight, np.ones(1))], lr=1.0)
    schedule = StepLR(0.1, step_size=2, gamma=0.5)
    for _ in range(5):
        optimizer.lr = schedule(optimizer.step_count)
        optimizer.step()
    np.testing.assert_allclose(weight, [-(0.1 + 0.1 + 0.05 + 0.05 + 0.025)])


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantLR(0.1, warmup_steps=3),
        StepLR(0.1, 5, gamma=0.3),
        ExponentialLR(0.1, 0.99, warmup_steps=2, warmup_start_factor=0.5),
        InvLR(0.01, 1e-4, 0.75),
        CosineLR(0.1, 100, min_lr=0.001),
    ],
    ids=repr,
)
def test_config_rebuilds_the_same_schedule(schedule):
    rebuilt = type(schedule)(**json.loads(json.dumps(schedule.config())))
    assert repr(rebuilt) == repr(schedule)
    assert [rebuilt(t) for t in range(0, 50, 7)] == [schedule(t) for t in range(0, 50, 7)]


def test_repr():
    assert repr(StepLR(0.1, 5)) == "StepLR(base_lr=0.1, step_size=5, gamma=0.1)"
    assert repr(ConstantLR(0.1, warmup_steps=3)) == (
        "ConstantLR(base_lr=0.1, warmup_steps=3, warmup_start_factor=0.0)"
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StepLR(-0.1, 5), "base_lr"),
        (lambda: StepLR(0.1, 0), "step_size"),
        (lambda: CosineLR(0.1, 0), "total_steps"),
        (lambda: CosineLR(0.1, 10, min_lr=0.2), "min_lr"),
        (lambda: InvLR(0.1, -1.0, 0.75), "gamma"),
        (lambda: ExponentialLR(0.1, 0.9, warmup_steps=-1), "warmup_steps"),
        (lambda: ExponentialLR(0.1, 0.9, warmup_steps=2, warmup_start_factor=2.0), "start_factor"),
        (lambda: ExponentialLR(0.1, 0.9, warmup_steps=math.inf), "warmup_steps"),
        (lambda: CosineLR(0.1, 10.5), "total_steps"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("step", [-1, 2.5])
def test_bad_step(step):
    with pytest.raises(ValueError, match="StepLR: step must be an integer >= 0"):
        StepLR(0.1, 5)(step)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_by_name_are_planned_over_the_whole_run(name):
    schedule = make_schedule(name, 0.1, total_steps=90, warmup_steps=10)
    assert schedule(0) == 0.0 and schedule(10) == pytest.approx(0.1)  # warm-up, then base_lr
    final = {"constant": 0.1, "step": 0.1 * 0.1**2, "exponential": 0.1 * 0.01 ** (80 / 90),
             "inv": 0.1 * (1 + 1e-4 * 80) ** -0.75, "cosine": 0.0}  # fmt: skip
    assert schedule(90) == pytest.approx(final[name])
    longer = make_schedule(name, 0.1, total_steps=180, warmup_steps=10)
    assert (longer(90) > schedule(90)) == (name in ("step", "exponential", "cosine"))


def test_an_unknown_schedule_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; known: constant, step"):
        make_schedule("linear", 0.1, 100)
