"""ONNX export: every built-in model and every exportable layer, run in onnxruntime on real
test images (mnist5k), must give convnp's eval-mode outputs within 1e-5 (float32)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from convnp import layers as L  # noqa: E402
from convnp.app import zoo  # noqa: E402
from convnp.data import load_dataset  # noqa: E402
from convnp.interop import onnx as onnx_export  # noqa: E402
from convnp.layers.combine import FeatureMapCombination  # noqa: E402
from convnp.layers.dropout import Dropout, Dropout2d  # noqa: E402
from convnp.layers.local import LocallyConnected2d  # noqa: E402
from convnp.layers.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d  # noqa: E402
from convnp.layers.rbf import EuclideanRBF  # noqa: E402
from convnp.model import Sequential  # noqa: E402

TOLERANCE = 1e-5  # float32, relative to the output's scale (at least 1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """32 real digits, standardised like the lenet5/modern recipes (zero mean, unit std)."""
    test = load_dataset("mnist5k").test_images[:32].astype(np.float32) / 255
    return (test - test.mean()) / test.std()


def run_onnx(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {onnx_export.INPUT_NAME: x})[0]


def assert_exports_exactly(model: Sequential, x: np.ndarray, tmp_path=None) -> float:
    """Export (to a file if tmp_path is given), check, run in onnxruntime, compare."""
    path = None if tmp_path is None else tmp_path / "model.onnx"
    proto = onnx_export.to_onnx(model, path, x.shape[1:])
    if path is not None:
        proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    ours = model.predict(x)
    theirs = run_onnx(proto, x)
    assert theirs.shape == ours.shape and theirs.dtype == ours.dtype
    assert np.isfinite(ours).all()
    difference = float(np.abs(theirs - ours).max())
    assert difference <= TOLERANCE * max(1.0, float(np.abs(ours).max())), difference
    return difference


@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_built_in_models_match_onnxruntime(name: str, images: np.ndarray, tmp_path) -> None:
    model = zoo.get_recipe(name).build(rng=np.random.default_rng(1))
    _randomise_state(model, np.random.default_rng(2))
    assert_exports_exactly(model, images, tmp_path)


# -- every exportable layer, in small random models --------------------------------------
def _randomise_state(model: Sequential, rng: np.random.Generator) -> None:
    """Move parameters initialised to constants (β = 1, γ = 1, α logits = 0, running
    stats) off them, so an export that ignored one would be caught."""
    for layer in model:
        for key, value in (*layer.params.items(), *layer.buffers.items()):
            if key in ("beta", "running_var") or (key in ("weight", "bias") and value.ndim == 1):
                low = 0.5 if key == "running_var" else -1.0
                value[...] = rng.uniform(low, 1.5, value.shape)
            elif key in ("running_mean", "alpha_logits"):
                value[...] = rng.normal(0, 1, value.shape)


def _images_as(shape: tuple[int, ...], images: np.ndarray) -> np.ndarray:
    """Real pixels in any (C, *spatial) layout: crop/reshape the digits' flattened pixels."""
    size = int(np.prod(shape))
    flat = images.reshape(-1)
    n = min(len(images), flat.size // size)
    return np.ascontiguousarray(flat[: n * size].reshape(n, *shape))


def _rng(seed: int) -> dict:
    return {"rng": np.random.default_rng(seed)}


def _table(out_channels: int, in_channels: int, seed: int) -> np.ndarray:
    table = np.random.default_rng(seed).random((out_channels, in_channels)) < 0.5
    table[np.arange(out_channels), np.arange(out_channels) % in_channels] = True  # no empty row
    return table


# (id, input shape without batch, model factory). Covers every class in CONVERTERS with
# the geometry corner cases: stride, padding, dilation, asymmetric "same", ceil_mode
# overhang, count_include_pad, divisor_override, groups, connection tables, flip_kernel.
CASES: list[tuple[str, tuple[int, ...], Callable[[], Sequential]]] = [
    (
        "conv2d-pad-stride-dilation",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), **_rng(0)),
            L.ReLU(),
        ),
    ),
    (
        "conv2d-same-even-kernel-stride",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 3, 4, stride=2, padding="same", **_rng(1)),
            L.Tanh(),
        ),
    ),
    (
        "conv2d-flip-table",
        (2, 14, 28),
        lambda: Sequential(
            L.Conv2d(2, 6, 5, connection_table=_table(6, 2, 2), flip_kernel=True, **_rng(2)),
            L.Sigmoid(),
            L.Conv2d(
                6, 4, 3, padding="full", bias=False, connection_table=_table(4, 6, 3), **_rng(3)
            ),
        ),
    ),
    (
        "conv2d-groups-flip",
        (4, 14, 14),
        lambda: Sequential(
            L.Conv2d(4, 8, 3, padding=1, groups=2, flip_kernel=True, **_rng(4)),
            L.Conv2d(8, 8, 3, groups=8, **_rng(5)),
        ),
    ),
    (
        "3d-stack",
        (1, 4, 14, 16),
        lambda: Sequential(
            L.Conv3d(1, 3, (2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 0), **_rng(6)),
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
            L.Conv1d(7, 5, 5, stride=2, padding=3, dilation=2, flip_kernel=True, **_rng(7)),
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
            L.Conv2d(1, 4, 5, flip_kernel=True, **_rng(8)),
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
            FeatureMapCombination(3, 5, (3, 2), padding="same", flip_kernel=True, **_rng(14)),
            L.Tanh(),
            FeatureMapCombination(
                5, 4, 3, stride=2, dilation=(1, 2), kernels="per_input", **_rng(15)
            ),
            FeatureMapCombination(
                4, 2, 2, bias=False, kernels="per_input", flip_kernel=True, **_rng(16)
            ),
        ),
    ),
    (
        "locally-connected",
        (2, 14, 14),
        lambda: Sequential(
            LocallyConnected2d(2, 3, 14, (3, 2), stride=(2, 1), padding=1, **_rng(17)),
            L.ReLU(),
            LocallyConnected2d(3, 2, (7, 15), 4, stride=2, padding="same", bias=False, **_rng(18)),
        ),
    ),
    (
        "lenet5-rbf-output",
        (1, 28, 28),
        lambda: Sequential(
            L.Flatten(),
            L.Linear(784, 84, **_rng(19)),
            L.ScaledTanh(),
            EuclideanRBF(84, 10, **_rng(20)),
        ),
    ),
    (
        "dense-activations",
        (1, 28, 28),
        lambda: Sequential(
            L.Flatten(),
            L.Linear(784, 32, **_rng(9)),
            L.LeakyReLU(0.2),
            Dropout(0.3),
            BatchNorm1d(32),
            L.ELU(0.7),
            L.Linear(32, 16, bias=False, **_rng(10)),
            L.ScaledTanh(),
            L.Linear(16, 10, **_rng(11)),
            L.GELU(),
            L.Softmax(),
        ),
    ),
    (
        "batchnorm-dropout",
        (1, 28, 28),
        lambda: Sequential(
            L.Conv2d(1, 6, 3, **_rng(12)),
            BatchNorm2d(6),
            Dropout2d(0.5),
            L.ReLU(),
            L.Conv2d(6, 2, 3, **_rng(13)),
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
]


@pytest.mark.parametrize("shape, factory", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_exportable_layers_match_onnxruntime(shape, factory, images: np.ndarray) -> None:
    model = factory()
    _randomise_state(model, np.random.default_rng(3))
    assert_exports_exactly(model, _images_as(shape, images))


def test_every_converter_is_tested() -> None:
    covered = {type(layer) for _, _, factory in CASES for layer in factory()}
    assert set(onnx_export.CONVERTERS) <= covered, set(onnx_export.CONVERTERS) - covered


def _random_model(rng: np.random.Generator) -> Sequential:
    """A random stack of 2-D layers on (1, 28, 28), random geometry and weights."""
    layers = [L.Conv2d(1, 4, int(rng.integers(2, 6)), padding="same", **_rng(rng.integers(99)))]
    choices = [
        lambda c: L.Conv2d(
            c,
            4,
            3,
            stride=int(rng.integers(1, 3)),
            padding=1,
            flip_kernel=bool(rng.integers(2)),
            **_rng(rng.integers(99)),
        ),
        lambda c: L.MaxPool2d(int(rng.integers(2, 4)), ceil_mode=bool(rng.integers(2))),
        lambda c: L.AvgPool2d(3, stride=2, padding=1, ceil_mode=bool(rng.integers(2))),
        lambda c: L.LPPool2d(float(rng.choice([1.0, 2.0, 2.5])), 2),
        lambda c: L.Subsample2d(c, 1),
        lambda c: BatchNorm2d(c),
        lambda c: rng.choice([L.ReLU, L.Tanh, L.Sigmoid, L.ScaledTanh, L.GELU, L.ELU])(),
    ]
    for _ in range(4):
        layers.append(choices[rng.integers(len(choices))](4))
        if isinstance(layers[-1], L.LPPool2d):
            layers.insert(-1, L.ReLU())  # fractional powers need x >= 0
    layers += [L.Flatten()]
    probe = Sequential(*layers).output_shapes((1, 28, 28))[-1]
    layers.append(L.Linear(probe[0], 10, **_rng(rng.integers(99))))
    return Sequential(*layers)


@pytest.mark.parametrize("seed", range(6))
def test_random_models_match_onnxruntime(seed: int, images: np.ndarray) -> None:
    rng = np.random.default_rng(seed)
    model = _random_model(rng)
    _randomise_state(model, rng)
    assert_exports_exactly(model, images)


# -- behaviour --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer, shape, ops",
    [
        (L.AvgPool2d(3, stride=2, padding=1), (1, 9, 9), ["AveragePool"]),
        # ceil_mode overhang: ONNX would count the overhang cells, PyTorch/convnp do not
        (L.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 8, 8), ["Conv", "Div"]),
        (L.AvgPool2d(2, ceil_mode=True, count_include_pad=False), (1, 5, 5), ["AveragePool"]),
        (L.AvgPool2d(2, divisor_override=3), (1, 4, 4), ["Conv", "Div"]),
        (L.LPPool2d(2, 2), (1, 4, 4), ["LpPool"]),
        (L.LPPool2d(3, 2), (1, 4, 4), ["Pow", "AveragePool", "Mul", "Pow"]),
        (L.MaxPool2d(2, ceil_mode=True), (1, 5, 5), ["MaxPool"]),
        (L.Subsample2d(1, 2), (1, 4, 4), ["AveragePool", "Mul", "Add"]),
        (L.AdaptiveAvgPool2d(2), (1, 4, 6), ["AveragePool"]),
        (L.GlobalMaxPool2d(), (1, 4, 6), ["GlobalMaxPool"]),
        (L.ScaledTanh(), (3,), ["Mul", "Tanh", "Mul"]),
        (Dropout2d(), (1, 3, 3), ["Identity"]),
    ],
    ids=repr,
)
def test_operator_mapping(layer, shape, ops) -> None:
    proto = onnx_export.to_onnx(Sequential(layer), None, shape)
    assert [node.op_type for node in proto.graph.node] == ops


def test_batch_axis_is_dynamic_and_model_untouched(images: np.ndarray) -> None:
    model = zoo.get_recipe("modern").build(rng=np.random.default_rng(4))
    before = model.state_dict()
    proto = onnx_export.to_onnx(model, None, (1, 28, 28))
    assert model.training
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"
    for n in (1, 7):
        np.testing.assert_allclose(
            run_onnx(proto, images[:n]), model.predict(images[:n]), rtol=1e-5, atol=1e-5
        )


def test_initializers_named_like_state_dict() -> None:
    model = zoo.get_recipe("modern").build(rng=np.random.default_rng(5))
    proto = onnx_export.to_onnx(model, None, (1, 28, 28))
    names = {init.name for init in proto.graph.initializer}
    assert {"0.weight", "0.bias", "7.weight", "9.bias"} <= names
    weight = next(i for i in proto.graph.initializer if i.name == "7.weight")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), model[7].params["weight"])


def test_flip_kernel_is_baked_into_the_weights() -> None:
    conv = L.Conv2d(1, 2, 3, flip_kernel=True, rng=np.random.default_rng(6))
    proto = onnx_export.to_onnx(Sequential(conv), None, (1, 5, 5))
    weight = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    np.testing.assert_array_equal(weight, conv.params["weight"][:, :, ::-1, ::-1])


def test_metadata_and_opset(tmp_path) -> None:
    model = Sequential(L.Flatten(), L.Linear(4, 2, rng=np.random.default_rng(7)))
    path = tmp_path / "sub" / "m.onnx"
    onnx_export.to_onnx(
        model, path, (1, 2, 2), opset=18, metadata={"classes": ["a", "b"], "k": "v"}
    )
    proto = onnx.load(path)
    assert dict((p.key, p.value) for p in proto.metadata_props) == {
        "classes": '["a", "b"]',
        "k": "v",
    }
    assert proto.opset_import[0].version == 18
    with pytest.raises(ValueError, match="opset must be >= 17"):
        onnx_export.to_onnx(model, None, (1, 2, 2), opset=13)


def test_float64_models_export_as_float32_or_float64(images: np.ndarray) -> None:
    model = zoo.get_recipe("lenet5").build(dtype=np.float64, rng=np.random.default_rng(8))
    model32 = zoo.get_recipe("lenet5").build(rng=np.random.default_rng(8))
    x = images[:4].astype(np.float64)
    proto = onnx_export.to_onnx(model, None, (1, 28, 28))  # float32 by default
    np.testing.assert_allclose(
        run_onnx(proto, images[:4]), model32.predict(images[:4]), rtol=1e-5, atol=1e-5
    )
    dense = Sequential(
        L.Flatten(), L.Linear(784, 10, dtype=np.float64, rng=np.random.default_rng(9)), L.Tanh()
    )
    proto = onnx_export.to_onnx(dense, None, (1, 28, 28), dtype=np.float64)
    np.testing.assert_allclose(run_onnx(proto, x), dense.predict(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="float32 or float64"):
        onnx_export.to_onnx(dense, None, (1, 28, 28), dtype=np.float16)


def test_unknown_layer_is_named() -> None:
    class Custom(L.ReLU):
        pass

    model = Sequential(L.Flatten(), Custom())
    with pytest.raises(onnx_export.ExportError, match=r"layer 1 \(Custom\(\)\): Custom cannot be"):
        onnx_export.to_onnx(model, None, (4,))


def test_adaptive_pool_needs_divisible_sizes() -> None:
    model = Sequential(L.ReLU(), L.AdaptiveAvgPool2d(5))
    with pytest.raises(
        onnx_export.ExportError, match=r"layer 1 \(AdaptiveAvgPool2d.*not a multiple"
    ):
        onnx_export.to_onnx(model, None, (1, 28, 28))
    onnx_export.to_onnx(model, None, (1, 25, 30))  # divisible: fine


def test_flatten_over_the_batch_axis_is_refused() -> None:
    model = Sequential(L.Flatten(0))
    with pytest.raises(onnx_export.ExportError, match=r"layer 0 \(Flatten.*batch axis"):
        onnx_export.to_onnx(model, None, (2, 3))


def test_batch_statistics_in_eval_are_refused() -> None:
    model = Sequential(BatchNorm2d(1, track_running_stats=False))
    with pytest.raises(onnx_export.ExportError, match="layer 0 .*track_running_stats=False"):
        onnx_export.to_onnx(model, None, (1, 4, 4))


def test_missing_onnx_gives_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'convnp\[onnx\]'"):
        onnx_export.to_onnx(Sequential(L.ReLU()), None, (1, 2, 2))


def test_core_does_not_import_onnx() -> None:
    import subprocess

    code = (
        "import sys, convnp, convnp.interop.onnx, convnp.app.cli, convnp.train, convnp.app.zoo; "
        "print(any(m in sys.modules for m in ('onnx', 'onnxruntime', 'sklearn')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
