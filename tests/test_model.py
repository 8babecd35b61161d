"""Sequential: ordering, parameter names, modes, state, astype, summary."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_match_numeric

from convnp import Sequential
from convnp.layers import Conv2d, Flatten, Linear, ReLU, Sigmoid


def _small_model(rng, dtype=np.float64):
    return Sequential(
        Conv2d(1, 2, 3, padding=1, dtype=dtype, rng=rng),
        Sigmoid(),
        Conv2d(2, 3, 3, stride=2, dtype=dtype, rng=rng),
        Flatten(),
        Linear(3 * 2 * 2, 4, dtype=dtype, rng=rng),
    )


def test_whole_model_gradients_match_finite_differences(rng):
    model = _small_model(rng)
    assert_gradients_match_numeric(model, rng.standard_normal((2, 1, 6, 6)))


def test_parameters_have_torch_style_dotted_names(rng):
    names = [name for name, _, _ in _small_model(rng).parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


def test_parameters_yield_live_references(rng):
    model = _small_model(rng)
    _, param, grad = next(model.parameters())
    assert param is model[0].params["weight"] and grad is model[0].grads["weight"]


def test_train_eval_modes_and_no_grad_reach_every_layer(rng):
    model = _small_model(rng).eval()
    assert all(not layer.training for layer in model)
    with model.no_grad() as same:
        assert same is model and not any(layer.grad_enabled for layer in model)
        model.forward(rng.standard_normal((1, 1, 6, 6)))
    assert all(layer.grad_enabled for layer in model)
    assert all(layer._cache is None for layer in model)
    assert all(layer.training for layer in model.train())


def test_predict_restores_mode_and_batches(rng):
    model = _small_model(rng)
    x = rng.standard_normal((7, 1, 6, 6))
    full = model.forward(x)
    np.testing.assert_allclose(model.predict(x, batch_size=3), full)
    assert model.training


def test_training_forward_keeps_the_whole_batch_cache(rng):
    model = _small_model(rng)
    model.forward(rng.standard_normal((5, 1, 6, 6)))
    (kept_input,) = model[0]._cache
    assert len(kept_input) == 5  # backward needs the whole batch's cache


def test_state_dict_round_trip_is_exact_and_in_place(rng):
    model = _small_model(rng)
    other = _small_model(np.random.default_rng(1))
    weight_array = other[0].params["weight"]
    other.load_state_dict(model.state_dict())
    assert other[0].params["weight"] is weight_array
    x = rng.standard_normal((2, 1, 6, 6))
    np.testing.assert_array_equal(other.forward(x), model.forward(x))


def test_load_state_dict_errors_name_keys_and_shapes(rng):
    model = _small_model(rng)
    state = model.state_dict()
    state["0.weight"] = np.zeros((9, 9))
    with pytest.raises(
        ValueError, match=r"'0.weight' has shape \(9, 9\), model expects \(2, 1, 3, 3\)"
    ):
        model.load_state_dict(state)
    del state["0.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['0.weight'\]"):
        model.load_state_dict(state)


def test_astype_converts_everything(rng):
    model = _small_model(rng, dtype=np.float32)
    assert model.dtype == np.float32
    model.astype(np.float64)
    assert all(p.dtype == np.float64 and g.dtype == np.float64 for _, p, g in model.parameters())
    assert model.forward(rng.standard_normal((1, 1, 6, 6))).dtype == np.float64


def test_summary_lists_shapes_and_counts(rng):
    model = _small_model(rng)
    text = model.summary((1, 6, 6), print_fn=None)
    assert "(2, 6, 6)" in text and "(3, 2, 2)" in text and "(4,)" in text
    assert f"total parameters: {model.num_parameters():,}" in text
    assert model.num_parameters() == 2 * 9 + 2 + 3 * 2 * 9 + 3 + 12 * 4 + 4


def test_summary_works_at_any_spatial_size_for_fully_convolutional_nets(rng):
    model = Sequential(Conv2d(1, 4, 3, padding=1, rng=rng), ReLU())
    assert "(4, 40, 30)" in model.summary((1, 40, 30), print_fn=None)


def test_rejects_non_layers():
    with pytest.raises(TypeError, match="item 1 is function"):
        Sequential(ReLU(), lambda x: x)


def test_repr_is_nested(rng):
    assert (
        repr(Sequential(ReLU(), Flatten()))
        == "Sequential(\n  (0): ReLU()\n  (1): Flatten(start_dim=1)\n)"
    )


def test_forward_errors_say_which_layer(rng):
    model = _small_model(rng)
    with pytest.raises(ValueError, match=r"layer 4 of 5: Linear\(12, 4\): expected input"):
        model.forward(rng.standard_normal((2, 1, 8, 8)))


@pytest.mark.parametrize("input_grad", [True, False])
def test_backward_releases_each_layers_cache(rng, input_grad):
    """Back-propagation drops every layer's kept arrays (as PyTorch frees saved tensors):
    a second backward needs a new forward."""
    model = _small_model(rng)
    dy = rng.standard_normal(model.forward(rng.standard_normal((2, 1, 6, 6))).shape)
    assert all(layer._cache is not None for layer in model)
    model.backward(dy, input_grad=input_grad)
    assert all(layer._cache is None for layer in model)
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(dy)


def test_backward_without_input_gradient_fills_the_same_grads(rng):
    model = _small_model(rng)
    x = rng.standard_normal((2, 1, 6, 6))
    dy = rng.standard_normal(model.forward(x).shape)
    assert model.backward(dy).shape == x.shape
    expected = {name: grad.copy() for name, _, grad in model.parameters()}
    model.forward(x)
    assert model.backward(dy, input_grad=False) is None
    for name, _, grad in model.parameters():
        np.testing.assert_array_equal(grad, expected[name], err_msg=name)


def test_only_the_network_input_is_scanned_for_nan_and_the_scan_comes_back(rng):
    from convnp.layers.base import NonFiniteInputError, check_finite

    class MakesNaN(Sigmoid):  # a layer whose output goes non-finite inside the network
        def forward(self, x):
            return super().forward(x) * np.nan

    model = Sequential(Conv2d(1, 2, 3, dtype=np.float64, rng=rng), MakesNaN(), ReLU())
    y = model.forward(rng.standard_normal((2, 1, 5, 5)))  # inner layers do not re-scan
    assert np.isnan(y).all()
    bad = rng.standard_normal((2, 1, 5, 5))
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(NonFiniteInputError, match="layer 0 of 3"):
        model.forward(bad)  # the network's own input still is
    with pytest.raises(ValueError, match="layer 0 of 3"):
        model.forward(rng.standard_normal((2, 3, 5, 5)))
    with pytest.raises(NonFiniteInputError, match="layer 0 of 3"):
        model.forward(bad)  # the scan comes back on every call: nothing is left switched off
    # a layer validates the same way inside and outside a network: shapes and dtypes only
    assert np.isnan(ReLU().forward(np.full((1, 2), np.nan))).all()
    with pytest.raises(NonFiniteInputError, match=r"ReLU\(\): input of shape \(1, 2\)"):
        check_finite(np.full((1, 2), np.inf), "ReLU()")


def test_training_memory_counts_an_array_kept_by_two_layers_once(rng):
    from convnp.layers import Conv2d, ReLU

    model = Sequential(
        Conv2d(2, 3, 3, padding=1, rng=rng), ReLU(), Conv2d(3, 4, 3, padding=1, rng=rng)
    )
    rows = model.training_memory((2, 5, 5), batch_size=10)
    kept = [row[1] for row in rows]
    item = 4  # float32
    # conv 0 keeps the network input, ReLU its output, conv 2 the same array as its input
    assert kept == [10 * 2 * 25 * item, 10 * 3 * 25 * item, 0]
    assert all(row[2] > 0 for row in (rows[0], rows[2])) and rows[1][2] == 0
    text = model.memory_summary((2, 5, 5), 10, print_fn=None)
    assert "estimated total" in text and "Conv2d(3, 4" in text
