"""ONNX export: every built-in model and every exportable layer, run in onnxruntime on real
test images (mnist5k), must give convnp's eval-mode outputs within 1e-5 (float32)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sample_networks import NETWORKS, images_as, randomise_state, seeded  # noqa: E402

from convnp import layers as L  # noqa: E402
from convnp.app import zoo  # noqa: E402
from convnp.data import load_dataset  # noqa: E402
from convnp.interop import onnx as onnx_export  # noqa: E402
from convnp.layers.dropout import Dropout2d  # noqa: E402
from convnp.layers.normalization import BatchNorm2d  # noqa: E402
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
    model = randomise_state(zoo.get_recipe(name).build(rng=np.random.default_rng(1)), 2)
    assert_exports_exactly(model, images, tmp_path)


# -- every exportable layer, in the shared sample networks ------------------------------
# Every sample network exports exactly, except those the ONNX standard cannot express.
NOT_EXPORTABLE = {  # network -> the layer refused: adaptive bins of unequal size
    "1d-layers": "AdaptiveMaxPool1d",
    "2d-pools": "AdaptiveAvgPool2d",
    "3d-layers": "AdaptiveAvgPool3d",
}
CASES = [network for network in NETWORKS if network[0] not in NOT_EXPORTABLE]


@pytest.mark.parametrize("name", sorted(NOT_EXPORTABLE))
def test_networks_without_an_onnx_form_are_refused_naming_the_layer(name: str) -> None:
    _, shape, factory = next(network for network in NETWORKS if network[0] == name)
    with pytest.raises(onnx_export.ExportError, match=rf"{NOT_EXPORTABLE[name]}.*not a multiple"):
        onnx_export.to_onnx(factory(), None, shape)


@pytest.mark.parametrize("shape, factory", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_exportable_layers_match_onnxruntime(shape, factory, images: np.ndarray) -> None:
    model = randomise_state(factory(), 3)
    assert_exports_exactly(model, images_as(shape, images))


def test_every_converter_is_tested() -> None:
    covered = {type(layer) for _, _, factory in CASES for layer in factory()}
    assert set(onnx_export.CONVERTERS) <= covered, set(onnx_export.CONVERTERS) - covered


def _random_model(rng: np.random.Generator) -> Sequential:
    """A random stack of 2-D layers on (1, 28, 28), random geometry and weights."""
    layers = [L.Conv2d(1, 4, int(rng.integers(2, 6)), padding="same", **seeded(rng.integers(99)))]
    choices = [
        lambda c: L.Conv2d(
            c,
            4,
            3,
            stride=int(rng.integers(1, 3)),
            padding=1,
            flip_kernel=bool(rng.integers(2)),
            **seeded(rng.integers(99)),
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
    layers.append(L.Linear(probe[0], 10, **seeded(rng.integers(99))))
    return Sequential(*layers)


@pytest.mark.parametrize("seed", range(6))
def test_random_models_match_onnxruntime(seed: int, images: np.ndarray) -> None:
    rng = np.random.default_rng(seed)
    model = _random_model(rng)
    randomise_state(model, int(rng.integers(99)))
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


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_conv_padding_modes_export_as_pad_then_conv(padding_mode, images: np.ndarray) -> None:
    model = Sequential(
        L.Conv2d(1, 3, 3, stride=2, padding=(2, 1), padding_mode=padding_mode),
        L.Conv2d(3, 2, 3, padding=1, padding_mode=padding_mode, flip_kernel=True),
    )
    randomise_state(model, 7)
    if padding_mode == "circular":  # ONNX Pad has "wrap" from opset 19 only
        with pytest.raises(onnx_export.ExportError, match="layer 0 .*'wrap'.*opset=19"):
            onnx_export.to_onnx(model, None, images.shape[1:])
    proto = onnx_export.to_onnx(model, None, images.shape[1:], opset=19)
    assert [node.op_type for node in proto.graph.node] == ["Pad", "Conv"] * 2
    onnx.checker.check_model(proto, full_check=True)
    ours = model.predict(images)
    scale = max(1.0, float(np.abs(ours).max()))
    assert np.abs(run_onnx(proto, images) - ours).max() <= TOLERANCE * scale


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
