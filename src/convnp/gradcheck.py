"""Finite-difference gradient checking: the evidence that each hand-written backward is right.

For a layer or model g, take a fixed random r shaped like y = g(x) and the scalar
L = Σ (y ∘ r). Then ∂L/∂y = r, so ``backward(r)`` must return ∂L/∂x and fill ∂L/∂θ. Each is
compared with (extrapolated, see below) central differences (L(v + ε) − L(v − ε)) / 2ε,
element by element, through the relative error ‖a − n‖∞ / max(‖a‖∞ + ‖n‖∞, 1e-12). A random
r (not ones) exposes indexing and transposition mistakes that a sum would hide.

The step. A central difference D(ε) has truncation error ~ ε²·|L′′′|/6 and rounding error
~ u·|L|/ε (u = 1.1e-16 in float64), where |L| is the size of the summed output, not of the
one entry being checked. On a whole network the input's gradient entries are small while
|L| sums a whole batch's outputs, so at ε = 1e-6 rounding noise alone gives relative errors
of ~4e-6 on correct code; a larger step trades that for truncation error, which a batch norm
over two samples makes large. So gradcheck uses Richardson's extrapolation of two central
differences, (4·D(ε/2) − D(ε)) / 3, whose truncation error is O(ε⁴) (four forward passes
per entry), at ``DEFAULT_EPS`` = 3e-4: large enough that rounding stays small, small enough
that a perturbation rarely crosses a ReLU's kink (at 1e-3 the ``modern`` model's first ReLU
did). Measured, 20 entries per array: the README's network (batch 10, three seeds) 8e-9 to
2.7e-8, against 3.8e-6 to 1.1e-5 at ε = 1e-6; every layer of ``bouvrie``, ``lenet5``,
``lenet5-classic`` and ``fashion`` (including BatchNorm1d on two samples: 3.1e-7 at 1e-6)
below 1e-9. Max pooling right after a ReLU is not differentiable where a window holds tied
zeros; a finite difference that perturbs such a tie cannot agree with any gradient there.

Sampling. Checking every entry costs four forward passes per entry: the 43,098 entries of the
README's network take over 10 minutes. By default ``DEFAULT_MAX_CHECKS`` entries per array are
drawn at random (without replacement) and the result records how many were checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from convnp.layers.base import Layer
from convnp.model import Sequential

DEFAULT_EPS = 3e-4
DEFAULT_MAX_CHECKS = 20


class GradcheckResult(dict):
    """{array name: max relative error}, plus what was checked: ``checked[name]`` entries
    of ``sizes[name]``, with step ``eps``. ``str()`` gives a one-line-per-array report."""

    def __init__(
        self, errors: dict[str, float], checked: dict[str, int], sizes: dict[str, int], eps: float
    ) -> None:
        super().__init__(errors)
        self.checked, self.sizes, self.eps = checked, sizes, eps

    @property
    def worst(self) -> float:
        return max(self.values(), default=0.0)

    def __str__(self) -> str:
        lines = [
            f"{name}: {error:.1e} ({self.checked[name]:,} of {self.sizes[name]:,} entries)"
            for name, error in self.items()
        ]
        lines.append(
            f"worst relative error {self.worst:.1e} "
            f"(extrapolated central differences, eps {self.eps:g})"
        )
        return "\n".join(lines)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """‖a − n‖∞ / max(‖a‖∞ + ‖n‖∞, 1e-12)."""
    scale = max(np.abs(analytic).max(initial=0.0) + np.abs(numeric).max(initial=0.0), 1e-12)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def numerical_gradient(
    loss: Callable[[], float], array: np.ndarray, eps: float = 1e-6, indices: Any = None
) -> np.ndarray:
    """Central-difference ∂loss/∂array, perturbing ``array`` in place (and restoring it).

    ``indices`` (flat indices) limits the check to some entries; the others are left 0.
    """
    grad = np.zeros_like(array)
    flat = array.reshape(-1)  # a view: array must be contiguous, as params and inputs are here
    if not np.shares_memory(flat, array):
        raise ValueError("numerical_gradient: array must be contiguous")
    grad_flat = grad.reshape(-1)
    for i in range(flat.size) if indices is None else indices:
        saved = flat[i]
        flat[i] = saved + eps
        plus = loss()
        flat[i] = saved - eps
        minus = loss()
        flat[i] = saved
        grad_flat[i] = (plus - minus) / (2 * eps)
    return grad


def _named_params(module: Layer | Sequential) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if isinstance(module, Sequential):
        return list(module.parameters())
    return [(key, module.params[key], module.grads[key]) for key in module.params]


def gradcheck(
    module: Layer | Sequential,
    x: np.ndarray,
    *,
    dy: np.ndarray | None = None,
    eps: float = DEFAULT_EPS,
    max_checks: int | None = DEFAULT_MAX_CHECKS,
    rng: np.random.Generator | None = None,
    training: bool = True,
) -> GradcheckResult:
    """Max relative error of ``backward`` against central differences, per array.

    Returns a ``GradcheckResult``: {"input": error of dx, "<param name>": error of its
    gradient, ...}, which also records how many entries were checked. ``max_checks``
    samples that many entries per array (default 20; None checks all). ``eps``: the step
    of the extrapolated central differences; the module docstring says why 1e-4. float64
    only: float32 round-off (~1e-7) swamps a difference quotient, so it is refused.
    ``training``: check the training-mode function (the default) or, with False, the
    eval-mode one (batch norm with its running statistics, dropout the identity); the
    module is left in that mode.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    named = _named_params(module)
    if x.dtype != np.float64 or any(p.dtype != np.float64 for _, p, _ in named):
        raise ValueError(
            "gradcheck needs float64 inputs and parameters (float32 round-off swamps finite "
            "differences); call .astype(np.float64) on the model and the input first"
        )
    x = np.array(x, dtype=np.float64, order="C", copy=True)
    if training:
        module.train()
    else:
        module.eval()
    y = module.forward(x)
    r = rng.standard_normal(y.shape) if dy is None else np.asarray(dy, dtype=np.float64)
    analytic = {"input": np.array(module.backward(r))}
    analytic.update({name: grad.copy() for name, _, grad in named})

    def loss() -> float:
        return float(np.sum(module.forward(x) * r))

    targets = [("input", x)] + [(name, param) for name, param, _ in named]
    errors, checked = {}, {}
    for name, array in targets:
        indices = None
        if max_checks is not None and array.size > max_checks:
            indices = rng.choice(array.size, size=max_checks, replace=False)
        # Richardson extrapolation of two central differences: truncation O(ε⁴), not O(ε²)
        coarse = numerical_gradient(loss, array, eps, indices)
        numeric = (4 * numerical_gradient(loss, array, eps / 2, indices) - coarse) / 3
        chosen = (
            analytic[name].reshape(-1) if indices is None else analytic[name].reshape(-1)[indices]
        )
        numeric_chosen = numeric.reshape(-1) if indices is None else numeric.reshape(-1)[indices]
        errors[name] = relative_error(chosen, numeric_chosen)
        checked[name] = array.size if indices is None else len(indices)
    module.forward(x)  # leave the cache consistent with the unperturbed parameters
    return GradcheckResult(errors, checked, {name: a.size for name, a in targets}, eps)
