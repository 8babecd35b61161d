"""Losses: the error E that back-propagation starts from (SPEC §1).

Losses are not layers, because they take a target as well as the network output y:

* ``forward(y, target) -> float`` validates both, computes E and caches what backward needs;
* ``backward() -> dy`` returns ∂E/∂y (y's shape and dtype), the sensitivity that
  ``Sequential.backward`` carries back through the layers. Before any forward it raises
  ``RuntimeError``.

``reduction`` fixes the scale in one place: ``"mean"`` averages the per-sample losses over the
batch and ``"sum"`` adds them. Layers sum per-sample gradients, so this 1/N, applied here, is
the only one anywhere (SPEC §1).

Targets are either an array of y's shape (one-hot codes, probabilities, real values) or, for
y of shape (N, C), integer class labels of shape (N,), turned into one-of-c codes by
``one_hot``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convnp.layers.base import NonFiniteInputError

_REDUCTIONS = ("mean", "sum")


def _check_labels(owner: str, labels: Any, num_classes: int) -> np.ndarray:
    """Return labels as an integer array; ValueError unless each lies in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"{owner}: class labels must have an integer dtype, got {labels.dtype} "
            f"(shape {labels.shape}); convert with labels.astype(np.int64), or pass a target "
            "array of the output's shape for real-valued targets"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{owner}: class labels must lie in [0, {num_classes}), "
            f"got values from {labels.min()} to {labels.max()}"
        )
    return labels


def one_hot(
    labels: Any,
    num_classes: int,
    off_value: float = 0.0,
    on_value: float = 1.0,
    dtype: Any = np.float32,
) -> np.ndarray:
    """One-of-c codes: ``on_value`` at each label's class, ``off_value`` elsewhere (SPEC §1).

    SPEC §1's targets are 0/1 for a sigmoid output and −1/+1 for tanh (``off_value=-1``).

    Args:
        labels: integer class indices in [0, num_classes), any shape.
        num_classes: C.

    Shape:
        labels (*) -> codes (*, C)
    """
    if int(num_classes) < 1:
        raise ValueError(f"one_hot: num_classes must be >= 1, got {num_classes}")
    labels = _check_labels("one_hot", labels, int(num_classes))
    codes = np.full(labels.shape + (int(num_classes),), off_value, dtype=dtype)
    np.put_along_axis(codes, labels[..., None], on_value, axis=-1)
    return codes


class _Loss:
    """Shared protocol: reduction, the one-slot cache, validation of y and of the target."""

    def __init__(self, reduction: str) -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got {reduction!r}"
            )
        self.reduction = reduction
        self._cache: Any = None

    def forward(self, y: np.ndarray, target: Any) -> float:
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, y: np.ndarray, target: Any) -> float:
        return self.forward(y, target)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this loss."""
        return {"reduction": self.reduction}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def _recall(self) -> tuple:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        return self._cache

    def _batch_scale(self, batch_size: int) -> float:
        """s in E = s · Σ_n E_n: 1/N for "mean", 1 for "sum"."""
        return 1.0 / batch_size if self.reduction == "mean" else 1.0

    def _check_output(self, y: Any, *, exact_ndim: int | None = None) -> np.ndarray:
        if not isinstance(y, np.ndarray):
            raise ValueError(f"{self!r}: expected a NumPy array, got {type(y).__name__}")
        if exact_ndim is not None and y.ndim != exact_ndim:
            raise ValueError(f"{self!r}: expected logits of shape (N, C), got shape {y.shape}")
        if y.ndim < 2 or y.shape[0] < 1:
            raise ValueError(f"{self!r}: expected an output of shape (N, ...), got {y.shape}")
        if y.dtype.kind != "f":
            raise ValueError(f"{self!r}: expected a floating-point output, got dtype {y.dtype}")
        if not (np.isfinite(y.max()) and np.isfinite(y.min())):
            # the network diverged: the training loop catches this subclass to stop cleanly
            raise NonFiniteInputError(f"{self!r}: output of shape {y.shape} contains NaN or inf")
        return y

    def _dense_target(
        self, y: np.ndarray, target: Any, off_value: float, on_value: float
    ) -> np.ndarray:
        """The target as an array of y's shape and dtype (labels become one-of-c codes)."""
        target = np.asarray(target)
        if target.shape == y.shape:
            if target.dtype.kind not in "biuf":
                raise ValueError(f"{self!r}: target must be numeric, got dtype {target.dtype}")
            dense = target.astype(y.dtype)
            if not np.isfinite(dense).all():
                raise ValueError(f"{self!r}: target of shape {target.shape} contains NaN or inf")
            return dense
        n = y.shape[0]
        if y.ndim == 2 and target.ndim == 1:
            if target.shape[0] != n:
                raise ValueError(
                    f"{self!r}: batch size mismatch: output {y.shape}, labels {target.shape}"
                )
            labels = _check_labels(repr(self), target, y.shape[1])
            return one_hot(labels, y.shape[1], off_value, on_value, dtype=y.dtype)
        labels_hint = f" or integer labels of shape ({n},)" if y.ndim == 2 else ""
        raise ValueError(
            f"{self!r}: expected a target of the output's shape {y.shape}{labels_hint}, "
            f"got shape {target.shape}"
        )


class SquaredErrorLoss(_Loss):
    """Squared error against one-of-c or real targets (SPEC §1; Bouvrie, "Feedforward Pass").

    Per sample n, over its outputs k:
        E_n = ½ Σ_k (t_k^n − y_k^n)²
    over the batch:
        reduction="mean" (default, as the MATLAB reference code):  E = (1/N) Σ_n E_n
        reduction="sum"  (Bouvrie's E^N):                          E = Σ_n E_n
    Backward:
        ∂E/∂y = s · (y − t),   s = 1/N for "mean", 1 for "sum"
    The output sensitivity δ^L = f'(u^L) ∘ (y − t) is completed by the activation layer.
    PyTorch equivalent: 0.5 * F.mse_loss(y, t, reduction="sum"), divided by N for "mean".

    Args:
        reduction: "mean" or "sum", as above.
        off_value: target of the wrong classes when integer labels are given: 0 for a
            sigmoid output, −1 for tanh (the true class is always 1).

    Shape:
        y (N, *) with a real target of the same shape, or y (N, C) with labels (N,).
    """

    def __init__(self, reduction: str = "mean", off_value: float = 0.0) -> None:
        super().__init__(reduction)
        self.off_value = float(off_value)

    def config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "off_value": self.off_value}

    def forward(self, y: np.ndarray, target: Any) -> float:
        y = self._check_output(y)
        t = self._dense_target(y, target, self.off_value, 1.0)
        error = y - t
        scale = self._batch_scale(y.shape[0])
        self._cache = (error, scale)
        return scale * 0.5 * float(np.sum(np.square(error)))  # s · Σ_n ½ Σ_k (t_k − y_k)²

    def backward(self) -> np.ndarray:
        error, scale = self._recall()
        return scale * error  # ∂E/∂y = s · (y − t)


class CrossEntropyLoss(_Loss):
    """Softmax fused with cross-entropy, taking logits (SPEC §1, softmax output).

    Per sample, for scores v and a target distribution y over C classes:
        a_i = exp(v_i − max v) / Σ_j exp(v_j − max v)     softmax; max subtracted, no overflow
        L   = −Σ_i y_i ln a_i,    ln a_i = (v_i − max v) − ln Σ_j exp(v_j − max v)
    Backward:
        ∂L/∂v = a · Σ_i y_i − y = a − y       (a target distribution sums to one)
    then E = s · Σ_n L_n and ∂E/∂v = s · ∂L/∂v, with s = 1/N for "mean" and 1 for "sum".
    An integer label c stands for y = one-hot(c). Label smoothing ε replaces y by
    (1 − ε)·y + ε/C, exactly as PyTorch's F.cross_entropy(label_smoothing=ε).

    Args:
        reduction: "mean" (default) or "sum", as above.
        label_smoothing: ε in [0, 1].

    Attributes:
        probabilities: the softmax a of the last forward, (N, C), read-only.

    Shape:
        logits (N, C) with labels (N,) or target probabilities (N, C).
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"CrossEntropyLoss: label_smoothing must lie in [0, 1], got {label_smoothing}"
            )
        self.label_smoothing = float(label_smoothing)

    def config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "label_smoothing": self.label_smoothing}

    @property
    def probabilities(self) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: no probabilities before the first forward()")
        return self._cache[0]

    def forward(self, y: np.ndarray, target: Any) -> float:
        logits = self._check_output(y, exact_ndim=2)
        num_classes = logits.shape[1]
        target = self._dense_target(logits, target, 0.0, 1.0)
        if self.label_smoothing:
            smoothing = self.label_smoothing
            target = (1.0 - smoothing) * target + smoothing / num_classes  # (1 − ε)·y + ε/C
        shifted = logits - logits.max(axis=1, keepdims=True)  # v − max v ≤ 0: exp cannot overflow
        exp_shifted = np.exp(shifted)
        normaliser = exp_shifted.sum(axis=1, keepdims=True)  # ≥ 1, so its log is finite
        a = exp_shifted / normaliser
        a.flags.writeable = False  # exposed as .probabilities; backward relies on it
        log_a = shifted - np.log(normaliser)  # ln a_i by log-sum-exp: never ln 0
        scale = self._batch_scale(logits.shape[0])
        self._cache = (a, target, scale)
        return scale * float(-np.sum(target * log_a))  # s · Σ_n (−Σ_i y_i ln a_i)

    def backward(self) -> np.ndarray:
        a, target, scale = self._recall()
        dlogits = a * target.sum(axis=1, keepdims=True) - target  # ∂L/∂v = a·Σ_i y_i − y
        dlogits *= scale
        return dlogits


class RBFEnergyLoss(_Loss):
    """LeCun et al.'s loss for Euclidean RBF outputs (1998, eq. 9; SPEC §6's output layer).

    The network outputs energies y_i ≥ 0 (``EuclideanRBF``: small means "looks like class
    i"). Per sample, with correct class D and a positive constant j:
        E = y_D + ln(e^(−j) + Σ_i e^(−y_i))           (the sum runs over every class)
    The first term pulls the correct energy down. On its own it has a trivial minimum
    where every centre and every output collapse onto one point (all y_i = 0); the second,
    competitive term pushes the other energies up, and j caps that push: classes whose
    energy is already well above j are left alone. E is exactly cross-entropy over the
    scores (−y_0, ..., −y_{C−1}, −j): class i has posterior e^(−y_i)/Z and a fictitious
    "rubbish" class, never the target, has e^(−j)/Z, with Z = e^(−j) + Σ_i e^(−y_i).
    Backward:
        ∂E/∂y_i = [i = D] − e^(−y_i) / Z
    then E = s · Σ_n E_n and ∂E/∂y = s · (...), s = 1/N for "mean" and 1 for "sum". A target
    distribution t (N, C) generalises [i = D] to t_i (E = Σ_i t_i y_i + (Σ_i t_i) ln Z).
    The log-sum-exp subtracts m = min(j, min_i y_i) first, so no exponent is positive.

    Prediction: the class with the smallest energy (``predictions``), not the largest.

    Args:
        reduction: "mean" (default) or "sum".
        rubbish_energy: j > 0, the constant energy of the rubbish class.

    Shape:
        energies (N, C) with labels (N,) or target distributions (N, C).
    """

    def __init__(self, reduction: str = "mean", rubbish_energy: float = 1.0) -> None:
        super().__init__(reduction)
        if not (np.isfinite(rubbish_energy) and rubbish_energy > 0):
            raise ValueError(f"RBFEnergyLoss: rubbish_energy must be > 0, got {rubbish_energy}")
        self.rubbish_energy = float(rubbish_energy)

    def config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "rubbish_energy": self.rubbish_energy}

    @staticmethod
    def predictions(y: np.ndarray) -> np.ndarray:
        """The decided class per sample: argmin_i y_i (the best-matching RBF centre)."""
        return y.argmin(axis=1)

    def forward(self, y: np.ndarray, target: Any) -> float:
        energies = self._check_output(y, exact_ndim=2)
        target = self._dense_target(energies, target, 0.0, 1.0)
        j = energies.dtype.type(self.rubbish_energy)
        m = np.minimum(energies.min(axis=1, keepdims=True), j)  # shift: every exponent ≤ 0
        exp_energies = np.exp(m - energies)  # e^(−y_i) · e^m
        normaliser = np.exp(m - j) + exp_energies.sum(axis=1, keepdims=True)  # Z · e^m ≥ 1
        log_z = np.log(normaliser) - m  # ln Z
        mass = target.sum(axis=1, keepdims=True)  # Σ_i t_i (1 for a label)
        scale = self._batch_scale(energies.shape[0])
        self._cache = (exp_energies / normaliser, target, mass, scale)
        return scale * float(np.sum(target * energies) + np.sum(mass * log_z))

    def backward(self) -> np.ndarray:
        posterior, target, mass, scale = self._recall()
        denergies = target - mass * posterior  # ∂E/∂y_i = t_i − (Σ t) e^(−y_i)/Z
        denergies *= scale
        return denergies


#: Loss kinds by the names that recipes, model files' info and ``Sequential.compile`` use.
LOSSES: dict[str, type[_Loss]] = {
    "squared_error": SquaredErrorLoss,
    "cross_entropy": CrossEntropyLoss,
    "rbf": RBFEnergyLoss,
}
