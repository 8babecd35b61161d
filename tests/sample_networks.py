"""One table of sample networks for the adapter tests (tests/interop/test_onnx.py and
test_torch.py): together they cover every layer class with the geometry corner cases
(stride, padding, dilation, asymmetric "same", ceil_mode overhang, count_include_pad,
divisor_override, groups, connection tables, flip_kernel, output_padding, 1-D/3-D), and the
helpers both tests use to fill them with non-trivial state and feed them real pixels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from convnp import layers as L
from convnp.layers.combine import FeatureMapCombination
from convnp.layers.dropout import Dropout, Dropout2d
from convnp.layers.local import LocallyConnected2d
from convnp.layers.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d
from convnp.layers.rbf import EuclideanRBF
from convnp.model import Sequential


def seeded(seed: int) -> dict:
    return {"rng": np.random.default_rng(seed)}


def connection_table(out_channels: int, in_channels: int, seed: int) -> np.ndarray:
    table = np.random.default_rng(seed).random((out_channels, in_channels)) < 0.5
    table[np.arange(out_channels), np.arange(out_channels) % in_channels] = True  # no empty row
    return table


def randomise_state(model: Sequential, seed: int) -> Sequential:
    """Move parameters initialised to constants (β = 1, γ = 1, biases, α logits = 0, running
    stats) off them, so an adapter that ignored one would be caught."""
    rng = np.random.default_rng(seed)
    for layer in model:
        for key, value in (*layer.params.items(), *layer.buffers.items()):
            if key in ("beta", "running_var") or (key in ("weight", "bias") and value.ndim == 1):
                low = 0.5 if key == "running_var" else -1.0
                value[...] = rng.uniform(low, 1.5, value.shape)
            elif key in ("running_mean", "alpha_logits"):
                value[...] = rng.normal(0, 1, value.shape)
    return model


def images_as(shape: tuple[int, ...], images: np.ndarray) -> np.ndarray:
    """Real pixels in any (C, *spatial) layout: the digits' flattened pixels, reshaped."""
    size = int(np.prod(shape))
    flat = images.reshape(-1)
    n = min(len(images), flat.size // size)
    return np.ascontiguousarray(flat[: n * size].reshape(n, *shape))


# (id, input shape without batch, model factory).
NETWORKS: list[tuple[str, tuple[int, ...], Callable[[], Sequential]]] = [
    (
        "conv2d-pad-stride-dilation",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), **seeded(0)),
            L.ReLU(),
        ),
    ),
    (
        "conv2d-same-even-kernel-stride",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 3, 4, stride=2, padding="same", **seeded(1)),
            L.Tanh(),
        ),
    ),
    (
        "conv2d-flip-table",
        (2, 14, 28),
        lambda: Sequential(
            L.Conv2d(
                2, 6, 5, connection_table=connection_table(6, 2, 2), flip_kernel=True, **seeded(2)
            ),
            L.Sigmoid(),
            L.Conv2d(
                6,
                4,
                3,
                padding="full",
                bias=False,
                connection_table=connection_table(4, 6, 3),
                **seeded(3),
            ),
        ),
    ),
    (
        "conv2d-groups-flip",
        (4, 14, 14),
        lambda: Sequential(
            L.Conv2d(4, 8, 3, padding=1, groups=2, flip_kernel=True, **seeded(4)),
            L.Conv2d(8, 8, 3, groups=8, **seeded(5)),
        ),
    ),
    (
        "3d-stack",
        (1, 4, 14, 16),
        lambda: Sequential(
            L.Conv3d(1, 3, (2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 0), **seeded(6)),
            L.MaxPool3d(2, ceil_mode=True),
            L.AvgPool3d((1, 2, 2), padding=(0, 1, 1), count_include_pad=False),
            L.LPPool3d(2, (2, 2, 2), ceil_mode=True),
            L.AdaptiveAvgPool3d((1, 2, 2)),
            L.AdaptiveMaxPool3d(1),
        ),
    ),
    (
        "1d-stack",
        (7, 120),
        lambda: Sequential(
            L.Conv1d(7, 5, 5, stride=2, padding=3, dilation=2, flip_kernel=True, **seeded(7)),
            L.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
            L.AvgPool1d(3, stride=2, padding=1, ceil_mode=True),
            L.ReLU(),
            L.LPPool1d(1.5, 2, ceil_mode=True),  # fractional powers need x >= 0
            BatchNorm1d(5),
            L.AdaptiveMaxPool1d(4),
            L.AdaptiveAvgPool1d(1),
            L.Flatten(),
        ),
    ),
    (
        "max-avg-ceil-overhang",
        (1, 28, 28),
        lambda: Sequential(
            L.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),  # counted pads + overhang
            L.MaxPool2d((3, 2), stride=2, padding=(1, 0), ceil_mode=True),
            L.AvgPool2d(3, stride=2, ceil_mode=True, count_include_pad=False),
        ),
    ),
    (
        "avg-divisor-override-weighted",
        (1, 28, 28),
        lambda: Sequential(
            L.AvgPool2d((2, 3), stride=(2, 1), padding=(1, 1), divisor_override=5),
            L.WeightedAvgPool2d(3, stride=2, padding=1, ceil_mode=True, sigma=0.8),
            L.WeightedAvgPool2d(2),
        ),
    ),
    (
        "lp-pools",
        (1, 28, 28),
        lambda: Sequential(
            L.LPPool2d(2, 2),  # the L2 pool: ONNX LpPool
            L.LPPool2d(4, 3, stride=2, ceil_mode=True),  # overhang: spelled out
            L.ReLU(),
            L.LPPool2d(3, (2, 1)),  # odd p: spelled out
        ),
    ),
    (
        "subsample-adaptive-global",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 4, 5, flip_kernel=True, **seeded(8)),
            L.Sigmoid(),
            L.Subsample2d(4, 2),
            L.Subsample2d(4, (3, 2)),
            L.AdaptiveAvgPool2d((None, 3)),
            L.AdaptiveMaxPool2d((2, 1)),
            L.GlobalAvgPool2d(),
            L.Flatten(),
        ),
    ),
    (
        "upsample",
        (2, 5, 6),
        lambda: Sequential(
            L.Upsample(scale_factor=2),
            L.Upsample(size=(7, 9)),
            L.Upsample(scale_factor=(1.5, 0.5), mode="bilinear"),
            L.Upsample(size=(8, 5), mode="bilinear", align_corners=True),
            L.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
        ),
    ),
    (
        "conv-transpose-decoder",
        (4, 7, 7),
        lambda: Sequential(
            L.ConvTranspose2d(
                4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, **seeded(21)
            ),
            L.ReLU(),
            L.ConvTranspose2d(
                6, 3, (2, 3), (1, 2), (0, 1), dilation=(2, 1), bias=False, **seeded(22)
            ),
            # output_padding >= stride (allowed below the dilation)
            L.ConvTranspose2d(3, 2, 3, output_padding=1, dilation=2, **seeded(23)),
            L.Tanh(),
        ),
    ),
    (
        "conv-transpose-1d",
        (3, 20),
        lambda: Sequential(
            L.ConvTranspose1d(3, 4, 5, stride=3, padding=2, output_padding=2, **seeded(24)),
            L.ConvTranspose1d(
                4, 4, 3, padding=2, output_padding=2, groups=4, dilation=3, **seeded(25)
            ),
        ),
    ),
    (
        "conv-transpose-3d",
        (2, 3, 4, 5),
        lambda: Sequential(
            L.ConvTranspose3d(
                2, 4, (2, 3, 2), (1, 2, 2), (0, 1, 1), (0, 1, 0), groups=2, **seeded(26)
            ),
        ),
    ),
    (
        "global-max-flatten-start-2",
        (3, 12, 12),
        lambda: Sequential(
            L.GlobalMaxPool2d(),
            L.Flatten(-3, -2),  # (N, 3, 1, 1) -> (N, 3, 1)
            L.Flatten(start_dim=2),
        ),
    ),
    (
        "feature-map-combinations",
        (3, 14, 14),
        lambda: Sequential(
            FeatureMapCombination(3, 5, (3, 2), padding="same", flip_kernel=True, **seeded(14)),
            L.Tanh(),
            FeatureMapCombination(
                5, 4, 3, stride=2, dilation=(1, 2), kernels="per_input", **seeded(15)
            ),
            FeatureMapCombination(
                4, 2, 2, bias=False, kernels="per_input", flip_kernel=True, **seeded(16)
            ),
        ),
    ),
    (
        "locally-connected",
        (2, 14, 14),
        lambda: Sequential(
            LocallyConnected2d(2, 3, 14, (3, 2), stride=(2, 1), padding=1, **seeded(17)),
            L.ReLU(),
            LocallyConnected2d(
                3, 2, (7, 15), 4, stride=2, padding="same", bias=False, **seeded(18)
            ),
        ),
    ),
    (
        "lenet5-rbf-output",
        (1, 28, 28),
        lambda: Sequential(
            L.Flatten(),
            L.Linear(784, 84, **seeded(19)),
            L.ScaledTanh(),
            EuclideanRBF(84, 10, **seeded(20)),
        ),
    ),
    (
        "dense-activations",
        (1, 28, 28),
        lambda: Sequential(
            L.Flatten(),
            L.Linear(784, 32, **seeded(9)),
            L.LeakyReLU(0.2),
            Dropout(0.3),
            BatchNorm1d(32),
            L.ELU(0.7),
            L.Linear(32, 16, bias=False, **seeded(10)),
            L.ScaledTanh(),
            L.Linear(16, 10, **seeded(11)),
            L.GELU(),
            L.Softmax(),
        ),
    ),
    (
        "batchnorm-dropout",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 6, 3, **seeded(12)),
            BatchNorm2d(6),
            Dropout2d(0.5),
            L.ReLU(),
            L.Conv2d(6, 2, 3, **seeded(13)),
            L.Flatten(),
            L.Softmax(dim=1),
        ),
    ),
    (
        "batchnorm3d-no-affine",
        (2, 4, 7, 28),
        lambda: Sequential(
            BatchNorm3d(2, eps=1e-3, affine=False),
        ),
    ),
    ("only-identity", (1, 28, 28), lambda: Sequential(Dropout(0.5))),
    (
        "conv2d-plain-and-grouped",
        (2, 14, 14),
        lambda: Sequential(
            L.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), **seeded(0)),
            L.Conv2d(4, 6, 3, padding="same", groups=2, **seeded(1)),
            L.Conv2d(6, 6, 2, padding="valid", groups=6, bias=False, **seeded(2)),
            L.ReLU(),
        ),
    ),
    (
        "conv2d-wrapped",
        (2, 14, 14),
        lambda: Sequential(
            L.Conv2d(
                2, 5, 5, connection_table=connection_table(5, 2, 3), flip_kernel=True, **seeded(3)
            ),
            L.Sigmoid(),
            L.Conv2d(5, 4, 4, stride=2, padding="same", **seeded(4)),  # asymmetric + stride 2
            L.Conv2d(4, 4, 3, padding=1, groups=2, flip_kernel=True, bias=False, **seeded(5)),
            L.Tanh(),
        ),
    ),
    (
        "1d-layers",
        (7, 60),
        lambda: Sequential(
            L.Conv1d(7, 5, 5, stride=2, padding=3, dilation=2, **seeded(6)),
            L.Conv1d(5, 4, 3, flip_kernel=True, **seeded(7)),
            L.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
            L.AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
            L.ReLU(),
            L.LPPool1d(1.5, 2, ceil_mode=True),
            BatchNorm1d(4),
            L.AdaptiveMaxPool1d(3),
            L.AdaptiveAvgPool1d(2),
            L.Flatten(),
        ),
    ),
    (
        "3d-layers",
        (1, 4, 14, 16),
        lambda: Sequential(
            L.Conv3d(1, 3, (2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 0), **seeded(8)),
            BatchNorm3d(3, momentum=0.3),
            L.MaxPool3d(2, ceil_mode=True),
            L.AvgPool3d((1, 2, 2), padding=(0, 1, 1), divisor_override=3),
            L.LPPool3d(2, (2, 2, 2), ceil_mode=True),
            L.AdaptiveAvgPool3d((1, 2, 3)),
            L.AdaptiveMaxPool3d(1),
        ),
    ),
    (
        "2d-pools",
        (1, 28, 28),
        lambda: Sequential(
            L.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
            L.MaxPool2d((3, 2), stride=2, padding=(1, 0), ceil_mode=True),
            L.WeightedAvgPool2d(3, stride=2, padding=1, ceil_mode=True, sigma=0.8),
            L.LPPool2d(2, 2),
            L.AdaptiveAvgPool2d((None, 3)),
            L.AdaptiveMaxPool2d((2, 1)),
        ),
    ),
    (
        "bouvrie-style",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 4, 5, flip_kernel=True, **seeded(9)),
            L.Sigmoid(),
            L.Subsample2d(4, 2),
            L.Subsample2d(4, (3, 2)),
            L.GlobalAvgPool2d(),
            L.Flatten(),
        ),
    ),
    (
        "global-max-dropout2d-bn2d",
        (3, 12, 12),
        lambda: Sequential(
            BatchNorm2d(3, affine=False),
            Dropout2d(0.0),
            L.GlobalMaxPool2d(),
            L.Flatten(start_dim=2),
        ),
    ),
    (
        "feature-map-combinations-entropy-penalty",
        (3, 14, 14),
        lambda: Sequential(
            FeatureMapCombination(3, 5, (3, 2), padding="same", flip_kernel=True, **seeded(10)),
            L.Tanh(),
            FeatureMapCombination(
                5,
                4,
                3,
                stride=2,
                dilation=(1, 2),
                kernels="per_input",
                penalty="entropy",
                penalty_weight=0.1,
                **seeded(11),
            ),
        ),
    ),
    (
        "dense-activations-rbf",
        (1, 28, 28),
        lambda: Sequential(
            L.Flatten(),
            L.Linear(784, 32, **seeded(14)),
            L.LeakyReLU(0.2),
            Dropout(0.0),
            BatchNorm1d(32, eps=1e-3),
            BatchNorm1d(32, momentum=None, bias=False),
            L.ELU(0.7),
            L.Linear(32, 16, bias=False, **seeded(15)),
            L.GELU(),
            L.GELU("tanh"),
            L.Linear(16, 12, **seeded(16)),
            L.ScaledTanh(),
            EuclideanRBF(12, 10, **seeded(17)),
            L.Softmax(),
        ),
    ),
]
