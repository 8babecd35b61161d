"""PyTorch's own module test cases, run against convnp (issue 13).

The cases are read at collection time from the installed torch, not re-typed:
``torch.testing._internal.common_nn`` (``module_tests``, ``get_new_module_tests()``,
``criterion_tests``) and ``torch.testing._internal.common_modules.module_db`` (each module's
``module_inputs_func``, in training mode and, where PyTorch says train and eval differ, in
eval mode too). Every case whose module convnp has (or lacks only as a ``Lazy*`` variant) is
kept; PyTorch's functional cases (``F.interpolate``, ``F.softmax``...) are not modules and
are left out.

Each case is mapped to convnp by reading the torch module's constructor arguments back from
its attributes (every argument of the torch constructor is an attribute of the module) and
passing them by name to the convnp class, float64; the weights and buffers are copied
across. Output, input gradient (for a random upstream gradient) and every parameter
gradient must match autograd to 1e-10, and running statistics after a training forward
must match too. An argument convnp lacks, with a value other than PyTorch's default, skips
the case naming the argument; the remaining known gaps are listed in ``_known_gap`` with the
missing feature they name.

``nn.MSELoss`` maps to ``SquaredErrorLoss`` (E = ½ Σ (y − t)², per sample then averaged over
the batch for "mean"): the two differ by a known factor, applied to the loss and its gradient
(2 for "sum" and "none", 2N / numel for "mean").
"""

from __future__ import annotations

import inspect
import sys
import types
import unittest
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from helpers import _assert_close

from convnp import layers, losses

torch = pytest.importorskip("torch")


def _import_torch_lists() -> tuple[Any, Any]:
    """common_nn and module_db; ``expecttest`` (a test-only dependency of theirs) gets a
    stand-in when it is not installed: they only subclass its TestCase."""
    if "expecttest" not in sys.modules:
        try:
            import expecttest  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("expecttest")
            stand_in.TestCase = unittest.TestCase
            stand_in.ACCEPT = False
            sys.modules["expecttest"] = stand_in
    from torch.testing._internal import common_modules, common_nn

    return common_nn, common_modules.module_db


# torch class name -> convnp class (losses included); MSELoss maps through a scale factor.
# Cases of the torch classes in MODULES_TO_COVER are collected even where convnp lacks the
# class, so that they are counted (and skipped, naming it) rather than silently left out.
MODULES_TO_COVER: set[str] = set()  # none left: ConvTranspose1d/2d/3d are convnp layers now
CONVNP_CLASSES: dict[str, type] = {
    name: getattr(layers, name)
    for name in layers.__all__
    if name in dir(torch.nn) and name != "Layer"
}
CONVNP_CLASSES["CrossEntropyLoss"] = losses.CrossEntropyLoss
CONVNP_CLASSES["MSELoss"] = losses.SquaredErrorLoss
# torch constructor arguments that change nothing numerically (or only PyTorch's legacy
# spelling of ``reduction``): never passed on.
IGNORED_ARGUMENTS = {"self", "device", "dtype", "inplace", "size_average", "reduce"}


def _covered(class_name: str) -> bool:
    return (
        class_name in CONVNP_CLASSES
        or class_name in MODULES_TO_COVER
        or class_name.startswith("Lazy")
    )


@dataclass
class Case:
    """One PyTorch test case: how to build its module, its inputs, train or eval mode."""

    name: str
    build: Any  # () -> torch.nn.Module
    inputs: tuple  # float64 tensors (or integer targets), detached
    training: bool
    class_name: str


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().clone()
        return value.double() if value.is_floating_point() else value
    return value


def _common_nn_cases(common_nn: Any) -> list[Case]:
    cases = []
    tests = common_nn.module_tests + common_nn.get_new_module_tests() + common_nn.criterion_tests
    for index, spec in enumerate(tests):
        if "module_name" in spec:
            module_class = getattr(torch.nn, spec["module_name"])
            args = spec.get("constructor_args", ())

            def build(module_class: Any = module_class, args: tuple = args) -> Any:
                return module_class(*args)

        else:
            build = spec["constructor"]
        torch.manual_seed(index)
        try:
            module = build()
        except Exception:  # a case torch itself builds only on other hardware
            continue
        class_name = type(module).__name__
        if not _covered(class_name):
            continue
        inputs = [spec["input_fn"]() if "input_fn" in spec else torch.randn(spec["input_size"])]
        if "target_fn" in spec:
            inputs.append(spec["target_fn"]())
        elif "target_size" in spec:
            inputs.append(torch.randn(spec["target_size"]))
        name = spec.get("fullname") or "_".join(
            filter(None, (spec.get("module_name"), spec.get("desc")))
        )
        cases.append(
            Case(f"common_nn-{name}", build, tuple(map(_detached, inputs)), True, class_name)
        )
    return cases


def _module_db_cases(module_db: Any) -> list[Case]:
    cases = []
    for info in module_db:
        class_name = info.module_cls.__name__
        if not _covered(class_name):
            continue
        for training in (True, False) if info.train_and_eval_differ else (True,):
            torch.manual_seed(0)
            module_inputs = info.module_inputs_func(
                info, device="cpu", dtype=torch.float64, requires_grad=False, training=training
            )
            for number, module_input in enumerate(module_inputs):
                constructor = module_input.constructor_input
                forward = module_input.forward_input

                def build(info: Any = info, constructor: Any = constructor) -> Any:
                    return info.module_cls(*constructor.args, **constructor.kwargs)

                inputs = (*forward.args, *forward.kwargs.values())
                mode = "train" if training else "eval"
                desc = module_input.desc or "default"
                cases.append(
                    Case(
                        f"module_db-{class_name}-{desc}-{number}-{mode}",
                        build,
                        tuple(map(_detached, inputs)),
                        training,
                        class_name,
                    )
                )
    return cases


def _load_cases() -> list[Case]:
    common_nn, module_db = _import_torch_lists()
    return _common_nn_cases(common_nn) + _module_db_cases(module_db)


CASES = _load_cases()


# -- mapping a torch module to convnp --------------------------------------------------------
def _argument_value(module: Any, name: str) -> Any:
    """The value a torch module was built with, read back from its attributes."""
    if name == "bias":  # bias=False of BatchNorm (PyTorch 2.x) only counts when affine
        return module.bias is not None or not getattr(module, "affine", True)
    value = getattr(module, name)
    if isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    return value


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, np.ndarray) or isinstance(default, np.ndarray):
        return False
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)
    return value == default


def _convnp_arguments(module: Any) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for the convnp twin, and the non-default torch arguments it lacks."""
    ours = inspect.signature(CONVNP_CLASSES[type(module).__name__].__init__).parameters
    kwargs: dict[str, Any] = {}
    missing = []
    for name, parameter in inspect.signature(type(module).__init__).parameters.items():
        variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        if name in IGNORED_ARGUMENTS or variadic:
            continue
        value = _argument_value(module, name)
        if name in ours:
            kwargs[name] = value
        elif not _is_default(value, parameter.default):
            missing.append(f"{name}={value!r}")
    if "dtype" in ours:
        kwargs["dtype"] = np.float64
    if "rng" in ours:
        kwargs["rng"] = np.random.default_rng(0)
    return kwargs, missing


def _input_ndim(case: Case) -> int:
    return case.inputs[0].dim()


def _lacks_batch_axis(case: Case) -> bool:
    """A (C, *spatial) input to an N-d layer, (C,) logits or a (D,) vector to a loss."""
    name = case.class_name
    ndim = _input_ndim(case)
    spatial = {"1d": 1, "2d": 2, "3d": 3}.get(name[-2:])
    return spatial is not None and not name.startswith("BatchNorm") and ndim == spatial + 1


def _known_gap(case: Case, module: Any) -> str | None:
    """The convnp feature a case needs and convnp lacks (None: the case must pass)."""
    name = case.class_name
    if name.startswith("Lazy"):
        return "Lazy* module: convnp has no lazy shape inference (in_channels is required)"
    if name not in CONVNP_CLASSES:
        return f"{name}: not in convnp"
    _, missing = _convnp_arguments(module)
    if missing:
        return f"{name}: convnp has no argument {', '.join(missing)}"
    gaps = {
        "input without a batch axis": (
            _lacks_batch_axis(case)
            and _input_ndim(case) > 0
            and not CONVNP_CLASSES[name].accepts_unbatched
        ),
    }
    return next((gap for gap, applies in gaps.items() if applies), None)


def _expected_failure(case: Case) -> str | None:
    if _input_ndim(case) == 0:
        return "0-d input: convnp layers and losses take arrays with at least one axis"
    return None


# -- running one case ------------------------------------------------------------------------
def _convnp_twin(module: Any) -> Any:
    kwargs, _ = _convnp_arguments(module)
    twin = CONVNP_CLASSES[type(module).__name__](**kwargs)
    for name, value in module.named_parameters():
        target = twin.params[name]
        assert target.shape == tuple(value.shape), f"{name}: {target.shape} vs {value.shape}"
        target[...] = value.detach().numpy()
    for name, value in module.named_buffers():
        if name in getattr(twin, "buffers", {}):
            twin.buffers[name][...] = value.detach().numpy()
    return twin


def _mse_scale(module: Any, y: np.ndarray) -> float:
    """torch's MSELoss over convnp's SquaredErrorLoss (½ Σ, per-sample mean)."""
    if module.reduction == "mean":
        batch = y.shape[0] if y.ndim > 1 else 1
        return 2.0 * batch / y.size
    return 2.0


def _run_loss(case: Case, module: Any, twin: Any) -> None:
    y_t = case.inputs[0].clone().requires_grad_()
    target_t = case.inputs[1]
    y = y_t.detach().numpy().copy()
    target = target_t.numpy().copy()
    scale = _mse_scale(module, y) if isinstance(module, torch.nn.MSELoss) else 1.0
    loss_t = module(y_t, target_t)
    loss = twin.forward(y, target)
    rng = np.random.default_rng(1)
    if module.reduction == "none":
        dloss = rng.standard_normal(loss_t.shape)
        loss_t.backward(torch.tensor(dloss))
        dy = twin.backward(dloss)
    else:
        loss_t.backward()
        dy = twin.backward()
    loss = scale * np.asarray(loss, dtype=np.float64)
    _assert_close("loss", loss, loss_t.detach().numpy(), y.dtype)
    _assert_close("dinput", scale * dy, y_t.grad.numpy(), y.dtype)


def _run_layer(case: Case, module: Any, twin: Any) -> None:
    x_t = case.inputs[0].clone().requires_grad_()
    x = x_t.detach().numpy().copy()
    out_t = module(x_t)
    out = twin.forward(x)
    y_t, y = out_t, out
    if isinstance(out_t, tuple):  # (values, indices): max pooling with return_indices
        y_t, y = out_t[0], out[0]
        np.testing.assert_array_equal(out[1], out_t[1].numpy(), err_msg="indices")
    _assert_close("forward", y, y_t.detach().numpy(), x.dtype)
    for name, value in module.named_buffers():
        if name in twin.buffers:
            _assert_close(f"buffer {name}", twin.buffers[name], value.numpy(), x.dtype)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    y_t.backward(torch.tensor(dy))
    dx = twin.backward(dy)
    _assert_close("dx", dx, x_t.grad.numpy(), x.dtype)
    for name, value in module.named_parameters():
        _assert_close(f"grad {name}", twin.grads[name], value.grad.numpy(), x.dtype)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_torch_module_case(case: Case) -> None:
    torch.manual_seed(0)
    module = case.build().double().train(case.training)
    gap = _known_gap(case, module)
    if gap is not None:
        pytest.skip(gap)
    failure = _expected_failure(case)
    if failure is not None:
        pytest.xfail(failure)
    twin = _convnp_twin(module)
    if isinstance(module, torch.nn.modules.loss._Loss):
        _run_loss(case, module, twin)
    else:
        twin.train(case.training)
        _run_layer(case, module, twin)


def test_cases_were_collected() -> None:
    """The lists are read from torch: an empty or shrunken list must not pass silently."""
    assert len(CASES) > 300
