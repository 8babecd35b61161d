"""Load balancing for data-parallel ranks on cores of uneven speed.

With an even split every step waits for the slowest rank. Cores are often uneven: a
laptop's performance and efficiency cores, a virtual machine's cores shared with other
tenants, a cluster of mixed nodes. ``LoadBalancer`` gives each rank r a share s_r of every
global batch of N samples, so rank r gets about n_r = s_r·N of them, and moves samples
towards the ranks that finish sooner. The gradient is Σ_r (n_r/N)·∇E_r whatever the split
(``convnp.runtime.distributed``), so only the rounding of that sum depends on the split.

Rank r's busy time in a step is t_r = f + v_r·n_r (a fixed cost per step, and a cost per
sample that differs between cores). After every ``window`` steps, or sooner once a rank has
been busy ``window_seconds`` in them (long steps), from the window's totals,

    ρ_r = Σ n_r / Σ t_r                      (samples per second on rank r)
    s_r ← s_r + λ·(ρ_r / Σ_q ρ_q − s_r)     (λ: ``damping``)

then every share is kept at least ``floor``/P and the shares are scaled to sum to 1. At a
fixed point ρ_r ∝ s_r ∝ n_r, so every rank's t_r is the same: each step then waits for
no one.

Every rank holds its own balancer and feeds it the same figures (the busy times travel in
the gradient Allreduce, each rank writing its own slot), so all of them must compute the
same shares: the arithmetic is plain Python floats (IEEE double, the same on every
machine), not NumPy, whose SIMD sums may round differently on different CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Steps whose busy times make one estimate: at about 3 ms a step (bouvrie, batch 50), 50
#: steps average a rank's step-to-step jitter (0.9 ms standard deviation on a shared VM)
#: down to a few per cent of a step.
WINDOW = 50
#: ... or fewer steps, once a rank has been busy this long in them: long steps average their
#: own jitter, and 50 steps of 0.1 s (modern, batch 128) would take a minute to move once.
WINDOW_SECONDS = 0.5
#: Fraction of the way to the estimated balance taken at each update: noise in one window's
#: estimate moves the shares by half as much.
DAMPING = 0.5
#: No rank's share is cut below FLOOR/P (before the shares are rescaled to sum to 1), so
#: every rank keeps some samples and so keeps measuring its speed.
FLOOR = 0.25


class LoadBalancer:
    """The shares of each global batch that equalise P ranks' busy time per step.

    Args:
        ranks: P, the number of ranks.
        window, window_seconds, damping, floor: as in the module's equations.
    """

    def __init__(
        self,
        ranks: int,
        *,
        window: int = WINDOW,
        window_seconds: float = WINDOW_SECONDS,
        damping: float = DAMPING,
        floor: float = FLOOR,
    ) -> None:
        if ranks < 1:
            raise ValueError(f"LoadBalancer: ranks must be >= 1, got {ranks}")
        if window < 1 or window_seconds <= 0 or not 0.0 < damping <= 1.0 or not 0.0 < floor <= 1.0:
            raise ValueError(
                "LoadBalancer: needs window >= 1, window_seconds > 0, damping in (0, 1] and "
                f"floor in (0, 1], got window={window}, window_seconds={window_seconds}, "
                f"damping={damping}, floor={floor}"
            )
        self.ranks, self.window, self.window_seconds = ranks, window, window_seconds
        self.damping, self.floor = damping, floor
        self.shares = [1.0 / ranks] * ranks
        self._samples = [0] * ranks
        self._seconds = [0.0] * ranks
        self._steps = 0
        self._bounds: dict[int, list[int]] = {}

    def bounds(self, n: int) -> list[int]:
        """Rank r's samples of a global batch of n are [bounds[r], bounds[r + 1]): the
        rounded running sums of the shares (equal shares give ⌊n·r/P⌉ splits)."""
        if n not in self._bounds:
            bounds, running = [0], 0.0
            for share in self.shares[:-1]:
                running += share
                bounds.append(min(n, max(bounds[-1], round(running * n))))
            bounds.append(n)
            self._bounds[n] = bounds
        return self._bounds[n]

    def record(self, n: int, seconds: Sequence[float]) -> bool:
        """Add one step: a global batch of n, split by the current ``bounds(n)``, and each
        rank's busy seconds t_r on its part. At the end of a window the shares move (the
        equations above); returns True when they did."""
        if len(seconds) != self.ranks:
            raise ValueError(
                f"LoadBalancer.record: expected {self.ranks} times, one per rank, got "
                f"{len(seconds)}"
            )
        bounds = self.bounds(n)
        for rank in range(self.ranks):
            self._samples[rank] += bounds[rank + 1] - bounds[rank]
            self._seconds[rank] += float(seconds[rank])
        self._steps += 1
        if self._steps < self.window and max(self._seconds) < self.window_seconds:
            return False
        moved = self._update()
        self._samples, self._seconds, self._steps = [0] * self.ranks, [0.0] * self.ranks, 0
        return moved

    def _update(self) -> bool:
        if min(self._seconds) <= 0.0 or min(self._samples) == 0:
            return False  # a rank without samples or time tells nothing of its speed
        rates = [n / t for n, t in zip(self._samples, self._seconds)]  # ρ_r
        total = sum(rates)
        lowest = self.floor / self.ranks
        shares = [
            max(lowest, share + self.damping * (rate / total - share))
            for share, rate in zip(self.shares, rates)
        ]
        scale = sum(shares)
        shares = [share / scale for share in shares]
        if shares == self.shares:
            return False
        self.shares, self._bounds = shares, {}
        return True
