"""A loop-for-loop NumPy port of DeepLearnToolbox's MATLAB CNN (cnnff, cnnbp, cnnapplygrads).

Test-only reference (DESIGN 3.6: slow references live in the tests, never in the library).
Arrays follow MATLAB's layout: a map is (H, W, N), kernels k[i][j] are (kh, kw), the fully
connected input fv stacks each map column-major. Comments quote the MATLAB lines ported.
"""

from __future__ import annotations

import itertools

import numpy as np


def sigm(z):
    return 1.0 / (1.0 + np.exp(-z))


def convn(a, k, shape):
    """MATLAB convn(a, k, 'valid' | 'full'): true N-d convolution (the kernel is flipped)."""
    k = k.reshape(k.shape + (1,) * (a.ndim - k.ndim))
    if shape == "full":
        a = np.pad(a, [(s - 1, s - 1) for s in k.shape])
    out_shape = tuple(sa - sk + 1 for sa, sk in zip(a.shape, k.shape))
    out = np.zeros(out_shape)
    flipped = k[tuple(slice(None, None, -1) for _ in k.shape)]
    for offset in itertools.product(*(range(s) for s in k.shape)):
        window = tuple(slice(o, o + s) for o, s in zip(offset, out_shape))
        out += a[window] * flipped[offset]
    return out


def rot180(k):
    return k[::-1, ::-1]


def flipall(a):
    return a[::-1, ::-1, ::-1]


def expand(d, scale):
    return d.repeat(scale, axis=0).repeat(scale, axis=1)


class DLTNet:
    """6c5-2s-12c5-2s: layers 'i', 'c'(6, 5), 's'(2), 'c'(12, 5), 's'(2), then sigmoid output."""

    def __init__(self, k1, b1, k2, b2, ffW, ffb):
        # k[l][i][j]: kernel from input map i to output map j of conv layer l
        self.layers = [
            {"type": "i"},
            {"type": "c", "k": k1, "b": b1},
            {"type": "s", "scale": 2},
            {"type": "c", "k": k2, "b": b2},
            {"type": "s", "scale": 2},
        ]
        self.ffW, self.ffb = ffW, ffb

    def ff(self, x):
        """cnnff: x is (28, 28, N)."""
        layers = self.layers
        layers[0]["a"] = [x]
        for l in range(1, len(layers)):
            prev, layer = layers[l - 1], layers[l]
            if layer["type"] == "c":
                layer["a"] = []
                for j in range(len(layer["b"])):
                    z = 0.0
                    for i in range(len(prev["a"])):
                        z = z + convn(prev["a"][i], layer["k"][i][j], "valid")
                    layer["a"].append(sigm(z + layer["b"][j]))
            else:
                s = layer["scale"]
                layer["a"] = [
                    convn(a, np.ones((s, s)) / s**2, "valid")[::s, ::s, :] for a in prev["a"]
                ]
        last = layers[-1]["a"]
        n = x.shape[2]
        # fv = [fv; reshape(a{j}, sa(1) * sa(2), sa(3))]  (column-major)
        self.fv = np.concatenate([a.reshape(-1, n, order="F") for a in last], axis=0)
        self.o = sigm(self.ffW @ self.fv + self.ffb[:, None])
        return self.o

    def bp(self, y):
        """cnnbp: y is (10, N) one-hot."""
        layers = self.layers
        n = y.shape[1]
        e = self.o - y
        self.L = 0.5 * np.sum(e**2) / n
        od = e * (self.o * (1 - self.o))
        fvd = self.ffW.T @ od
        last = layers[-1]
        h, w = last["a"][0].shape[:2]
        last["d"] = [
            fvd[j * h * w : (j + 1) * h * w].reshape(h, w, n, order="F")
            for j in range(len(last["a"]))
        ]
        for l in range(len(layers) - 2, 0, -1):
            layer, nxt = layers[l], layers[l + 1]
            if layer["type"] == "c":
                s = nxt["scale"]
                layer["d"] = [
                    a * (1 - a) * (expand(nxt["d"][j], s) / s**2) for j, a in enumerate(layer["a"])
                ]
            else:
                layer["d"] = []
                for i in range(len(layer["a"])):
                    z = np.zeros_like(layer["a"][0])
                    for j in range(len(nxt["a"])):
                        z = z + convn(nxt["d"][j], rot180(nxt["k"][i][j]), "full")
                    layer["d"].append(z)
        for l in range(1, len(layers)):
            layer, prev = layers[l], layers[l - 1]
            if layer["type"] == "c":
                layer["dk"] = [
                    [
                        convn(flipall(prev["a"][i]), layer["d"][j], "valid")[:, :, 0] / n
                        for j in range(len(layer["a"]))
                    ]
                    for i in range(len(prev["a"]))
                ]
                layer["db"] = [np.sum(d) / n for d in layer["d"]]
        self.dffW = od @ self.fv.T / n
        self.dffb = od.mean(axis=1)

    def applygrads(self, alpha):
        """cnnapplygrads: plain gradient descent with learning rate alpha."""
        for layer in self.layers:
            if layer["type"] == "c":
                for i, row in enumerate(layer["k"]):
                    for j in range(len(row)):
                        row[j] = row[j] - alpha * layer["dk"][i][j]
                layer["b"] = [b - alpha * db for b, db in zip(layer["b"], layer["db"])]
        self.ffW = self.ffW - alpha * self.dffW
        self.ffb = self.ffb - alpha * self.dffb
