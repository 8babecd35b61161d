"""The layer protocol every convnp layer follows.

A layer is one differentiable step of a network (SPEC §1, Caffe's split):

* ``params``: dict of learnable arrays, e.g. ``{"weight": ..., "bias": ...}``.
* ``grads``: dict with the same keys and shapes; ``grads[k]`` holds ∂E/∂params[k].
* ``buffers``: dict of non-learned state that is saved with the model (e.g. batch-norm
  running statistics); empty for most layers.
* ``forward(x)`` computes y and caches exactly what ``backward`` needs.
* ``backward(dy)`` takes dy = ∂E/∂y, writes ∂E/∂θ into ``grads`` and returns dx = ∂E/∂x.

Naming rule used throughout convnp: for any quantity q, ``dq`` means ∂E/∂q.

Decisions, made once here for every layer:

1. **Overwrite, don't accumulate.** ``backward`` assigns ``grads[k][...] = ...``. The batch
   sum of per-sample gradients happens inside one vectorised backward, so there is no
   ``zero_grad()`` to forget and a second backward cannot double-count.
2. **Arrays are allocated once and changed in place.** ``params`` and ``grads`` get their
   final shapes in ``__init__``; optimizers update ``param -= step`` in place and may hold
   references. ``astype()`` is the one documented exception (call it before building the
   optimizer).
3. **Shapes are known at construction.** ``in_channels`` etc. are required; nothing is
   created lazily on the first forward.
4. **One-slot cache, kept in both modes.** ``forward`` stores what backward needs with
   ``_remember`` (overwriting the previous call's), in eval mode too: as in PyTorch, a
   network in eval mode back-propagates (saliency maps, input gradients, fine-tuning with
   frozen batch-norm statistics), and backward then differentiates the eval-mode function.
   Inference that no backward follows says so: within ``no_grad()`` (``grad_enabled``
   False, PyTorch's ``torch.no_grad``) forward keeps nothing and computes nothing for
   backward (no argmax of max pooling), so only the arrays in flight are alive;
   ``Sequential.predict``, ``convnp.train.evaluate`` and
   ``convnp.runtime.parallel.predict_in_blocks`` run in it. The switch is an attribute of
   each layer, set and restored by the context manager on the objects it is called on:
   no global or thread state. ``backward`` with nothing kept raises ``RuntimeError``.
5. **Activations are separate layers**, so a layer's equation and its gradient check stay
   local: Bouvrie's x = f(u) spans a conv/subsample layer (u) and an activation layer (f).
6. **Errors name the problem**: ``_check_input`` raises ``ValueError`` naming the layer,
   the expected shape and the shape it got; NumPy broadcast errors never surface. It checks
   only what is cheap (type, shape, dtype), the same way everywhere: the scan for NaN/inf
   reads every value, so it runs once, explicitly, on a network's input
   (``Sequential.forward`` calls ``check_finite``); a non-finite value born inside the
   network reaches the loss, whose own check stops training, and ``convnp.train`` re-runs
   the batch to name the layer.
7. **Layers never update their parameters**: optimizers do (``convnp.optim``).
8. **Penalties are attached, not special-cased.** ``regularizers`` holds callables
   ``penalty(layer) -> float`` that add ∂penalty/∂θ into ``layer.grads`` and return the
   penalty's value; ``Sequential.apply_regularizers()`` runs them after backward, and the
   training loop adds the returned value to the reported loss (e.g. the sparsity penalties
   on learned feature-map combinations, SPEC §4).
9. **Samples are independent unless a layer says otherwise.** ``samples_independent``
   (True by default) means a training-mode forward of a batch equals the forwards of its
   parts, so training on MPI ranks, each with a slice of the batch, equals one process
   (``convnp.runtime.distributed``). Batch norm (statistics over the batch) and dropout
   (one random stream) set it False: on ranks they work per slice.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

DEFAULT_DTYPE = np.float32
# How error messages spell an input layout, by number of spatial dimensions.
LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


class NonFiniteInputError(ValueError):
    """A layer received NaN or inf; training catches it to stop cleanly (``convnp.train``)."""


# Up to this many values ``all_finite`` uses isfinite (a boolean temporary, 1 byte a value).
_SMALL_FINITE_SCAN = 1 << 16


def all_finite(x: np.ndarray) -> bool:
    """True unless x holds NaN or inf.

    Small arrays (parameters, gradients): ``isfinite(x).all()``, the fastest test there.
    Large ones: two reductions (min and max), NaN or inf anywhere makes one of them
    non-finite, and no boolean temporary of x's size is made.
    """
    if x.size <= _SMALL_FINITE_SCAN or x.dtype.kind == "c":  # complex: no order
        return bool(np.isfinite(x).all())
    return bool(np.isfinite(x.max()) and np.isfinite(x.min()))  # np: exact for longdouble


def surely_finite(arrays: Iterable[np.ndarray]) -> bool:
    """True proves every float array in ``arrays`` free of NaN and inf; False calls for
    ``first_non_finite``.

    One BLAS call per array, the sum of squares x·x, instead of ``isfinite(x).all()``'s
    two calls and boolean temporary (a training step checks every gradient and
    parameter; twice as fast on small arrays and large): the sum is NaN or inf whenever
    one of its terms is. Finite values whose squares overflow (|x| > 1e19 in float32)
    also give False, a false alarm the closer look clears. Half precision (whose squares
    overflow from |x| > 256) and complex arrays get ``all_finite``.
    """
    total = 0.0
    for array in arrays:
        if array.dtype.kind == "f" and array.dtype.itemsize >= 4:
            total += float(np.vdot(array, array))  # vdot flattens any shape
        elif array.dtype.kind in "fc" and not all_finite(array):
            return False
    return math.isfinite(total)


def first_non_finite(arrays: dict[str, np.ndarray]) -> str | None:
    """The name of the first float array holding NaN or inf, or None if all are finite."""
    for name, array in arrays.items():
        if array.dtype.kind in "fc" and not all_finite(array):
            return name
    return None


def map_sums(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Σ_n Σ_u a_j(n, u) for every map j of a (N, C, *spatial), or Σ_n Σ_u a_j·b_j with b
    of a's shape: a bias's gradient Σ_uv δ_j (SPEC §2), Subsample's ∂E/∂β_j = Σ_uv δ_j∘d_j,
    batch norm's per-channel sums.

    One einsum over the (N, C, L) view, L the positions: NumPy's ``sum`` over axes
    (0, 2, ...) is a strided reduction 2.5-3x slower (measured, 1 thread, float32:
    25x6x24x24 24 -> 10 µs, 64x32x28x28 389 -> 129 µs), and the product needs no
    temporary a·b."""
    n, channels, *spatial = a.shape
    rows = (n, channels, math.prod(spatial))  # explicit: N or L may be 0
    if b is None:
        return np.einsum("ncl->c", a.reshape(rows))
    return np.einsum("ncl,ncl->c", a.reshape(rows), b.reshape(rows))


def check_finite(x: np.ndarray, where: str) -> np.ndarray:
    """Return x; raise ``NonFiniteInputError`` naming ``where`` if it holds NaN or inf."""
    if not all_finite(x):
        raise NonFiniteInputError(f"{where}: input of shape {x.shape} contains NaN or inf")
    return x


@dataclass(frozen=True)
class MemoryEstimate:
    """What one training forward of a layer keeps for its backward (``Layer.memory_estimate``).

    keeps_input / keeps_output: the layer keeps a reference to its input / output array (the
    same array as the layer before's output / the layer after's input, so a network counts
    it once); other_bytes: arrays it creates and keeps besides those (masks, argmax indices,
    statistics); workspace_bytes: reused scratch it holds between calls.
    """

    keeps_input: bool = False
    keeps_output: bool = False
    other_bytes: int = 0
    workspace_bytes: int = 0


class Layer:
    """Base class: holds params/grads/buffers, the cache slot and input validation."""

    samples_independent = True  # decision 9
    accepts_unbatched = False  # True: also takes one sample, (C, *spatial) (optional_batch_axis)

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training: bool = True
        self.grad_enabled: bool = True  # False: forward keeps nothing for backward (no_grad)
        self.regularizers: list[Callable[[Layer], float]] = []
        self._cache: Any = None

    # -- the protocol -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward_params(self, dy: np.ndarray) -> None:
        """Fill ``grads`` only, for a layer whose ∂E/∂x nobody needs (the first layer of a
        network). Layers for which dx is costly (conv, linear) skip computing it."""
        self.backward(dy)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        """What a training forward of an input of ``input_shape`` (batch axis included) keeps
        for backward. This default says "the input": layers that keep something else
        (activations, pooling, normalisation) override it."""
        return MemoryEstimate(keeps_input=True)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this layer; see ``io``."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def train(self, mode: bool = True) -> Layer:
        """Training mode (the default), or with False eval mode: dropout and batch norm act
        as at test time. Both modes keep what backward needs (decision 4)."""
        self.training = mode
        return self

    def eval(self) -> Layer:
        """Evaluation mode: dropout is the identity, batch norm uses its running statistics."""
        return self.train(False)

    @contextlib.contextmanager
    def no_grad(self) -> Iterator[Layer]:
        """``with layer.no_grad(): ...`` runs forward keeping nothing for backward (and
        skipping work only backward needs); the previous setting is restored on exit."""
        previous = self.grad_enabled
        self.grad_enabled = False
        try:
            yield self
        finally:
            self.grad_enabled = previous

    # -- parameters ---------------------------------------------------------------------
    def _add_param(self, name: str, value: np.ndarray) -> None:
        """Register a learnable array and its gradient slot (same shape and dtype)."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    @property
    def dtype(self) -> np.dtype | None:
        """dtype of the parameters, or None for a parameter-free layer."""
        for value in self.params.values():
            return value.dtype
        return None

    def astype(self, dtype: Any) -> Layer:
        """Convert params, grads and buffers to ``dtype`` (rebinds them: build optimizers after)."""
        dtype = np.dtype(dtype)
        for store in (self.params, self.grads, self.buffers):
            for key in store:
                store[key] = store[key].astype(dtype)
        self._cache = None
        return self

    def num_parameters(self) -> int:
        return int(sum(value.size for value in self.params.values()))

    # -- the one-slot cache -------------------------------------------------------------
    def _remember(self, *values: Any) -> None:
        """Cache what backward needs; within ``no_grad()`` nothing is kept (and the previous
        call's cache is dropped)."""
        self._cache = values if self.grad_enabled else None

    def release(self) -> None:
        """Drop what the last forward kept for backward. ``Sequential.backward`` calls it once
        a layer's backward has run, so memory falls as back-propagation proceeds (PyTorch
        frees saved tensors the same way); a further backward needs a new forward."""
        self._cache = None

    def _recall(self) -> tuple:
        if self._cache is None:
            raise RuntimeError(
                f"{self!r}: backward() called before forward() "
                "(or the last forward ran within no_grad(), which keeps nothing)"
            )
        return self._cache

    # -- input validation ---------------------------------------------------------------
    def _check_input(
        self,
        x: Any,
        *,
        ndim: int | Sequence[int] | None = None,
        layout: str = "",
        channels: int | None = None,
        channel_axis: int = 1,
    ) -> np.ndarray:
        """Validate x's type, shape and dtype and return it; raise ValueError naming this
        layer and the shapes (values are not scanned: see decision 6).

        ``layout`` (e.g. "(N, 3, H, W)") is only used to word the message.
        """
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{self!r}: expected a NumPy array, got {type(x).__name__}")
        expected = layout or f"{ndim}-D input"
        if ndim is not None:
            allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            if x.ndim not in allowed:
                raise ValueError(f"{self!r}: expected input {expected}, got shape {x.shape}")
        if channels is not None and x.shape[channel_axis] != channels:
            raise ValueError(f"{self!r}: expected input {expected}, got shape {x.shape}")
        if x.dtype.kind != "f":
            raise ValueError(
                f"{self!r}: expected a floating-point input, got dtype {x.dtype} "
                "(convert images with x.astype(np.float32) / 255)"
            )
        own = self.dtype
        if own is not None and x.dtype != own:
            raise ValueError(
                f"{self!r}: input dtype {x.dtype} does not match parameter dtype {own}; "
                f"convert the input or call .astype({x.dtype}) on the model"
            )
        return x

    def _check_grad_output(self, dy: Any, expected_shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(dy, np.ndarray) or dy.shape != tuple(expected_shape):
            got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
            raise ValueError(
                f"{self!r}: backward expected dy of shape {tuple(expected_shape)}, got {got}"
            )
        return dy


def as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Expand an int to an n-tuple (PyTorch's _pair/_triple) and validate the length."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    result = tuple(int(v) for v in value)
    if len(result) != n:
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    return result


def uniform_init(
    rng: np.random.Generator | None, shape: tuple[int, ...], bound: float | np.ndarray, dtype: Any
) -> np.ndarray:
    """PyTorch's default init: U(-bound, bound) with bound = 1/sqrt(fan_in)."""
    rng = np.random.default_rng() if rng is None else rng
    return (rng.uniform(-1.0, 1.0, size=shape) * bound).astype(dtype)


LayerType = TypeVar("LayerType", bound=type[Layer])


def optional_batch_axis(cls: LayerType) -> LayerType:
    """Class decorator for a layer over (N, C, *spatial) with ``cls.nd`` spatial axes: like
    PyTorch's, it also takes one sample without the batch axis, (C, *spatial).

    Such an input gets a batch axis of one on entry and loses it on exit: forward returns
    y[0] (each output, when it returns several), backward and backward_params take dy of
    the unbatched shape and return dx[0]. Forward arguments named in
    ``cls.per_sample_arguments`` are per-sample arrays like x (MaxUnpool's ``indices``):
    they gain the batch axis with it. The layer's own code only sees batches.
    """
    forward, backward, backward_params = cls.forward, cls.backward, cls.backward_params
    per_sample = getattr(cls, "per_sample_arguments", ())
    signature = inspect.signature(forward)

    def batched_arguments(self: Layer, x: np.ndarray, args: tuple, kwargs: dict) -> Any:
        bound = signature.bind(self, x[None], *args, **kwargs)
        for name in per_sample:
            bound.arguments[name] = np.asarray(bound.arguments[name])[None]
        return bound.args, bound.kwargs

    @functools.wraps(forward)
    def forward_any(self: Layer, x: Any, *args: Any, **kwargs: Any) -> Any:
        self._unbatched = isinstance(x, np.ndarray) and x.ndim == self.nd + 1
        if not self._unbatched:
            return forward(self, x, *args, **kwargs)
        if per_sample:
            args, kwargs = batched_arguments(self, x, args, kwargs)
            y = forward(*args, **kwargs)
        else:
            y = forward(self, x[None], *args, **kwargs)
        return tuple(part[0] for part in y) if isinstance(y, tuple) else y[0]

    def _batched(self: Layer, dy: Any) -> Any:
        return dy[None] if getattr(self, "_unbatched", False) and hasattr(dy, "ndim") else dy

    @functools.wraps(backward)
    def backward_any(self: Layer, dy: Any) -> Any:
        dx = backward(self, _batched(self, dy))
        return dx[0] if getattr(self, "_unbatched", False) else dx

    @functools.wraps(backward_params)
    def backward_params_any(self: Layer, dy: Any) -> None:
        backward_params(self, _batched(self, dy))

    cls.forward, cls.backward, cls.backward_params = forward_any, backward_any, backward_params_any
    cls.accepts_unbatched = True
    return cls
