"""Optimizers: N steps against torch.optim, multipliers by hand, in-place updates, state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convnp.layers import Conv2d
from convnp.losses import SquaredErrorLoss
from convnp.model import Sequential
from convnp.optim import SGD, Adam, optimizer_class

STEPS = 6


def _model(rng, dtype=np.float64):
    return Sequential(
        Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=rng),
        Conv2d(3, 2, (2, 3), stride=2, dtype=dtype, rng=rng),
    )


def _batches(rng, steps=STEPS, dtype=np.float64):
    return [
        (
            rng.standard_normal((4, 2, 6, 7)).astype(dtype),
            rng.standard_normal((4, 2, 3, 3)).astype(dtype),
        )
        for _ in range(steps)
    ]


def _train(model, optimizer, batches):
    """The training step of the module docstring; returns the params after every step."""
    loss = SquaredErrorLoss()
    history = []
    for x, t in batches:
        loss.forward(model.forward(x), t)
        model.backward(loss.backward())
        optimizer.step()
        history.append(model.state_dict())
    return history


def _train_torch(model, make_optimizer, batches):
    """The same model and loss in torch (F.conv2d, ½·MSE summed / N), starting from our params."""
    torch = pytest.importorskip("torch")
    conv2d = torch.nn.functional.conv2d
    params = {name: torch.tensor(p.copy(), requires_grad=True) for name, p, _ in model.parameters()}
    optimizer = make_optimizer(list(params.values()))
    history = []
    for x, t in batches:
        optimizer.zero_grad()
        hidden = conv2d(torch.tensor(x), params["0.weight"], params["0.bias"], padding=1)
        y = conv2d(hidden, params["1.weight"], params["1.bias"], stride=2)
        loss = 0.5 * torch.nn.functional.mse_loss(y, torch.tensor(t), reduction="sum") / len(x)
        loss.backward()
        optimizer.step()
        history.append({name: value.detach().numpy().copy() for name, value in params.items()})
    return history


def _assert_histories_match(ours, theirs):
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        for name in reference:
            np.testing.assert_allclose(
                mine[name], reference[name], rtol=1e-10, atol=1e-12, err_msg=f"{name} @ {step}"
            )


# -- parity with torch.optim ------------------------------------------------------------
@pytest.mark.parametrize(
    ("momentum", "weight_decay", "nesterov"),
    [
        (0.0, 0.0, False),
        (0.0, 0.05, False),
        (0.9, 0.0, False),
        (0.9, 0.05, False),
        (0.8, 0.05, True),
    ],
)
def test_sgd_matches_torch_at_constant_lr(momentum, weight_decay, nesterov, rng):
    torch = pytest.importorskip("torch")
    model = _model(rng)
    batches = _batches(rng)
    lr = 0.05

    def make_torch(params):
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )

    theirs = _train_torch(model, make_torch, batches)
    optimizer = SGD(model.parameters(), lr, momentum, weight_decay, nesterov)
    ours = _train(model, optimizer, batches)
    _assert_histories_match(ours, theirs)
    assert not np.allclose(ours[0]["0.weight"], ours[-1]["0.weight"])  # it did move


@pytest.mark.parametrize(
    ("betas", "weight_decay"), [((0.9, 0.999), 0.0), ((0.8, 0.9), 0.1), ((0.0, 0.5), 0.01)]
)
def test_adam_matches_torch(betas, weight_decay, rng):
    torch = pytest.importorskip("torch")
    model = _model(rng)
    batches = _batches(rng)
    lr, eps = 0.01, 1e-6

    def make_torch(params):
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    theirs = _train_torch(model, make_torch, batches)
    optimizer = Adam(model.parameters(), lr, betas, eps, weight_decay)
    _assert_histories_match(_train(model, optimizer, batches), theirs)


# -- multipliers by hand ------------------------------------------------------------------
def _hand_parameters():
    weight = np.array([1.0, -2.0])
    bias = np.array([3.0])
    triples = [("0.weight", weight, np.array([0.5, 0.25])), ("0.bias", bias, np.array([-1.0]))]
    return weight, bias, triples


def test_sgd_multipliers_match_hand_computation():
    weight, bias, triples = _hand_parameters()
    optimizer = SGD(
        triples,
        lr=0.1,
        momentum=0.5,
        weight_decay=0.1,
        lr_mult={"*.bias": 2.0},
        decay_mult={"*.bias": 0.0},
    )
    # step 1, weight: g̃ = g + 0.1·θ = [0.6, 0.05]; v = 0.1·g̃;        θ = [0.94, −2.005]
    #         bias:   g̃ = g (decay_mult 0);    v = 0.1·2·(−1) = −0.2;  θ = 3.2
    optimizer.step()
    np.testing.assert_allclose(weight, [0.94, -2.005], rtol=1e-14)
    np.testing.assert_allclose(bias, [3.2], rtol=1e-14)
    # step 2, weight: g̃ = [0.594, 0.0495]; v = 0.5·[0.06, 0.005] + 0.1·g̃ = [0.0894, 0.00745]
    #         bias:   v = 0.5·(−0.2) + 0.2·(−1) = −0.3
    optimizer.step()
    np.testing.assert_allclose(weight, [0.8506, -2.01245], rtol=1e-14)
    np.testing.assert_allclose(bias, [3.5], rtol=1e-14)


def test_later_pattern_wins():
    weight, bias, triples = _hand_parameters()
    SGD(triples, lr=0.1, lr_mult={"*": 0.0, "0.bias": 1.0}).step()
    np.testing.assert_array_equal(weight, [1.0, -2.0])  # frozen by "*"
    np.testing.assert_allclose(bias, [3.1])  # θ − lr·g


def test_adam_lr_mult_scales_the_first_step():
    weight, bias, triples = _hand_parameters()
    eps = 1e-3  # large enough that dropping it would fail the check
    Adam(triples, lr=0.01, eps=eps, lr_mult={"0.weight": 3.0}).step()
    # first step: m̂ = g, √ŝ = |g|, so Δθ = −lr·lr_mult·g/(|g| + ε)
    np.testing.assert_allclose(
        weight, [1.0 - 0.03 * 0.5 / (0.5 + eps), -2.0 - 0.03 * 0.25 / (0.25 + eps)], rtol=1e-14
    )
    np.testing.assert_allclose(bias, [3.0 + 0.01 / (1.0 + eps)], rtol=1e-14)


def test_unknown_multiplier_pattern_lists_valid_names():
    _, _, triples = _hand_parameters()
    with pytest.raises(ValueError, match=r"'1\.weight'.*valid names: \['0\.weight', '0\.bias'\]"):
        SGD(triples, lr=0.1, decay_mult={"1.weight": 0.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        SGD(triples, lr=0.1, lr_mult={"*.bias": -1.0})


# -- references and in-place updates --------------------------------------------------------
@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.1, momentum=0.9), lambda p: Adam(p)])
def test_params_updated_in_place_through_held_references(make, rng):
    model = _model(rng)
    arrays = {name: (param, grad) for name, param, grad in model.parameters()}
    before = {name: param.copy() for name, (param, _) in arrays.items()}
    optimizer = make(model.parameters())
    for _, grad in arrays.values():
        grad[...] = rng.standard_normal(grad.shape)  # written after construction, in place
    optimizer.step()
    for name, param, grad in model.parameters():
        assert param is arrays[name][0] and grad is arrays[name][1]
        assert not np.array_equal(param, before[name])
    assert model[0].params["weight"] is arrays["0.weight"][0]


def test_step_starts_from_externally_changed_param():
    weight, _, triples = _hand_parameters()
    optimizer = SGD(triples, lr=0.1)
    weight[...] = [10.0, 20.0]
    optimizer.step()
    np.testing.assert_allclose(weight, [10.0 - 0.05, 20.0 - 0.025])


@pytest.mark.parametrize("make", [lambda p: SGD(p, 0.1, momentum=0.9), lambda p: Adam(p)])
def test_float32_stays_float32(make, rng):
    model = _model(rng, dtype=np.float32)
    optimizer = make(model.parameters())
    _train(model, optimizer, _batches(rng, steps=2, dtype=np.float32))
    assert all(param.dtype == np.float32 for _, param, _ in model.parameters())
    assert all(v.dtype == np.float32 for k, v in optimizer.state_dict().items() if k != "step")


# -- state ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGD(
            p, 0.05, momentum=0.9, weight_decay=0.01, nesterov=True, lr_mult={"*.bias": 2.0}
        ),
        lambda p: Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
    ],
)
def test_state_dict_round_trip_gives_identical_updates(make, rng):
    model = _model(rng)
    optimizer = make(model.parameters())
    _train(model, optimizer, _batches(rng, steps=3))

    clone = _model(rng)
    clone.load_state_dict(model.state_dict())
    config = json.loads(json.dumps(optimizer.config()))
    state = optimizer.state_dict()
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    state = safetensors_numpy.load(safetensors_numpy.save(state))  # storable as it is
    resumed = type(optimizer)(clone.parameters(), **config)
    resumed.load_state_dict(state)
    assert resumed.step_count == optimizer.step_count == 3

    more = _batches(rng, steps=3)
    for mine, theirs in zip(_train(model, optimizer, more), _train(clone, resumed, more)):
        for name in mine:
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_state_dict_keys_and_copies(rng):
    model = _model(rng)
    names = [name for name, _, _ in model.parameters()]
    assert set(SGD(model.parameters(), 0.1).state_dict()) == {"step"}
    adam = Adam(model.parameters())
    state = adam.state_dict()
    expected = {"step"} | {f"{kind}.{n}" for kind in ("exp_avg", "exp_avg_sq") for n in names}
    assert set(state) == expected
    assert state["step"].shape == () and state["step"].dtype == np.int64
    assert all(isinstance(value, np.ndarray) for value in state.values())
    state["exp_avg.0.weight"][...] = 1.0
    assert not adam.state_dict()["exp_avg.0.weight"].any()  # a copy was returned


def test_load_state_dict_errors_name_the_problem(rng):
    model = _model(rng)
    optimizer = SGD(model.parameters(), 0.1, momentum=0.9)
    state = optimizer.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['momentum\.1\.bias'\]"):
        optimizer.load_state_dict({k: v for k, v in state.items() if k != "momentum.1.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \['exp_avg\.0\.weight'\]"):
        optimizer.load_state_dict({**state, "exp_avg.0.weight": state["momentum.0.weight"]})
    with pytest.raises(ValueError, match="'step' must be a non-negative integer"):
        optimizer.load_state_dict({**state, "step": np.array(1.5)})

    bad = {k: np.full_like(v, 7) for k, v in state.items()}
    bad["momentum.1.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"'momentum\.1\.bias' has shape \(5,\).*\(2,\)"):
        optimizer.load_state_dict(bad)
    assert not optimizer.state_dict()["momentum.0.weight"].any()  # nothing half-loaded


# -- construction and serialisation ---------------------------------------------------------
def test_config_and_repr(rng):
    model = _model(rng)
    optimizer = SGD(model.parameters(), 0.1, momentum=0.9, lr_mult={"*.bias": 2.0})
    assert repr(optimizer) == (
        "SGD(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False, "
        "lr_mult={'*.bias': 2.0}, decay_mult={})"
    )
    adam = Adam(model.parameters(), betas=(0.5, 0.6))
    assert json.loads(json.dumps(adam.config())) == {
        "lr": 0.001,
        "betas": [0.5, 0.6],
        "eps": 1e-8,
        "weight_decay": 0.0,
        "lr_mult": {},
        "decay_mult": {},
    }
    adam.lr = 0.5  # a schedule's change is what config() reports
    assert adam.config()["lr"] == 0.5


def test_constructor_errors(rng):
    model = _model(rng)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], 0.1)
    with pytest.raises(ValueError, match=r"instead of model\.parameters\(\)"):
        SGD(model, 0.1)
    weight = np.zeros(2)
    with pytest.raises(ValueError, match="appears twice"):
        SGD([("w", weight, weight.copy()), ("w", weight, weight.copy())], 0.1)
    with pytest.raises(ValueError, match=r"grad of 'w' has shape \(3,\)"):
        SGD([("w", weight, np.zeros(3))], 0.1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(model.parameters(), 0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum"):
        SGD(model.parameters(), 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        SGD(model.parameters(), -0.1)
    with pytest.raises(ValueError, match="betas"):
        Adam(model.parameters(), betas=(0.9, 1.0))


def test_one_registry_resolves_recipe_and_checkpoint_names():
    # recipes and the CLI say "sgd"/"adam", checkpoints record the class name
    assert optimizer_class("sgd") is optimizer_class("SGD") is SGD
    assert optimizer_class("Adam") is Adam
    for bad in ("rmsprop", "", None, ["sgd"]):
        with pytest.raises(ValueError, match="unknown optimizer .*known: sgd, adam"):
            optimizer_class(bad)
