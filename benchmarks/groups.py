"""Grouped and depthwise convolution: weights stored and time, convnp beside PyTorch.

    python benchmarks/groups.py                 # 64 and 256 channels, 32x32, batch 32
    python benchmarks/groups.py --quick         # small settings (a smoke run)

Conv2d(C, C, 3, padding=1, groups=g) for g = 1, 4, 16 and C (depthwise) on one fixed
(batch, C, side, side) float32 batch. Both libraries store (C, C/g, 3, 3) weights, so the
weights fall by g; the time should fall with g too. Each round times every (C, g) once
per framework in turn (convnp forward, PyTorch forward, convnp forward+backward, PyTorch
forward+backward), so both see the same machine load; a figure is the median over rounds
of the mean over ``--steps`` calls. Forward is inference (eval mode, no gradients kept);
forward+backward is a training forward then the backward pass with the input's gradient
(both libraries compute dx, dW and db). "g/1" is convnp's time at groups=g over its time
at groups=1: the cost falling with groups. Both run on ``--threads`` BLAS/OpenMP threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from convnp.layers import Conv2d


def _seconds(call: Callable[[], Any], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        call()
    return (time.perf_counter() - start) / steps


class _Case:
    """One (channels, groups): a convnp layer, the PyTorch module with the same weights,
    and the four timed calls."""

    def __init__(self, channels: int, groups: int, batch: int, side: int, seed: int) -> None:
        import torch

        rng = np.random.default_rng(seed)
        self.channels, self.groups = channels, groups
        self.layer = Conv2d(channels, channels, 3, padding=1, groups=groups, rng=rng)
        self.module = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=groups)
        with torch.no_grad():
            self.module.weight.copy_(torch.from_numpy(self.layer.params["weight"]))
            self.module.bias.copy_(torch.from_numpy(self.layer.params["bias"]))
        self.x = rng.standard_normal((batch, channels, side, side)).astype(np.float32)
        self.dy = rng.standard_normal(self.x.shape).astype(np.float32)
        self.x_t, self.dy_t = torch.from_numpy(self.x), torch.from_numpy(self.dy)
        self.weights = {
            "convnp": self.layer.params["weight"].size,
            "torch": self.module.weight.numel(),
        }

    def calls(self) -> dict[str, Callable[[], Any]]:
        import torch

        def convnp_forward() -> None:
            self.layer.training = False
            self.layer.forward(self.x)

        def convnp_train() -> None:
            self.layer.training = True
            self.layer.forward(self.x)
            self.layer.backward(self.dy)

        def torch_forward() -> None:
            with torch.no_grad():
                self.module(self.x_t)

        def torch_train() -> None:
            x = self.x_t.detach().requires_grad_()
            self.module.zero_grad(set_to_none=True)
            self.module(x).backward(self.dy_t)

        return {
            "convnp forward": convnp_forward,
            "torch forward": torch_forward,
            "convnp train": convnp_train,
            "torch train": torch_train,
        }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    cases = [
        _Case(channels, groups, args.batch, args.side, args.seed)
        for channels in args.channels
        for groups in dict.fromkeys((1, 4, 16, channels))  # depthwise last, once
        if channels % groups == 0
    ]
    times: dict[tuple[int, int], dict[str, list[float]]] = {
        (case.channels, case.groups): {name: [] for name in case.calls()} for case in cases
    }
    with threadpool_limits(limits=args.threads):
        for case in cases:  # warm-up: workspaces, BLAS and torch's first-call costs
            for call in case.calls().values():
                call()
        for _ in range(args.rounds):
            for case in cases:
                for name, call in case.calls().items():
                    seconds = _seconds(call, args.steps)
                    times[(case.channels, case.groups)][name].append(seconds)
    rows = []
    for case in cases:
        medians = {
            name: 1000 * statistics.median(values)
            for name, values in times[(case.channels, case.groups)].items()
        }
        rows.append(
            {"channels": case.channels, "groups": case.groups, **case.weights, "ms": medians}
        )
    return rows


def _print(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"Conv2d(C, C, 3, padding=1, groups=g), float32 batch {args.batch}x C x "
        f"{args.side}x{args.side}, {args.threads} thread(s); ms = median of {args.rounds} "
        f"rounds x {args.steps} calls"
    )
    header = (
        f"{'C':>4} {'g':>4} {'weights':>8} {'torch w':>8} | {'fwd ms':>8} {'torch':>8} "
        f"{'g/1':>5} | {'fwd+bwd':>8} {'torch':>8} {'g/1':>5} | {'convnp/torch fwd, f+b':>21}"
    )
    print(header)
    print("-" * len(header))
    dense: dict[int, dict[str, float]] = {}
    for row in rows:
        ms = row["ms"]
        if row["groups"] == 1:
            dense[row["channels"]] = ms
        base = dense.get(row["channels"])
        ratio_forward = ms["convnp forward"] / base["convnp forward"] if base else float("nan")
        ratio_train = ms["convnp train"] / base["convnp train"] if base else float("nan")
        row["convnp_ratio_to_groups_1"] = {"forward": ratio_forward, "train": ratio_train}
        print(
            f"{row['channels']:>4} {row['groups']:>4} {row['convnp']:>8} {row['torch']:>8} | "
            f"{ms['convnp forward']:>8.2f} {ms['torch forward']:>8.2f} {ratio_forward:>5.2f} | "
            f"{ms['convnp train']:>8.2f} {ms['torch train']:>8.2f} {ratio_train:>5.2f} | "
            f"{ms['convnp forward'] / ms['torch forward']:>10.2f} "
            f"{ms['convnp train'] / ms['torch train']:>10.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="calls per timed figure")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.batch, args.side, args.rounds, args.steps = [16], 2, 8, 1, 1
    rows = run(args)
    _print(rows, args)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"settings": vars(args), "rows": rows}, stream, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
