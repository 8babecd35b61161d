"""Losses: SPEC §1's worked example, finite differences, PyTorch parity, behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from convnp.gradcheck import numerical_gradient, relative_error
from convnp.layers.base import NonFiniteInputError
from convnp.losses import CrossEntropyLoss, RBFEnergyLoss, SquaredErrorLoss, one_hot

GRADCHECK_TOLERANCE = 1e-7


def _labels(rng, n, c):
    return rng.integers(0, c, size=n)


def _probabilities(rng, n, c):
    weights = rng.random((n, c)) + 0.1
    return weights / weights.sum(axis=1, keepdims=True)


# (loss, target kind): every target form each loss accepts
CASES = [
    (SquaredErrorLoss(), "labels"),
    (SquaredErrorLoss(reduction="sum"), "labels"),
    (SquaredErrorLoss(off_value=-1.0), "labels"),
    (SquaredErrorLoss(), "real"),
    (SquaredErrorLoss(reduction="sum"), "real"),
    (CrossEntropyLoss(), "labels"),
    (CrossEntropyLoss(reduction="sum"), "labels"),
    (CrossEntropyLoss(label_smoothing=0.2), "labels"),
    (CrossEntropyLoss(), "probabilities"),
    (CrossEntropyLoss(reduction="sum", label_smoothing=0.1), "probabilities"),
]


def _target(kind, rng, n, c):
    if kind == "labels":
        return _labels(rng, n, c)
    if kind == "real":
        return rng.standard_normal((n, c))
    return _probabilities(rng, n, c)


# -- SPEC §1's worked example -------------------------------------------------------------
@pytest.mark.parametrize("target", [np.array([1]), np.array([[0.0, 1.0, 0.0]])])
def test_spec_worked_example(target):
    loss = CrossEntropyLoss()
    value = loss.forward(np.array([[2.0, 3.0, 4.0]]), target)
    np.testing.assert_allclose(loss.probabilities, [[0.0900, 0.2447, 0.6652]], atol=5e-5)
    np.testing.assert_allclose(loss.backward(), [[0.0900, -0.7553, 0.6652]], atol=5e-5)
    assert value == pytest.approx(1.4076, abs=5e-5)  # L = −ln a_1


# -- finite differences ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 3), (4, 5), (7, 2)])
@pytest.mark.parametrize(("loss", "kind"), CASES, ids=lambda v: repr(v))
def test_gradient_matches_finite_differences(loss, kind, shape, rng):
    y = rng.standard_normal(shape)
    target = _target(kind, rng, *shape)
    loss.forward(y, target)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss.forward(y, target), y)
    assert relative_error(analytic, numeric) < GRADCHECK_TOLERANCE


def test_squared_error_gradient_on_feature_maps(rng):
    y = rng.standard_normal((2, 3, 4, 5))
    target = rng.standard_normal(y.shape)
    loss = SquaredErrorLoss()
    loss.forward(y, target)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss.forward(y, target), y)
    assert relative_error(analytic, numeric) < GRADCHECK_TOLERANCE


# -- PyTorch parity -------------------------------------------------------------------------
def _assert_close(ours, theirs, dtype):
    if dtype == np.float64:
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def _torch_value_and_grad(function, y, target):
    torch = pytest.importorskip("torch")
    y_t = torch.tensor(y, requires_grad=True)
    value = function(y_t, torch.tensor(target))
    value.backward()
    return value.item(), y_t.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_cross_entropy_matches_torch(dtype, reduction, smoothing, kind, rng):
    torch = pytest.importorskip("torch")
    y = (rng.standard_normal((6, 5)) * 4).astype(dtype)
    target = _target(kind, rng, 6, 5)
    if kind == "probabilities":
        target = target.astype(dtype)
    loss = CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    value = loss.forward(y, target)
    dy = loss.backward()

    def reference(y_t, t_t):
        return torch.nn.functional.cross_entropy(
            y_t, t_t, reduction=reduction, label_smoothing=smoothing
        )

    value_t, dy_t = _torch_value_and_grad(reference, y, target)
    assert dy.dtype == dtype
    _assert_close(value, value_t, dtype)
    _assert_close(dy, dy_t, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_squared_error_matches_torch(dtype, reduction, rng):
    torch = pytest.importorskip("torch")
    y = rng.standard_normal((6, 3, 2, 2)).astype(dtype)
    target = rng.standard_normal(y.shape).astype(dtype)
    loss = SquaredErrorLoss(reduction=reduction)
    value = loss.forward(y, target)
    dy = loss.backward()
    batch_divisor = y.shape[0] if reduction == "mean" else 1

    def reference(y_t, t_t):  # ½ Σ (y − t)², averaged over the batch for "mean"
        return 0.5 * torch.nn.functional.mse_loss(y_t, t_t, reduction="sum") / batch_divisor

    value_t, dy_t = _torch_value_and_grad(reference, y, target)
    assert dy.dtype == dtype
    _assert_close(value, value_t, dtype)
    _assert_close(dy, dy_t, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_huge_logits_do_not_overflow(dtype):
    torch = pytest.importorskip("torch")
    y = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1.0, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([1, 0, 2])
    loss = CrossEntropyLoss()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss.forward(y, labels)
        dy = loss.backward()
    assert np.isfinite(value) and np.isfinite(dy).all()
    value_t, dy_t = _torch_value_and_grad(torch.nn.functional.cross_entropy, y, labels)
    np.testing.assert_allclose(value, value_t, rtol=1e-5)
    np.testing.assert_allclose(dy, dy_t, atol=1e-6)


# -- the docstring equations: sign and scale -------------------------------------------------
def test_squared_error_sign_and_scale():
    y = np.array([[1.0, 2.0], [1.0, 2.0]])
    target = np.zeros_like(y)
    total = SquaredErrorLoss(reduction="sum")
    mean = SquaredErrorLoss(reduction="mean")
    assert total.forward(y, target) == pytest.approx(2 * 0.5 * (1.0 + 4.0))  # Σ_n ½ Σ_k e²
    assert mean.forward(y, target) == pytest.approx(0.5 * (1.0 + 4.0))  # (1/N) Σ_n ...
    np.testing.assert_array_equal(total.backward(), y - target)  # ∂E/∂y = y − t
    np.testing.assert_array_equal(mean.backward(), (y - target) / 2)  # s = 1/N


def test_squared_error_tanh_targets_use_off_value():
    y = np.array([[0.5, -0.2, 0.1]])
    loss = SquaredErrorLoss(reduction="sum", off_value=-1.0)
    value = loss.forward(y, np.array([2]))
    expected_target = np.array([[-1.0, -1.0, 1.0]])
    assert value == pytest.approx(0.5 * np.sum((y - expected_target) ** 2))
    np.testing.assert_allclose(loss.backward(), y - expected_target)


def test_cross_entropy_sign_and_scale(rng):
    y = rng.standard_normal((4, 6))
    labels = np.array([0, 5, 2, 2])
    total = CrossEntropyLoss(reduction="sum")
    mean = CrossEntropyLoss()
    value_sum = total.forward(y, labels)
    a = np.exp(y) / np.exp(y).sum(axis=1, keepdims=True)
    assert value_sum == pytest.approx(-np.log(a[np.arange(4), labels]).sum())  # −Σ y_i ln a_i
    assert mean.forward(y, labels) == pytest.approx(value_sum / 4)
    dy = total.backward()
    np.testing.assert_allclose(dy, a - one_hot(labels, 6, dtype=np.float64))  # a − y
    assert np.all(dy[np.arange(4), labels] < 0)  # descent raises the true class's score
    np.testing.assert_allclose(dy.sum(axis=1), 0.0, atol=1e-15)
    np.testing.assert_allclose(mean.backward(), dy / 4)


def test_cross_entropy_uniform_logits_give_log_c():
    assert CrossEntropyLoss().forward(np.zeros((3, 7)), np.array([0, 3, 6])) == pytest.approx(
        np.log(7)
    )


def test_label_smoothing_formula(rng):
    y = rng.standard_normal((3, 4))
    labels = np.array([1, 0, 3])
    smoothing = 0.3
    loss = CrossEntropyLoss(reduction="sum", label_smoothing=smoothing)
    value = loss.forward(y, labels)
    smoothed = (1 - smoothing) * one_hot(labels, 4, dtype=np.float64) + smoothing / 4
    log_a = y - np.log(np.exp(y).sum(axis=1, keepdims=True))
    assert value == pytest.approx(-(smoothed * log_a).sum())  # y → (1 − ε)·y + ε/C
    np.testing.assert_allclose(loss.backward(), np.exp(log_a) - smoothed)


def test_unnormalised_probability_target_gradient(rng):
    """a·Σ_i y_i − y is the exact gradient when a target row does not sum to one."""
    y = rng.standard_normal((2, 3)) * 3
    target = np.array([[0.5, 0.5, 1.0], [0.0, 0.2, 0.1]])
    loss = CrossEntropyLoss(reduction="sum")
    loss.forward(y, target)
    numeric = numerical_gradient(lambda: loss.forward(y, target), y)
    assert relative_error(loss.backward(), numeric) < GRADCHECK_TOLERANCE


# -- one_hot ---------------------------------------------------------------------------------
def test_one_hot_values_shape_and_dtype():
    codes = one_hot(np.array([[2, 0], [1, 2]]), 3, off_value=-1.0, on_value=2.0)
    assert codes.shape == (2, 2, 3) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes[0, 0], [-1.0, -1.0, 2.0])
    np.testing.assert_array_equal(codes[1, 0], [-1.0, 2.0, -1.0])
    assert one_hot([0, 1], 2, dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 3], r"\[0, 3\).*0 to 3"), ([-1, 0], r"\[0, 3\)"), ([0.0, 1.0], "integer dtype")],
)
def test_one_hot_rejects_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        one_hot(np.array(labels), 3)


def test_one_hot_rejects_zero_classes():
    with pytest.raises(ValueError, match="num_classes"):
        one_hot(np.array([0]), 0)


# -- behaviour -------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [SquaredErrorLoss(), CrossEntropyLoss()])
def test_backward_before_forward_raises(loss):
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        loss.backward()


def test_probabilities_before_forward_raises():
    with pytest.raises(RuntimeError, match="before the first forward"):
        _ = CrossEntropyLoss().probabilities


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", [SquaredErrorLoss(), CrossEntropyLoss()])
def test_dtype_preserved_and_value_is_float(loss, dtype, rng):
    y = rng.standard_normal((3, 4)).astype(dtype)
    value = loss.forward(y, np.array([0, 3, 1]))
    assert type(value) is float
    assert loss.backward().dtype == dtype


def test_probabilities_are_softmax_and_read_only(rng):
    y = rng.standard_normal((5, 3))
    loss = CrossEntropyLoss()
    loss.forward(y, _labels(rng, 5, 3))
    np.testing.assert_allclose(loss.probabilities, np.exp(y) / np.exp(y).sum(1, keepdims=True))
    with pytest.raises(ValueError):
        loss.probabilities[0, 0] = 1.0


def test_repr_and_config_rebuild():
    loss = CrossEntropyLoss(reduction="sum", label_smoothing=0.1)
    assert repr(loss) == "CrossEntropyLoss(reduction='sum', label_smoothing=0.1)"
    assert repr(SquaredErrorLoss()) == "SquaredErrorLoss(reduction='mean', off_value=0.0)"
    rebuilt = CrossEntropyLoss(**loss.config())
    assert rebuilt.config() == loss.config()


@pytest.mark.parametrize(
    ("y", "target", "message"),
    [
        (np.zeros((2, 3)), np.array([0, 3]), r"CrossEntropyLoss.*\[0, 3\)"),
        (np.zeros((2, 3)), np.array([0, -1]), r"\[0, 3\)"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "integer dtype"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), r"batch size mismatch.*\(2, 3\).*\(3,\)"),
        (np.zeros((2, 3)), np.zeros((2, 4)), r"shape \(2, 3\).*got shape \(2, 4\)"),
        (np.array([[0.0, np.nan, 1.0]]), np.array([0]), "NaN"),
        (np.zeros((2, 3)), np.full((2, 3), np.inf), "target.*NaN or inf"),
        (np.zeros((2, 3, 1)), np.array([0, 1]), r"class indices of shape \(2, 1\)"),
        (np.zeros(3), np.array([0, 1, 2]), r"class indices of shape \(\)"),
        (np.zeros(()), np.array(0), r"\(N, \.\.\.\) or \(C,\)"),
        (np.zeros((2, 3), dtype=int), np.array([0, 1]), "floating-point"),
        ([[0.0, 1.0]], np.array([0]), "NumPy array"),
    ],
)
def test_cross_entropy_rejects_bad_input(y, target, message):
    with pytest.raises(ValueError, match=message):
        CrossEntropyLoss().forward(y, target)


@pytest.mark.parametrize(
    ("y", "target", "message"),
    [
        (np.zeros((2, 1)), np.zeros(2), r"integer dtype.*target array of the output's shape"),
        (np.zeros((2, 3, 4)), np.array([0, 1]), r"output's shape \(2, 3, 4\), got shape \(2,\)"),
        (np.zeros(()), np.zeros(()), r"\(N, \.\.\.\) or \(C,\)"),
        (np.full((1, 2), np.inf), np.zeros((1, 2)), "SquaredErrorLoss.*NaN or inf"),
    ],
)
def test_squared_error_rejects_bad_input(y, target, message):
    with pytest.raises(ValueError, match=message):
        SquaredErrorLoss().forward(y, target)


@pytest.mark.parametrize("loss", [SquaredErrorLoss(), CrossEntropyLoss()])
def test_non_finite_output_is_the_divergence_error(loss):
    with pytest.raises(NonFiniteInputError, match=r"output of shape \(2, 2\) contains NaN"):
        loss.forward(np.array([[0.0, 1.0], [np.nan, 0.0]]), np.array([0, 1]))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="reduction"):
        SquaredErrorLoss(reduction="elementwise")
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)


def test_class_probabilities_are_distributions_ranked_like_the_decision(rng):
    from convnp.train import predicted_classes

    y = rng.standard_normal((6, 4)) * 5
    y[0] = -1.0  # squared error: no positive output -> uniform
    for loss in (CrossEntropyLoss(), RBFEnergyLoss(), SquaredErrorLoss()):
        probabilities = loss.class_probabilities(y)
        assert probabilities.shape == y.shape and (probabilities >= 0).all()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
        decided = predicted_classes(loss, y)
        np.testing.assert_array_equal(probabilities[1:].argmax(axis=1), decided[1:])
    ce = CrossEntropyLoss()
    ce.forward(y, np.zeros(6, np.int64))
    np.testing.assert_allclose(ce.class_probabilities(y), ce.probabilities, rtol=1e-12)
    torch = pytest.importorskip("torch")
    expected = torch.softmax(-torch.from_numpy(y), dim=1).numpy()
    np.testing.assert_allclose(RBFEnergyLoss.class_probabilities(y), expected, rtol=1e-12)
    np.testing.assert_array_equal(SquaredErrorLoss.class_probabilities(y)[0], 0.25)


# -- PyTorch's options: class weights, ignore_index, reduction="none", per-pixel logits ---------
CROSS_ENTROPY_OPTIONS = [
    {"weight": [0.3, 2.0, 1.0, 0.5]},
    {"ignore_index": 2},
    {"weight": [0.3, 2.0, 1.0, 0.5], "ignore_index": 1, "label_smoothing": 0.2},
    {"reduction": "none"},
    {"reduction": "none", "weight": [0.3, 2.0, 1.0, 0.5], "label_smoothing": 0.1},
    {"reduction": "sum", "weight": [0.3, 2.0, 1.0, 0.5], "ignore_index": 0},
]
LOGIT_SHAPES = [(5, 4), (3, 4, 2, 3), (2, 4, 3), (4,)]
# (options, target kind); ignore_index applies to class-index targets only
OPTION_CASES = [
    (options, kind)
    for options in CROSS_ENTROPY_OPTIONS
    for kind in ("labels", "probabilities")
    if kind == "labels" or "ignore_index" not in options
]


def _cross_entropy_target(kind, rng, shape):
    if kind == "labels" and len(shape) == 1:
        return np.array(3)  # one sample: a class no option ignores
    if kind == "labels":
        return rng.integers(0, shape[1], size=_index_shape(shape))
    weights = rng.random(shape) + 0.1
    return weights / weights.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)


def _index_shape(shape):
    return shape[:1] + shape[2:] if len(shape) > 1 else ()


def _upstream_for(loss, value, rng):
    return rng.standard_normal(np.shape(value)) if loss.reduction == "none" else None


def _scalarised(loss, y, target, dloss):
    """E·dloss summed: a scalar whose gradient is backward(dloss), for finite differences."""
    value = loss.forward(y, target)
    return float(np.sum(value * dloss)) if dloss is not None else value


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize(("options", "kind"), OPTION_CASES, ids=repr)
def test_cross_entropy_options_gradient(options, shape, kind, rng):
    loss = CrossEntropyLoss(**options)
    y = rng.standard_normal(shape) * 2
    target = _cross_entropy_target(kind, rng, shape)
    dloss = _upstream_for(loss, loss.forward(y, target), rng)
    analytic = loss.backward(dloss)
    numeric = numerical_gradient(lambda: _scalarised(loss, y, target, dloss), y)
    assert relative_error(analytic, numeric) < GRADCHECK_TOLERANCE


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize(("options", "kind"), OPTION_CASES, ids=repr)
def test_cross_entropy_options_match_torch(options, shape, kind, dtype, rng):
    torch = pytest.importorskip("torch")
    loss = CrossEntropyLoss(**options)
    y = (rng.standard_normal(shape) * 3).astype(dtype)
    target = _cross_entropy_target(kind, rng, shape)
    if kind == "probabilities":
        target = target.astype(dtype)
    value = loss.forward(y, target)
    dloss = _upstream_for(loss, value, rng)
    dy = loss.backward(None if dloss is None else dloss.astype(dtype))

    torch_options = dict(options)
    if "weight" in torch_options:
        torch_options["weight"] = torch.tensor(np.array(options["weight"], dtype=dtype))
    y_t = torch.tensor(y, requires_grad=True)
    value_t = torch.nn.functional.cross_entropy(y_t, torch.tensor(target), **torch_options)
    value_t.backward(None if dloss is None else torch.tensor(dloss.astype(dtype)))
    assert np.shape(value) == tuple(value_t.shape) and dy.dtype == dtype
    _assert_close(np.asarray(value), value_t.detach().numpy(), dtype)
    _assert_close(dy, y_t.grad.numpy(), dtype)


def test_cross_entropy_mean_divides_by_summed_weights(rng):
    """PyTorch's rule: "mean" is Σ_n w_{t_n} L_n / Σ_n w_{t_n}, not / N."""
    y = rng.standard_normal((4, 3))
    labels = np.array([0, 2, 2, 1])
    weight = np.array([0.5, 2.0, 3.0])
    per_sample = CrossEntropyLoss(reduction="none").forward(y, labels)
    value = CrossEntropyLoss(weight=weight).forward(y, labels)
    assert value == pytest.approx(np.sum(weight[labels] * per_sample) / weight[labels].sum())


def test_cross_entropy_ignore_index_drops_positions(rng):
    y = rng.standard_normal((4, 3))
    labels = np.array([0, -100, 2, -100])
    loss = CrossEntropyLoss()
    value = loss.forward(y, labels)
    assert value == pytest.approx(CrossEntropyLoss().forward(y[[0, 2]], labels[[0, 2]]))
    np.testing.assert_array_equal(loss.backward()[[1, 3]], 0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_labels_equal_one_hot_probabilities(reduction, rng):
    """Plain labels take the path L_n = −ln a_{t_n}, ∂L/∂v = a − one-hot(t); one-hot
    probabilities take the general one (−Σ_c q_c ln a_c): the two must agree."""
    y = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, size=6)
    by_labels, by_codes = (
        CrossEntropyLoss(reduction=reduction),
        CrossEntropyLoss(reduction=reduction),
    )
    dloss = rng.standard_normal(6) if reduction == "none" else None
    np.testing.assert_allclose(
        by_labels.forward(y, labels),
        by_codes.forward(y, one_hot(labels, 4, dtype=np.float64)),
        rtol=1e-14,
    )
    np.testing.assert_allclose(
        by_labels.backward(dloss), by_codes.backward(dloss), rtol=1e-14, atol=1e-16
    )


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient():
    loss = CrossEntropyLoss(ignore_index=1)
    assert np.isnan(loss.forward(np.zeros((2, 3)), np.array([1, 1])))
    np.testing.assert_array_equal(loss.backward(), 0.0)


@pytest.mark.parametrize(
    ("loss", "dloss", "message"),
    [
        (CrossEntropyLoss(reduction="none"), None, r"dloss of the losses' shape \(2,\)"),
        (CrossEntropyLoss(reduction="none"), np.ones(3), r"shape \(2,\), got \(3,\)"),
        (CrossEntropyLoss(), np.ones(2), "scalar dloss"),
    ],
)
def test_backward_rejects_bad_dloss(loss, dloss, message):
    loss.forward(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=message):
        loss.backward(dloss)


def test_cross_entropy_rejects_weight_of_wrong_length():
    with pytest.raises(ValueError, match=r"weight has 2 classes.*\(3, 4\) have 4"):
        CrossEntropyLoss(weight=[1.0, 2.0]).forward(np.zeros((3, 4)), np.array([0, 1, 2]))


def test_cross_entropy_config_round_trip():
    loss = CrossEntropyLoss(weight=[1.0, 2.0], ignore_index=0, reduction="none")
    assert CrossEntropyLoss(**loss.config()).config() == loss.config()


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5), (6,)])
def test_squared_error_reduction_none(shape, rng):
    torch = pytest.importorskip("torch")
    y = rng.standard_normal(shape)
    target = rng.standard_normal(shape)
    loss = SquaredErrorLoss(reduction="none")
    value = loss.forward(y, target)
    dloss = rng.standard_normal(shape)
    analytic = loss.backward(dloss)
    numeric = numerical_gradient(lambda: _scalarised(loss, y, target, dloss), y)
    assert relative_error(analytic, numeric) < GRADCHECK_TOLERANCE
    y_t = torch.tensor(y, requires_grad=True)
    value_t = 0.5 * torch.nn.functional.mse_loss(y_t, torch.tensor(target), reduction="none")
    value_t.backward(torch.tensor(dloss))
    _assert_close(value, value_t.detach().numpy(), np.float64)
    _assert_close(analytic, y_t.grad.numpy(), np.float64)
