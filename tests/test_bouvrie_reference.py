"""Reproduce DeepLearnToolbox's MATLAB CNN exactly (issue: core, "Reproduce the MATLAB
reference implementation"): same initial weights and batches -> same activations,
gradients and weights after several SGD steps, to ~1e-10 in float64."""

from __future__ import annotations

import numpy as np
from dlt_reference import DLTNet

from convnp import Sequential
from convnp.layers import AvgPool2d, Conv2d, Flatten, Linear, Sigmoid
from convnp.losses import SquaredErrorLoss, one_hot
from convnp.optim import SGD

TOL = 1e-10


def _column_major_permutation(maps=12, side=4):
    """Our Flatten is C order (j, r, c); MATLAB's reshape is column-major (j, c, r)."""
    j, r, c = np.meshgrid(np.arange(maps), np.arange(side), np.arange(side), indexing="ij")
    return (j * side * side + c * side + r).reshape(-1)


def _build_pair(rng):
    model = Sequential(
        Conv2d(1, 6, 5, flip_kernel=True, dtype=np.float64, rng=rng),
        Sigmoid(),
        AvgPool2d(2),
        Conv2d(6, 12, 5, flip_kernel=True, dtype=np.float64, rng=rng),
        Sigmoid(),
        AvgPool2d(2),
        Flatten(),
        Linear(192, 10, dtype=np.float64, rng=rng),
        Sigmoid(),
    )
    perm = _column_major_permutation()
    ffW = np.empty((10, 192))
    ffW[:, perm] = model[7].params["weight"]
    k1 = [[model[0].params["weight"][j, i].copy() for j in range(6)] for i in range(1)]
    k2 = [[model[3].params["weight"][j, i].copy() for j in range(12)] for i in range(6)]
    reference = DLTNet(
        k1,
        list(model[0].params["bias"].copy()),
        k2,
        list(model[3].params["bias"].copy()),
        ffW,
        model[7].params["bias"].copy(),
    )
    return model, reference, perm


def _as_matlab(maps):
    """(N, C, H, W) -> list over C of (H, W, N)."""
    return [maps[:, c].transpose(1, 2, 0) for c in range(maps.shape[1])]


def test_matches_deeplearntoolbox_for_several_steps(rng):
    model, reference, perm = _build_pair(rng)
    loss = SquaredErrorLoss(reduction="mean")
    optimizer = SGD(model.parameters(), lr=1.0)
    for step in range(3):
        x = rng.random((10, 1, 28, 28))
        labels = rng.integers(0, 10, size=10)
        target = one_hot(labels, 10, dtype=np.float64)

        activations = []
        h = x
        for layer in model:
            h = layer.forward(h)
            activations.append(h)
        error = loss.forward(h, target)
        model.backward(loss.backward())

        reference.ff(x[:, 0].transpose(1, 2, 0))
        reference.bp(target.T)

        np.testing.assert_allclose(error, reference.L, rtol=TOL, err_msg=f"step {step}: loss")
        np.testing.assert_allclose(h, reference.o.T, atol=TOL)
        for ours, layer_index in [(1, 1), (2, 2), (4, 3), (5, 4)]:
            for ours_map, their_map in zip(
                _as_matlab(activations[ours]), reference.layers[layer_index]["a"]
            ):
                np.testing.assert_allclose(ours_map, their_map, atol=TOL, err_msg=f"step {step}")
        for conv_index, layer_index in [(0, 1), (3, 3)]:
            dk = reference.layers[layer_index]["dk"]
            grad = model[conv_index].grads["weight"]
            for i, row in enumerate(dk):
                for j, dkernel in enumerate(row):
                    np.testing.assert_allclose(grad[j, i], dkernel, atol=TOL)
            np.testing.assert_allclose(
                model[conv_index].grads["bias"], reference.layers[layer_index]["db"], atol=TOL
            )
        np.testing.assert_allclose(model[7].grads["weight"], reference.dffW[:, perm], atol=TOL)
        np.testing.assert_allclose(model[7].grads["bias"], reference.dffb, atol=TOL)

        optimizer.step()
        reference.applygrads(1.0)

        np.testing.assert_allclose(model[7].params["weight"], reference.ffW[:, perm], atol=TOL)
        for j in range(12):
            for i in range(6):
                np.testing.assert_allclose(
                    model[3].params["weight"][j, i], reference.layers[3]["k"][i][j], atol=TOL
                )
    assert np.abs(model[0].grads["weight"]).max() > 1e-6  # the comparison was not vacuous
