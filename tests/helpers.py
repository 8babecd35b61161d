"""The two checks every layer goes through (DESIGN 3.6), written once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from convnp.gradcheck import gradcheck

GRADCHECK_TOLERANCE = 1e-7


def assert_gradients_match_numeric(
    module: Any, x: np.ndarray, *, tolerance: float = GRADCHECK_TOLERANCE, **kwargs: Any
) -> dict[str, float]:
    """Central differences in float64 against backward, for dx and every gradient (every
    entry unless ``max_checks`` says otherwise; gradcheck's default samples 20)."""
    kwargs.setdefault("max_checks", None)
    errors = gradcheck(module, x, **kwargs)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tolerance, f"{module!r}: relative errors {errors}"
    return errors


def _assert_close(name: str, ours: np.ndarray, theirs: np.ndarray, dtype: np.dtype) -> None:
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != torch {theirs.shape}"
    assert ours.dtype == dtype, f"{name}: dtype {ours.dtype} changed from {dtype}"
    scale = max(float(np.nanmax(np.abs(theirs), initial=0.0)), 1.0)  # NaN where torch has NaN
    if dtype == np.float64:
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * scale, err_msg=name)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def assert_matches_torch(
    layer: Any,
    twin: Any | Callable[..., Any],
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    param_names: dict[str, str] | None = None,
) -> None:
    """Forward, dx and every parameter gradient against PyTorch autograd.

    ``twin`` is a torch.nn.Module whose parameter names equal ours (PyTorch layout, so no
    conversion), or a function ``twin(x, params) -> y`` built from torch primitives for
    layers torch lacks. float64: atol 1e-10; float32: rtol 1e-4.
    """
    torch = pytest.importorskip("torch")
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dx = layer.backward(dy)

    x_t = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    params_t = {
        key: torch.tensor(value.copy(), requires_grad=True) for key, value in layer.params.items()
    }
    if isinstance(twin, torch.nn.Module):
        names = param_names or {key: key for key in params_t}
        y_t = torch.func.functional_call(twin, {names[k]: v for k, v in params_t.items()}, (x_t,))
    else:
        y_t = twin(x_t, params_t)
    y_t.backward(torch.tensor(dy))

    _assert_close("forward", y, y_t.detach().numpy(), x.dtype)
    _assert_close("dx", dx, x_t.grad.numpy(), x.dtype)
    for key, value in params_t.items():
        _assert_close(f"grad {key}", layer.grads[key], value.grad.numpy(), x.dtype)
