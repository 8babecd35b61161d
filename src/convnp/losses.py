"""Losses: the error E that back-propagation starts from (SPEC §1).

Losses are not layers, because they take a target as well as the network output y:

* ``forward(y, target) -> float`` validates both, computes E and caches what backward needs;
* ``backward() -> dy`` returns ∂E/∂y (y's shape and dtype), the sensitivity that
  ``Sequential.backward`` carries back through the layers. Before any forward it raises
  ``RuntimeError``.

``reduction`` fixes the scale in one place: ``"mean"`` averages the per-sample losses over the
batch and ``"sum"`` adds them. Layers sum per-sample gradients, so this 1/N, applied here, is
the only one anywhere (SPEC §1). ``"none"`` (squared error and cross-entropy) returns the
unreduced losses; ``backward(dloss)`` then takes the upstream gradient of that array, as
``loss.backward(gradient)`` does in PyTorch (for "mean"/"sum" it is an optional scalar, 1).

Targets are either an array of y's shape (one-hot codes, probabilities, real values) or, for
y of shape (N, C), integer class labels of shape (N,), turned into one-of-c codes by
``one_hot``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convnp.layers.base import NonFiniteInputError, all_finite


def softmax(scores: np.ndarray) -> np.ndarray:
    """exp(v_i − max v) / Σ_j exp(v_j − max v) along axis 1 (max subtracted: no overflow)."""
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _check_labels(owner: object, labels: Any, num_classes: int) -> np.ndarray:
    """Return labels as an integer array; ValueError unless each lies in [0, num_classes).

    ``owner`` names the caller in the messages (formatted only when one is raised)."""
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
    return _codes(labels, int(num_classes), off_value, on_value, dtype)


def _codes(
    labels: np.ndarray, num_classes: int, off_value: float, on_value: float, dtype: Any
) -> np.ndarray:
    """``one_hot`` of labels already checked by ``_check_labels``."""
    codes = np.full(labels.shape + (num_classes,), off_value, dtype=dtype)
    rows = codes.reshape(-1, num_classes)  # a view: one row per label
    rows[np.arange(labels.size), labels.reshape(-1)] = on_value
    return codes


class _Loss:
    """Shared protocol: reduction, the one-slot cache, validation of y and of the target."""

    _reductions: tuple[str, ...] = ("mean", "sum")

    def __init__(self, reduction: str) -> None:
        if reduction not in self._reductions:
            raise ValueError(
                f"{type(self).__name__}: reduction must be one of {self._reductions}, "
                f"got {reduction!r}"
            )
        self.reduction = reduction
        self._cache: Any = None

    def forward(self, y: np.ndarray, target: Any) -> float:
        raise NotImplementedError

    def backward(self, dloss: Any = None) -> np.ndarray:
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

    def _mean_scale(self, divisor: float) -> float:
        """s in E = s · Σ_n E_n: 1/divisor for "mean", else 1."""
        return 1.0 / divisor if self.reduction == "mean" else 1.0

    def _upstream(
        self, dloss: Any, loss_shape: tuple[int, ...], batched: bool, dtype: Any = np.float64
    ) -> Any:
        """The upstream gradient ∂(whatever follows)/∂E: an array of the unreduced losses'
        shape for "none" (required), a scalar (default 1) otherwise."""
        if self.reduction != "none":
            if dloss is None:
                return 1.0
            if np.ndim(dloss) != 0:
                raise ValueError(f"{self!r}: backward expected a scalar dloss, got {dloss!r}")
            return float(dloss)
        expected = loss_shape if batched else loss_shape[1:]
        if not isinstance(dloss, np.ndarray) or dloss.shape != tuple(expected):
            got = dloss.shape if isinstance(dloss, np.ndarray) else type(dloss).__name__
            raise ValueError(
                f"{self!r}: with reduction='none', backward expects dloss of the losses' "
                f"shape {tuple(expected)}, got {got}"
            )
        dloss = dloss.astype(dtype, copy=False)  # the gradient keeps the output's dtype
        return dloss if batched else dloss[None]

    def _check_output(
        self, y: Any, *, exact_ndim: int | None = None, batched: bool = True
    ) -> np.ndarray:
        """Validate y: (N, ...) with N >= 1, or with ``batched=False`` also a 1-D sample."""
        if not isinstance(y, np.ndarray):
            raise ValueError(f"{self!r}: expected a NumPy array, got {type(y).__name__}")
        if exact_ndim is not None and y.ndim != exact_ndim:
            raise ValueError(f"{self!r}: expected logits of shape (N, C), got shape {y.shape}")
        if y.ndim < (2 if batched else 1) or y.shape[0] < 1:
            layout = "(N, ...) or (C,)" if not batched else "(N, ...)"
            raise ValueError(f"{self!r}: expected an output of shape {layout}, got {y.shape}")
        if y.dtype.kind != "f":
            raise ValueError(f"{self!r}: expected a floating-point output, got dtype {y.dtype}")
        if not all_finite(y):
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
            labels = _check_labels(self, target, y.shape[1])
            return _codes(labels, y.shape[1], off_value, on_value, y.dtype)
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
        reduction="none": the array ½ (t − y)², y's shape (``backward(dloss)`` takes its
                          upstream gradient)
    Backward:
        ∂E/∂y = s · (y − t),   s = 1/N for "mean", 1 for "sum";  dloss ∘ (y − t) for "none"
    The output sensitivity δ^L = f'(u^L) ∘ (y − t) is completed by the activation layer.
    PyTorch equivalent: 0.5 * F.mse_loss(y, t, reduction="sum"), divided by N for "mean".

    Args:
        reduction: "mean", "sum" or "none", as above.
        off_value: target of the wrong classes when integer labels are given: 0 for a
            sigmoid output, −1 for tanh (the true class is always 1).

    Shape:
        y (N, *) with a real target of the same shape, or y (N, C) with labels (N,); a 1-D
        y (one sample without a batch axis) with a target of its shape.
    """

    _reductions = ("mean", "sum", "none")

    def __init__(self, reduction: str = "mean", off_value: float = 0.0) -> None:
        super().__init__(reduction)
        self.off_value = float(off_value)

    def config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "off_value": self.off_value}

    @staticmethod
    def class_probabilities(y: np.ndarray) -> np.ndarray:
        """Outputs (N, C) as a distribution over classes: clipped at 0 and scaled to sum to
        1 (uniform where all are ≤ 0). A ranking with the loss's argmax, not calibrated."""
        positive = np.clip(y, 0.0, None)
        total = positive.sum(axis=1, keepdims=True)
        uniform = np.full_like(positive, 1 / y.shape[1])
        return np.divide(positive, total, out=uniform, where=total > 0)

    def forward(self, y: np.ndarray, target: Any) -> float | np.ndarray:
        y = self._check_output(y, batched=False)
        t = self._dense_target(y, target, self.off_value, 1.0)
        error = y - t
        scale = self._mean_scale(y.shape[0] if y.ndim > 1 else 1)
        self._cache = (error, scale)
        if self.reduction == "none":
            return 0.5 * np.square(error)  # ½ (t_k − y_k)², unreduced
        return scale * 0.5 * float(np.sum(np.square(error)))  # s · Σ_n ½ Σ_k (t_k − y_k)²

    def backward(self, dloss: Any = None) -> np.ndarray:
        error, scale = self._recall()
        if self.reduction == "none":
            return self._upstream(dloss, error.shape, True, error.dtype) * error  # dloss ∘ (y − t)
        return (scale * self._upstream(dloss, error.shape, True)) * error  # s · (y − t)


class CrossEntropyLoss(_Loss):
    """Softmax fused with cross-entropy, taking logits (SPEC §1, softmax output), as PyTorch's.

    For each sample (and each position d of a per-pixel classifier), with scores v over C
    classes along axis 1, class weights w (all 1 by default) and a target distribution q:
        a_c = exp(v_c − max v) / Σ_k exp(v_k − max v)     softmax; max subtracted, no overflow
        L   = −Σ_c w_c q_c ln a_c,    ln a_c = (v_c − max v) − ln Σ_k exp(v_k − max v)
    Backward:
        ∂L/∂v_c = a_c · Σ_k w_k q_k − w_c q_c      (= a − q for w = 1 and Σ q = 1)
    The common case, logits (N, C) against class indices t with no weights, no smoothing and
    nothing ignored, is computed as such: L_n = −ln a_{t_n} and ∂L/∂v = a − one-hot(t).
    The target is either (told apart by dtype, as in PyTorch)
      * integer class indices t: q = one-hot(t), smoothed to (1 − ε)·one-hot(t) + ε/C;
        positions with t = ignore_index have q = 0 (they add nothing and are not counted), or
      * floating-point probabilities q of the logits' shape, smoothed to (1 − ε)·q + ε/C.
    Reduction over the positions n:
        "none": the array of L_n (the logits' shape without axis 1)
        "sum":  E = Σ_n L_n
        "mean": E = Σ_n L_n / D,  D = Σ_{n not ignored} w_{t_n} for class indices (the summed
                weights, so that weights do not change the loss's scale), D = the number of
                positions for probability targets; exactly PyTorch's F.cross_entropy.
    ``backward(dloss)`` multiplies by the upstream gradient of E (an array of L's shape for
    "none"; 1 by default otherwise). Logits of shape (C,) (no batch axis) take a 0-d target.

    Args:
        weight: class weights w, shape (C,), or None for all ones.
        ignore_index: class index whose positions are left out (class-index targets only).
        reduction: "mean" (default), "sum" or "none", as above.
        label_smoothing: ε in [0, 1].

    Attributes:
        probabilities: the softmax a of the last forward (the logits' shape), read-only.

    Shape:
        logits (N, C, d1, ...) with class indices (N, d1, ...) or probabilities (N, C, d1, ...);
        logits (C,) with a 0-d class index or probabilities (C,).
    """

    _reductions = ("mean", "sum", "none")

    def __init__(
        self,
        weight: np.ndarray | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"CrossEntropyLoss: label_smoothing must lie in [0, 1], got {label_smoothing}"
            )
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        self.weight = None
        if weight is not None:
            self.weight = np.array(weight, dtype=np.float64)
            if self.weight.ndim != 1 or not np.isfinite(self.weight).all():
                raise ValueError(
                    "CrossEntropyLoss: weight must be a finite 1-D array of class weights, "
                    f"got shape {self.weight.shape}"
                )

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"reduction": self.reduction}
        if self.weight is not None:
            config["weight"] = self.weight.tolist()
        if self.ignore_index != -100:
            config["ignore_index"] = self.ignore_index
        config["label_smoothing"] = self.label_smoothing
        return config

    @staticmethod
    def class_probabilities(y: np.ndarray) -> np.ndarray:
        """Logits (N, C) as class probabilities: softmax(y), the a of the equations above."""
        return softmax(y)

    @property
    def probabilities(self) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError(f"{self!r}: no probabilities before the first forward()")
        return self._cache[0]

    def _class_weights(self, logits: np.ndarray) -> np.ndarray:
        """w broadcast along the class axis 1 of the logits."""
        num_classes = logits.shape[1]
        if self.weight is None:
            return np.ones((1, num_classes) + (1,) * (logits.ndim - 2), dtype=logits.dtype)
        if self.weight.shape != (num_classes,):
            raise ValueError(
                f"{self!r}: weight has {self.weight.shape[0]} classes, logits of shape "
                f"{logits.shape} have {num_classes}"
            )
        return self.weight.astype(logits.dtype).reshape((1, num_classes) + (1,) * (logits.ndim - 2))

    def _target_distribution(
        self, logits: np.ndarray, target: Any, batched: bool, class_weights: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """q (the logits' shape, label smoothing applied) and the "mean" divisor D."""
        target = np.asarray(target)
        num_classes = logits.shape[1]
        smoothing = self.label_smoothing
        index_shape = logits.shape[:1] + logits.shape[2:]
        if target.dtype.kind not in "biuf":
            raise ValueError(f"{self!r}: target must be numeric, got dtype {target.dtype}")
        if target.shape == logits.shape and target.dtype.kind in "bf":  # as PyTorch: by dtype
            q = target.astype(logits.dtype)
            if not np.isfinite(q).all():
                raise ValueError(f"{self!r}: target of shape {target.shape} contains NaN or inf")
            if smoothing:
                q = (1.0 - smoothing) * q + smoothing / num_classes  # (1 − ε)·q + ε/C
            return q, float(np.prod(index_shape))
        if target.shape != index_shape:
            if logits.ndim == 2 and target.ndim == 1:
                raise ValueError(
                    f"{self!r}: batch size mismatch: logits {logits.shape}, labels {target.shape}"
                )
            shown = 0 if batched else 1  # shapes as the caller gave them (no batch axis)
            raise ValueError(
                f"{self!r}: expected class indices of shape {index_shape[shown:]} or "
                f"probabilities of the logits' shape {logits.shape[shown:]}, "
                f"got shape {target.shape[shown:]}"
            )
        kept = target != self.ignore_index
        labels = _check_labels(self, np.where(kept, target, 0), num_classes)
        q = _codes(labels, num_classes, 0.0, 1.0, logits.dtype)  # one-hot, (N, d..., C)
        if smoothing:
            q = (1.0 - smoothing) * q + smoothing / num_classes
        q = np.moveaxis(q * kept[..., None], -1, 1)  # class axis back to 1; ignored: q = 0
        return q, float(np.sum(class_weights.reshape(-1)[labels] * kept))  # Σ_{n kept} w_{t_n}

    def _plain_labels(self, logits: np.ndarray, target: Any) -> np.ndarray | None:
        """The target as labels t (N,) when the loss is plain cross-entropy against them:
        logits (N, C), integer labels all in [0, C), no class weights, no smoothing and
        ignore_index outside [0, C) (nothing ignored). None otherwise (the general path)."""
        if self.weight is not None or self.label_smoothing or logits.ndim != 2:
            return None
        labels = np.asarray(target)
        num_classes = logits.shape[1]
        if (
            labels.dtype.kind not in "iu"
            or labels.shape != logits.shape[:1]
            or 0 <= self.ignore_index < num_classes
            or labels.min() < 0
            or labels.max() >= num_classes
        ):
            return None  # the general path handles it, or names what is wrong
        return labels

    def forward(self, y: np.ndarray, target: Any) -> float | np.ndarray:
        logits = self._check_output(y, batched=False)
        batched = logits.ndim > 1
        if not batched:  # (C,) logits: one sample, a 0-d target
            logits, target = logits[None], np.asarray(target)[None]
        shifted = logits - logits.max(axis=1, keepdims=True)  # v − max v ≤ 0: exp cannot overflow
        a = np.exp(shifted)
        normaliser = a.sum(axis=1, keepdims=True)  # ≥ 1, so its log is finite
        a /= normaliser  # a_c = exp(v_c − max v) / Σ_k exp(v_k − max v)
        a.flags.writeable = False  # exposed as .probabilities; backward relies on it
        log_normaliser = np.log(normaliser)
        labels = self._plain_labels(logits, target)
        if labels is not None:  # w = 1, q = one-hot(t): L_n = −ln a_{t_n}, D = N
            weighted, divisor = None, float(labels.shape[0])
            losses = log_normaliser[:, 0] - shifted[np.arange(labels.shape[0]), labels]
        else:
            class_weights = self._class_weights(logits)
            q, divisor = self._target_distribution(logits, target, batched, class_weights)
            log_a = shifted - log_normaliser  # ln a_c by log-sum-exp: never ln 0
            weighted = class_weights * q  # w_c q_c
            losses = -np.sum(weighted * log_a, axis=1)  # L_n = −Σ_c w_c q_c ln a_c
        all_ignored = self.reduction == "mean" and divisor == 0  # E = 0/0
        scale = 0.0 if all_ignored else self._mean_scale(divisor)  # nothing contributes: ∂ = 0
        self._cache = (a if batched else a[0], weighted, labels, scale, batched, losses.shape)
        if self.reduction == "none":
            return losses if batched else losses[0]
        if all_ignored:
            return float("nan")  # as PyTorch
        return scale * float(np.sum(losses))  # s · Σ_n L_n

    def backward(self, dloss: Any = None) -> np.ndarray:
        _, weighted, labels, scale, batched, loss_shape = self._recall()
        a = self._cache[0] if batched else self._cache[0][None]
        upstream = self._upstream(dloss, loss_shape, batched, a.dtype)
        if labels is not None:  # ∂L/∂v = a − one-hot(t)
            dlogits = a.copy()
            dlogits[np.arange(labels.shape[0]), labels] -= 1
        else:
            dlogits = (
                a * weighted.sum(axis=1, keepdims=True) - weighted
            )  # a_c Σ_k w_k q_k − w_c q_c
        if self.reduction == "none":
            dlogits *= np.expand_dims(upstream, 1)
        else:
            dlogits *= scale * upstream
        return dlogits if batched else dlogits[0]


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

    @staticmethod
    def class_probabilities(y: np.ndarray) -> np.ndarray:
        """Energies (N, C) as class probabilities: softmax(−y), the posterior e^(−y_i)/Z
        renormalised without the rubbish class."""
        return softmax(-y)

    def forward(self, y: np.ndarray, target: Any) -> float:
        energies = self._check_output(y, exact_ndim=2)
        target = self._dense_target(energies, target, 0.0, 1.0)
        j = energies.dtype.type(self.rubbish_energy)
        m = np.minimum(energies.min(axis=1, keepdims=True), j)  # shift: every exponent ≤ 0
        exp_energies = np.exp(m - energies)  # e^(−y_i) · e^m
        normaliser = np.exp(m - j) + exp_energies.sum(axis=1, keepdims=True)  # Z · e^m ≥ 1
        log_z = np.log(normaliser) - m  # ln Z
        mass = target.sum(axis=1, keepdims=True)  # Σ_i t_i (1 for a label)
        scale = self._mean_scale(energies.shape[0])
        self._cache = (exp_energies / normaliser, target, mass, scale)
        return scale * float(np.sum(target * energies) + np.sum(mass * log_z))

    def backward(self, dloss: Any = None) -> np.ndarray:
        posterior, target, mass, scale = self._recall()
        scale *= self._upstream(dloss, mass.shape, True)
        denergies = target - mass * posterior  # ∂E/∂y_i = t_i − (Σ t) e^(−y_i)/Z
        denergies *= scale
        return denergies


#: Loss kinds by the names that recipes, model files' info and ``Sequential.compile`` use.
LOSSES: dict[str, type[_Loss]] = {
    "squared_error": SquaredErrorLoss,
    "cross_entropy": CrossEntropyLoss,
    "rbf": RBFEnergyLoss,
}
