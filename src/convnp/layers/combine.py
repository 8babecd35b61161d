"""Learned combinations of feature maps (SPEC §4): α = softmax_i(c_ij), and sparsity penalties.

Bouvrie ("Learning Combinations of Feature Maps") replaces the hand-chosen connection table
M_j of a convolution layer (SPEC §2) by weights α_ij ≥ 0 with Σ_i α_ij = 1 that are learned:

    u_j = Σ_i α_ij (x_i * k_ij) + b_j,      α_ij = exp(c_ij) / Σ_k exp(c_kj)

A sparse α_.j (one or a few α_ij near 1, the rest near 0) *is* a learned connection table.
Sparsity must come from a penalty; this module has three (``PENALTIES``), applied through
the layer regularizer hook (``convnp.layers.base``, decision 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convnp.layers import _windows
from convnp.layers._conv_ops import (
    ConvGeometry,
    Workspace,
    check_conv_arguments,
    conv_forward,
    conv_transpose,
    conv_weight_grad,
)
from convnp.layers.base import (
    DEFAULT_DTYPE,
    Layer,
    MemoryEstimate,
    as_tuple,
    map_sums,
    uniform_init,
)

KERNELS = ("per_pair", "per_input")
PENALTIES = ("l1", "entropy", "power")


def softmax_over_inputs(logits: np.ndarray) -> np.ndarray:
    """α_ij = softmax over i of c_ij, for logits stored (out_channels, in_channels) = c[j, i].

    The largest logit of each row is subtracted first, so exp cannot overflow (SPEC §1).
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp_shifted = np.exp(shifted)
    return exp_shifted / exp_shifted.sum(axis=1, keepdims=True)


def softmax_backward(alpha: np.ndarray, dalpha: np.ndarray) -> np.ndarray:
    """∂E/∂c_ij = α_ij (∂E/∂α_ij − Σ_k α_kj ∂E/∂α_kj)   (SPEC §4; i, k index input maps)."""
    return alpha * (dalpha - (alpha * dalpha).sum(axis=1, keepdims=True))


# -- sparsity penalties on α, each with its exact gradient with respect to the logits c ---
# Each takes c (out_channels, in_channels) and the exponent p (used by power_penalty only)
# and returns (R, ∂R/∂c).
def l1_penalty(logits: np.ndarray, power: float) -> tuple[float, np.ndarray]:
    """The Notes' penalty as printed: R = Σ_ij |α_ij|, ∂R/∂c_i = |α_i| − α_i Σ_k |α_k|.

    Under the softmax α_ij > 0 and Σ_i α_ij = 1, so R = out_channels whatever c is and the
    printed gradient |α_i| − α_i·1 is identically zero: this penalty cannot make α sparse
    (SPEC §4). It is kept, computed literally, to show exactly that.
    """
    alpha = softmax_over_inputs(logits)
    magnitude = np.abs(alpha)
    dlogits = magnitude - alpha * magnitude.sum(axis=1, keepdims=True)  # printed gradient
    return float(magnitude.sum()), dlogits


def entropy_penalty(logits: np.ndarray, power: float) -> tuple[float, np.ndarray]:
    """Entropy of each α_.j: R = Σ_j H_j, H_j = −Σ_i α_ij ln α_ij; ∂R/∂c_ij = −α_ij (ln α_ij + H_j).

    H_j ≥ 0 is zero exactly when α_.j is one-hot, so minimising it selects input maps.
    Derivation: ∂H/∂α_i = −(ln α_i + 1), then SPEC §4's chain rule through the softmax (the
    "+1" cancels because Σ_i α_i = 1). ln α comes from the log-softmax, never ln 0.
    Uniform α is a stationary point (the entropy's maximum): the data gradient moves α off
    it, then the penalty pushes α towards a vertex.
    """
    log_alpha = logits - logits.max(axis=1, keepdims=True)
    log_alpha -= np.log(np.exp(log_alpha).sum(axis=1, keepdims=True))  # ln α: log-softmax
    alpha = np.exp(log_alpha)
    entropy = -(alpha * log_alpha).sum(axis=1, keepdims=True)  # H_j
    return float(entropy.sum()), -alpha * (log_alpha + entropy)


def power_penalty(logits: np.ndarray, power: float) -> tuple[float, np.ndarray]:
    """R = Σ_ij α_ij^p with 0 < p < 1; ∂R/∂c_ij = p (α_ij^p − α_ij Σ_k α_kj^p).

    On the simplex Σ_i α_i^p ≥ 1 (concavity of t^p), with equality exactly at one-hot α, so
    minimising it makes α sparse. ∂R/∂α_i = p α_i^(p−1) is unbounded as α_i → 0; the chain
    rule multiplies it by α_i, and the closed form above never forms it.
    """
    alpha = softmax_over_inputs(logits)
    alpha_p = alpha**power
    dlogits = power * (alpha_p - alpha * alpha_p.sum(axis=1, keepdims=True))
    return float(alpha_p.sum()), dlogits


_PENALTY_FUNCTIONS = {"l1": l1_penalty, "entropy": entropy_penalty, "power": power_penalty}


class AlphaPenalty:
    """λ·R(α) on a FeatureMapCombination, as a layer regularizer (base.py, decision 8).

    ``penalty(layer)`` adds λ·∂R/∂c to ``layer.grads["alpha_logits"]`` (after backward has
    written ∂E/∂c) and returns λ·R, which the training loop adds to the reported loss.
    R is ``l1_penalty`` (the Notes' printed one, a no-op), ``entropy_penalty`` or
    ``power_penalty`` (with exponent ``power``).

    The layer's constructor attaches one from its ``penalty``/``penalty_weight`` arguments,
    which is the form that ``convnp.io`` saves and reloads with the model.
    """

    def __init__(self, kind: str, weight: float, power: float = 0.5) -> None:
        if kind not in _PENALTY_FUNCTIONS:
            raise ValueError(f"AlphaPenalty: kind must be one of {PENALTIES}, got {kind!r}")
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"AlphaPenalty: weight must be >= 0, got {weight}")
        if not 0.0 < power < 1.0:
            raise ValueError(f"AlphaPenalty: power must lie in (0, 1), got {power}")
        self.kind = kind
        self.weight = float(weight)
        self.power = float(power)

    def __repr__(self) -> str:
        power = f", power={self.power}" if self.kind == "power" else ""
        return f"AlphaPenalty({self.kind!r}, weight={self.weight}{power})"

    def evaluate(self, logits: np.ndarray) -> tuple[float, np.ndarray]:
        """(λ·R, λ·∂R/∂c) for logits c of shape (out_channels, in_channels)."""
        value, dlogits = _PENALTY_FUNCTIONS[self.kind](logits, self.power)
        return self.weight * value, self.weight * dlogits

    def __call__(self, layer: Layer) -> float:
        value, dlogits = self.evaluate(layer.params["alpha_logits"])
        layer.grads["alpha_logits"] += dlogits
        return value


class FeatureMapCombination(Layer):
    """Convolution whose input maps are combined with learned softmax weights α (SPEC §4).

    Forward (SPEC §4; Bouvrie, "Learning Combinations of Feature Maps"):
        u_j = Σ_i α_ij (x_i * k_ij) + b_j,     α_ij = exp(c_ij) / Σ_k exp(c_kj)
    so α_.j lies on the simplex (α_ij ≥ 0, Σ_i α_ij = 1). The activation f is a separate layer.
    Backward (δ_j = ∂E/∂u_j is the dy this layer receives):
        ∂E/∂α_ij = Σ_uv (δ_j ∘ (x_i * k_ij))(u,v)
        ∂E/∂c_ij = α_ij (∂E/∂α_ij − Σ_k α_kj ∂E/∂α_kj)          (softmax chain rule, SPEC §4)
        ∂E/∂k_ij = α_ij Σ_uv δ_j(u,v) p_i(u,v),   ∂E/∂b_j = Σ_uv δ_j(u,v)
        ∂E/∂x_i  = Σ_j α_ij conv(δ_j, rot180(k_ij), 'full')

    Kernels. The Notes print k_i, indexed by the input map only, because their derivation
    follows one output map j and drops j from α, c and k alike; read that way k_i is k_ij.
    ``kernels="per_pair"`` (default) gives every (i, j) pair its own kernel k_ij, as a
    convolution layer does (SPEC §2): α then does exactly the job of the connection table
    M_j, and a one-hot α_.j is a one-entry table. ``kernels="per_input"`` is the literal
    reading: one kernel k_i per input map, shared by all output maps, so each output map
    is a convex combination of the same C filtered maps z_i = x_i * k_i (fewer parameters:
    C·kH·kW instead of O·C·kH·kW; ∂E/∂α_ij = Σ_uv δ_j ∘ z_i).

    Implementation. A separate layer rather than a ``Conv2d`` option: it has its own
    parameter (``alpha_logits``), init and penalties, and Conv2d stays one equation. Both
    forms are written on the convolution primitives (``_conv_ops``, SPEC §5): per_pair
    convolves with the effective kernel α_ij·k_ij and splits that kernel's gradient
    G_ij = ∂E/∂(α_ij k_ij) into ∂E/∂k_ij = α_ij G_ij and ∂E/∂α_ij = ⟨k_ij, G_ij⟩ (= the
    Σ_uv formula above); per_input computes z with a depthwise convolution (groups = C)
    and mixes the maps with one matrix product α·z.

    Init. c = 0 (α uniform, 1/C), and k_ij ~ U(±√(C/K)) (K = kH·kW), so the effective kernel
    α_ij·k_ij ~ U(±1/√(C·K)) is distributed exactly as PyTorch's Conv2d weight; b as Conv2d.

    Sparsity. ``penalty`` attaches an ``AlphaPenalty`` (saved with the model): "l1" is the
    Notes' λ Σ|α_ij|, constant under the softmax and with zero gradient, so it does nothing;
    "entropy" (λ Σ_j H(α_.j)) and "power" (λ Σ α_ij^p, 0 < p < 1) do make α sparse.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as Conv2d.
        kernels: "per_pair" (k_ij) or "per_input" (k_i), as above.
        flip_kernel: true convolution (rotate kernels by 180°), as Conv2d.
        penalty: None, "l1", "entropy" or "power".
        penalty_weight: λ. penalty_power: p of the "power" penalty.

    Attributes:
        alpha: the current α, shape (out_channels, in_channels): alpha[j, i] = α_ij.

    Shape:
        input (N, C_in, H, W) -> output (N, C_out, H_out, W_out) as Conv2d;
        weight (C_out, C_in, kH, kW) per_pair or (C_in, 1, kH, kW) per_input;
        alpha_logits (C_out, C_in): alpha_logits[j, i] = c_ij; bias (C_out,).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        *,
        kernels: str = "per_pair",
        flip_kernel: bool = False,
        penalty: str | None = None,
        penalty_weight: float = 0.0,
        penalty_power: float = 0.5,
        dtype: Any = DEFAULT_DTYPE,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(
                f"FeatureMapCombination: kernels must be one of {KERNELS}, got {kernels!r}"
            )
        if penalty is not None and penalty not in PENALTIES:
            raise ValueError(
                f"FeatureMapCombination: penalty must be None or one of {PENALTIES}, "
                f"got {penalty!r}"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernels = kernels
        self.penalty = penalty
        rng = np.random.default_rng() if rng is None else rng
        self.kernel_size = as_tuple(kernel_size, 2, "kernel_size")
        self.stride = as_tuple(stride, 2, "stride")
        self.dilation = as_tuple(dilation, 2, "dilation")
        self.padding = padding if isinstance(padding, str) else as_tuple(padding, 2, "padding")
        self.flip_kernel = bool(flip_kernel)
        sizes = self.kernel_size + self.stride + self.dilation
        check_conv_arguments("FeatureMapCombination", self.in_channels, self.out_channels, sizes)
        self.pads = _windows.resolve_padding(padding, self.kernel_size, self.dilation)
        """(before, after) zero padding per spatial axis, resolved from ``padding``."""
        self.geometry = ConvGeometry(self.kernel_size, self.stride, self.pads, self.dilation)
        self.workspace = Workspace()
        taps = int(np.prod(self.kernel_size))
        bound = np.sqrt(self.in_channels / taps)  # α_ij k_ij ~ U(±1/√(C·K)) at α = 1/C
        # k_ij: (out, in, kH, kW); k_i: (in, 1, kH, kW), PyTorch's depthwise layout
        per_pair = kernels == "per_pair"
        kernel_rows = (self.out_channels, self.in_channels) if per_pair else (self.in_channels, 1)
        weight_shape = (*kernel_rows, *self.kernel_size)
        self._add_param("weight", uniform_init(rng, weight_shape, bound, dtype))
        self._add_param("alpha_logits", np.zeros((self.out_channels, self.in_channels), dtype))
        if bias:
            bias_bound = 1.0 / np.sqrt(self.in_channels * taps)
            self._add_param("bias", uniform_init(rng, (self.out_channels,), bias_bound, dtype))
        self._penalty_args = (float(penalty_weight), float(penalty_power))
        if penalty is not None:
            self.regularizers.append(AlphaPenalty(penalty, penalty_weight, penalty_power))

    # -- description ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        weight, power = self._penalty_args
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "bias": "bias" in self.params,
            "kernels": self.kernels,
            "flip_kernel": self.flip_kernel,
            "penalty": self.penalty,
            "penalty_weight": weight,
            "penalty_power": power,
        }

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        for name, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1))):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        if "bias" not in self.params:
            text += ", bias=False"
        if self.kernels != "per_pair":
            text += f", kernels={self.kernels!r}"
        if self.flip_kernel:
            text += ", flip_kernel=True"
        if self.penalty is not None:
            text += f", penalty={self.penalty!r}, penalty_weight={self._penalty_args[0]}"
            if self.penalty == "power":
                text += f", penalty_power={self._penalty_args[1]}"
        return text

    @property
    def alpha(self) -> np.ndarray:
        """α, shape (out_channels, in_channels): alpha[j, i] = α_ij; rows sum to one."""
        return softmax_over_inputs(self.params["alpha_logits"])

    def effective_kernel(self) -> np.ndarray:
        """The kernel x is cross-correlated with, (out, in, kH, kW): α_ij·k_ij (per_input:
        α_ij·k_i), rotated by 180° with ``flip_kernel``; u = x ⋆ it + b. Exporters use it."""
        kernel = self.params["weight"]
        if self.kernels == "per_input":  # k_i is shared by every output map j
            kernel = kernel[:, 0][None]
        return self._oriented(self.alpha[:, :, None, None] * kernel)

    def _oriented(self, kernel: np.ndarray) -> np.ndarray:
        """rot180 for true convolution (its own inverse), else the kernel itself."""
        return np.flip(kernel, axis=(2, 3)) if self.flip_kernel else kernel

    def memory_estimate(self, input_shape: tuple[int, ...]) -> MemoryEstimate:
        """Keeps its input x (and, per_input, the filtered maps z); a conv workspace."""
        n, _, *spatial = input_shape
        itemsize = np.dtype(self.dtype).itemsize
        out_shape = self.geometry.output_shape(tuple(spatial))
        filtered = 0
        if self.kernels == "per_input":
            filtered = n * self.in_channels * int(np.prod(out_shape)) * itemsize
        return MemoryEstimate(
            keeps_input=True, other_bytes=filtered, workspace_bytes=self.workspace.limit_bytes
        )

    # -- forward / backward ---------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(
            x, ndim=4, layout=f"(N, {self.in_channels}, H, W)", channels=self.in_channels
        )
        out_shape = self.geometry.output_shape(x.shape[2:])
        if min(out_shape) < 1:
            raise ValueError(
                f"{self!r}: kernel {self.kernel_size} is larger than the padded input; "
                f"input shape {x.shape}"
            )
        alpha, bias, geometry = self.alpha, self.params.get("bias"), self.geometry
        if self.kernels == "per_pair":
            kernel = self._oriented(alpha[:, :, None, None] * self.params["weight"])
            u = conv_forward(x, kernel, bias, geometry, workspace=self.workspace)
            filtered = None  # u_j = Σ_i x_i * (α_ij k_ij) + b_j
        else:
            kernel = self._oriented(self.params["weight"])
            filtered = conv_forward(  # z_i = x_i * k_i
                x, kernel, None, geometry, groups=self.in_channels, workspace=self.workspace
            )
            n, c, h, w = filtered.shape
            u = np.matmul(alpha, filtered.reshape(n, c, h * w))  # Σ_i α_ij z_i
            u = u.reshape(n, self.out_channels, h, w)
            if bias is not None:
                u += bias[:, None, None]  # + b_j
        self._remember(x, alpha, filtered)
        return u

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, alpha, filtered = self._recall()
        out_shape = (len(x), self.out_channels, *self.geometry.output_shape(x.shape[2:]))
        dy = self._check_grad_output(dy, out_shape)
        kernel, geometry, workspace = self.params["weight"], self.geometry, self.workspace
        if self.kernels == "per_pair":
            effective = self._oriented(alpha[:, :, None, None] * kernel)  # α_ij k_ij
            # G_ij = ∂E/∂(α_ij k_ij) = Σ_uv δ_j p_i
            dkernel = self._oriented(conv_weight_grad(x, dy, geometry, workspace=workspace))
            self.grads["weight"][...] = alpha[:, :, None, None] * dkernel  # ∂E/∂k_ij = α_ij G_ij
            dalpha = (kernel * dkernel).sum(axis=(2, 3))  # ⟨k_ij, G_ij⟩ = Σ_uv δ_j ∘ (x_i*k_ij)
            dx = conv_transpose(dy, effective, geometry, x.shape[2:], workspace=workspace)
        else:
            n, c, h, w = filtered.shape
            delta = dy.reshape(n, self.out_channels, h * w)
            z = filtered.reshape(n, c, h * w)
            dalpha = np.tensordot(delta, z, axes=([0, 2], [0, 2]))  # Σ_n,uv δ_j ∘ z_i
            dz = np.matmul(alpha.T, delta).reshape(filtered.shape)  # Σ_j α_ij δ_j
            groups = self.in_channels  # z_i = x_i * k_i: a depthwise convolution
            dk = conv_weight_grad(x, dz, geometry, groups=groups, workspace=workspace)
            self.grads["weight"][...] = self._oriented(dk)  # ∂E/∂k_i = Σ_uv dz_i p_i
            dx = conv_transpose(
                dz,
                self._oriented(kernel),
                geometry,
                x.shape[2:],
                groups=groups,
                workspace=workspace,
            )  # ∂E/∂x_i = conv(dz_i, rot180(k_i), 'full')
        self.grads["alpha_logits"][...] = softmax_backward(alpha, dalpha)  # ∂E/∂c_ij
        if "bias" in self.params:
            self.grads["bias"][...] = map_sums(dy)  # ∂E/∂b_j = Σ_uv δ_j
        return dx
