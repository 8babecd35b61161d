"""The convolution layers of bouvrie, lenet5 and modern in training, one at a time: ms per
forward and per backward at the per-rank batch of two MPI ranks, convnp beside PyTorch.

    OPENBLAS_NUM_THREADS=1 python benchmarks/conv_training.py
    OPENBLAS_NUM_THREADS=1 python benchmarks/conv_training.py --repeats 200 --no-torch
    OPENBLAS_NUM_THREADS=1 python benchmarks/conv_training.py --batch 1 --repeats 500

``--batch`` replaces the per-rank batches (batch 1 shows the fixed cost per call).

Each layer runs as a training step runs it: a training-mode forward, then the backward
(the first layer of a network computes only its parameter gradients, ``backward_params``,
as ``Sequential.backward(..., input_grad=False)`` does; the others also ∂E/∂x). The
figures are medians over ``--rounds`` rounds of ``--repeats`` calls, with PyTorch (one
thread, ``torch.nn.Conv2d`` and autograd) timed in the same rounds, in turns. The clock is
the process's CPU time, which a busy machine disturbs less than the wall clock.
Both run in this process: run it on a quiet machine with one BLAS thread, as MPI ranks do.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import numpy as np

from convnp.layers import Conv2d

# model -> (per-rank batch, its conv layers: in, out, kernel, padding, input size)
MODELS = {
    "bouvrie": (25, [(1, 6, 5, 0, 28), (6, 12, 5, 0, 12)]),
    "lenet5": (32, [(1, 6, 5, 2, 28), (6, 16, 5, 0, 14)]),
    "modern": (64, [(1, 32, 3, 1, 28), (32, 64, 3, 1, 14)]),
}


def _convnp_step(layer: Conv2d, x: np.ndarray, dy: np.ndarray, first: bool) -> tuple:
    def forward() -> None:
        layer.forward(x)

    def backward() -> None:
        if first:
            layer.backward_params(dy)
        else:
            layer.backward(dy)

    return forward, backward


def _torch_step(args: tuple, x: np.ndarray, dy: np.ndarray, first: bool) -> tuple:
    import torch

    torch.set_num_threads(1)
    in_c, out_c, kernel, padding, _ = args
    module = torch.nn.Conv2d(in_c, out_c, kernel, padding=padding)
    tx = torch.from_numpy(x).requires_grad_(not first)
    tdy = torch.from_numpy(dy)
    state: dict = {}

    def forward() -> None:
        state["y"] = module(tx)

    def backward() -> None:
        state["y"].backward(tdy)

    return forward, backward


def _time(forward: Callable, backward: Callable, repeats: int) -> tuple[float, float]:
    fwd = bwd = 0.0
    for _ in range(repeats):
        start = time.process_time()
        forward()
        middle = time.process_time()
        backward()
        fwd += middle - start
        bwd += time.process_time() - middle
    return fwd / repeats * 1e3, bwd / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, help="instead of each model's per-rank batch")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    if not args.no_torch and importlib.util.find_spec("torch") is None:
        print("note: PyTorch is not installed; convnp alone")
        args.no_torch = True
    rng = np.random.default_rng(0)
    print(
        f"{'layer':34s} {'fwd ms':>8s} {'bwd ms':>8s}"
        + ("" if args.no_torch else "  torch fwd  torch bwd")
    )
    for name in args.models:
        batch, convs = MODELS[name]
        batch = args.batch or batch
        for index, conv in enumerate(convs):
            in_c, out_c, kernel, padding, size = conv
            layer = Conv2d(in_c, out_c, kernel, padding=padding, rng=rng)
            x = rng.standard_normal((batch, in_c, size, size)).astype(np.float32)
            out = size + 2 * padding - kernel + 1
            dy = rng.standard_normal((batch, out_c, out, out)).astype(np.float32)
            sides = {"convnp": _convnp_step(layer, x, dy, index == 0)}
            if not args.no_torch:
                sides["torch"] = _torch_step(conv, x, dy, index == 0)
            figures: dict[str, list] = {side: [] for side in sides}
            for forward, backward in sides.values():
                _time(forward, backward, 5)  # warm-up: workspaces sized
            for _ in range(args.rounds):
                for side, (forward, backward) in sides.items():
                    figures[side].append(_time(forward, backward, args.repeats))
            label = f"{name}@{batch} {in_c}->{out_c} {kernel}x{kernel} p{padding} {size}x{size}"
            line = f"{label:34s}"
            for side in sides:
                fwd = statistics.median(f for f, _ in figures[side])
                bwd = statistics.median(b for _, b in figures[side])
                line += f" {fwd:8.3f} {bwd:8.3f}  "
            print(line)


if __name__ == "__main__":
    main()
