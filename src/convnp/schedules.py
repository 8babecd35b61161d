"""Learning-rate schedules: the solver's lr as a function of the step count (SPEC §1).

A schedule is a small, stateless callable ``schedule(step) -> lr``. Because it holds no state,
resuming needs nothing beyond the optimizer's ``step_count``. Apply it before each update:

    optimizer.lr = schedule(optimizer.step_count)
    ...
    optimizer.step()

Steps count from 0, so the first update uses ``schedule(0)``, which is ``base_lr`` unless there
is a warm-up (as in torch's schedulers and Caffe's ``iter``).

Warm-up is available on every schedule. With ``warmup_steps`` = W > 0 and
``warmup_start_factor`` = s, the lr climbs linearly from s·base_lr to base_lr over the first W
steps, and the schedule proper starts when the warm-up ends:
    lr(t) = base_lr · (s + (1 − s)·t/W)      for t < W
    lr(t) = decayed(t − W)                   for t ≥ W
This is torch's ``SequentialLR([LinearLR(start_factor=s, total_iters=W), schedule],
milestones=[W])``.

Each schedule has ``config()``, which returns its constructor arguments (JSON-serialisable).
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any


def _check_count(owner: str, name: str, value: Any, minimum: int) -> int:
    """An integer count (steps), at least ``minimum``; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Schedule:
    """Base class: base_lr, the linear warm-up, config and repr; subclasses define ``_decayed``."""

    def __init__(
        self, base_lr: float, *, warmup_steps: int = 0, warmup_start_factor: float = 0.0
    ) -> None:
        owner = type(self).__name__
        if not (math.isfinite(base_lr) and base_lr >= 0):
            raise ValueError(f"{owner}: base_lr must be >= 0, got {base_lr}")
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(
                f"{owner}: warmup_start_factor must lie in [0, 1], got {warmup_start_factor}"
            )
        self.base_lr = float(base_lr)
        self.warmup_steps = _check_count(owner, "warmup_steps", warmup_steps, 0)
        self.warmup_start_factor = float(warmup_start_factor)

    def __call__(self, step: int) -> float:
        step = _check_count(type(self).__name__, "step", step, 0)
        if step < self.warmup_steps:
            start = self.warmup_start_factor
            return self.base_lr * (start + (1.0 - start) * step / self.warmup_steps)
        return self._decayed(step - self.warmup_steps)

    def _decayed(self, step: int) -> float:
        """The lr ``step`` steps after the warm-up ended."""
        raise NotImplementedError

    def _own_config(self) -> dict[str, Any]:
        """The subclass's own constructor arguments."""
        return {}

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable)."""
        config: dict[str, Any] = {"base_lr": self.base_lr, **self._own_config()}
        if self.warmup_steps:
            config["warmup_steps"] = self.warmup_steps
            config["warmup_start_factor"] = self.warmup_start_factor
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}({args})"


class ConstantLR(Schedule):
    """lr(t) = base_lr: a fixed rate, after the optional warm-up (Caffe's "fixed")."""

    def _decayed(self, step: int) -> float:
        return self.base_lr


class StepLR(Schedule):
    """lr(t) = base_lr · γ^⌊t / step_size⌋ (Caffe's "step"; torch's StepLR).

    Args:
        base_lr: the rate at step 0.
        step_size: steps between decays.
        gamma: γ, the factor applied every ``step_size`` steps.
    """

    def __init__(
        self,
        base_lr: float,
        step_size: int,
        gamma: float = 0.1,
        *,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
    ) -> None:
        super().__init__(
            base_lr, warmup_steps=warmup_steps, warmup_start_factor=warmup_start_factor
        )
        self.step_size = _check_count("StepLR", "step_size", step_size, 1)
        self.gamma = float(gamma)

    def _own_config(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}

    def _decayed(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class ExponentialLR(Schedule):
    """lr(t) = base_lr · γ^t (Caffe's "exp"; torch's ExponentialLR)."""

    def __init__(
        self,
        base_lr: float,
        gamma: float,
        *,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
    ) -> None:
        super().__init__(
            base_lr, warmup_steps=warmup_steps, warmup_start_factor=warmup_start_factor
        )
        self.gamma = float(gamma)

    def _own_config(self) -> dict[str, Any]:
        return {"gamma": self.gamma}

    def _decayed(self, step: int) -> float:
        return self.base_lr * self.gamma**step


class InvLR(Schedule):
    """lr(t) = base_lr · (1 + γ·t)^(−power) (Caffe's "inv").

    Caffe's LeNet solver uses base_lr=0.01, gamma=1e-4, power=0.75.
    """

    def __init__(
        self,
        base_lr: float,
        gamma: float,
        power: float,
        *,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
    ) -> None:
        super().__init__(
            base_lr, warmup_steps=warmup_steps, warmup_start_factor=warmup_start_factor
        )
        if gamma < 0:
            raise ValueError(f"InvLR: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.power = float(power)

    def _own_config(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "power": self.power}

    def _decayed(self, step: int) -> float:
        return self.base_lr * (1.0 + self.gamma * step) ** (-self.power)


class CosineLR(Schedule):
    """lr(t) = min_lr + (base_lr − min_lr) · (1 + cos(π·t/T)) / 2, for t ≤ T = total_steps.

    This is torch's CosineAnnealingLR(T_max=T, eta_min=min_lr). After T steps the lr stays at
    min_lr instead of rising again.
    """

    def __init__(
        self,
        base_lr: float,
        total_steps: int,
        min_lr: float = 0.0,
        *,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
    ) -> None:
        super().__init__(
            base_lr, warmup_steps=warmup_steps, warmup_start_factor=warmup_start_factor
        )
        self.total_steps = _check_count("CosineLR", "total_steps", total_steps, 1)
        if not 0.0 <= min_lr <= base_lr:
            raise ValueError(f"CosineLR: min_lr must lie in [0, base_lr], got {min_lr}")
        self.min_lr = float(min_lr)

    def _own_config(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "min_lr": self.min_lr}

    def _decayed(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress)) / 2


#: Schedules by name, as ``convnp train --schedule`` and the recipes name them.
SCHEDULES: tuple[str, ...] = ("constant", "step", "exponential", "inv", "cosine")


def make_schedule(name: str, base_lr: float, total_steps: int, warmup_steps: int = 0) -> Schedule:
    """The named schedule planned over a run of ``total_steps`` steps (warm-up included).

    "step" divides the lr by 10 after each third of the run, "exponential" decays it to
    1% by the end, "inv" is Caffe's LeNet policy (γ = 1e-4, power 0.75), "cosine" anneals
    it to 0 over the steps after the warm-up. Because the plan depends on ``total_steps``,
    extending a run re-plans it (``convnp train --resume DIR --epochs N`` says so).
    """
    options = {"warmup_steps": warmup_steps}
    if name == "constant":
        return ConstantLR(base_lr, **options)
    if name == "step":
        return StepLR(base_lr, step_size=max(total_steps // 3, 1), gamma=0.1, **options)
    if name == "exponential":
        return ExponentialLR(base_lr, gamma=0.01 ** (1 / max(total_steps, 1)), **options)
    if name == "inv":
        return InvLR(base_lr, gamma=1e-4, power=0.75, **options)
    if name == "cosine":
        return CosineLR(base_lr, total_steps=max(total_steps - warmup_steps, 1), **options)
    raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
