"""Memory and speed at real image sizes: convnp and PyTorch on a VGG-style network.

    python benchmarks/memory.py                       # workloads, then the memory curves
    python benchmarks/memory.py --quick               # small settings (a smoke run)
    python benchmarks/run.py --memory ...             # the same, after run.py's figures

The network: 6 convolutions 3x3 (padding 1) with ReLU, a 2x2 max pool after every second
one (channels 32, 32, 64, 64, 128, 128), then Flatten and Linear to 10 classes; CIFAR-shaped
3x32x32 inputs (batch 64 and 128) and the same network at 96x96 and 224x224 (batch 32).

Each (workload, training or inference) runs a fresh pair of worker processes, one convnp
and one PyTorch (``convnp.interop.torch.to_torch``: equal initial weights, SGD with
momentum 0.9, cross-entropy, one fixed random batch), driven in turns A, B, A, B so both
see the same machine load; each reports its images/s (median over windows) and its own
peak RSS. Every worker runs under an address-space limit (``--limit-gib``, RLIMIT_AS), so a
run that would outgrow the machine fails cleanly instead. The memory curves run one
process per point: peak RSS of training against batch size at 32x32 and against image
size at a fixed batch, with the least-squares slope of each, and the largest batch that
the slope predicts fits in ``--fit-gib`` at 224x224.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np

CHANNELS = (32, 32, 64, 64, 128, 128)
WORKLOADS = [(32, 64), (32, 128), (96, 32), (224, 32)]  # (image side, batch size)


def build_vgg(side: int, *, seed: int = 0) -> Any:
    """The VGG-style network above for 3 x side x side inputs (side a multiple of 8)."""
    from convnp.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
    from convnp.model import Sequential

    rng = np.random.default_rng(seed)
    layers: list[Any] = []
    in_channels = 3
    for index, channels in enumerate(CHANNELS):
        layers += [Conv2d(in_channels, channels, 3, padding=1, rng=rng), ReLU()]
        if index % 2:
            layers.append(MaxPool2d(2))
        in_channels = channels
    layers += [Flatten(), Linear(in_channels * (side // 8) ** 2, 10, rng=rng)]
    return Sequential(*layers)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


class _Convnp:
    def __init__(self, side: int, batch: int, seed: int) -> None:
        from convnp.losses import CrossEntropyLoss
        from convnp.optim import SGD

        self.model = build_vgg(side, seed=seed)
        self.loss = CrossEntropyLoss()
        self.optimizer = SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        rng = np.random.default_rng(seed + 1)
        self.x = rng.standard_normal((batch, 3, side, side)).astype(np.float32)
        self.t = rng.integers(0, 10, batch)

    def train(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.loss.forward(self.model.forward(self.x), self.t)
            self.model.backward(self.loss.backward(), input_grad=False)
            self.optimizer.step()
        return steps * len(self.x) / (time.perf_counter() - started)

    def infer(self, steps: int) -> float:
        self.model.eval()
        started = time.perf_counter()
        with self.model.no_grad():  # inference: keep nothing for a backward (torch.no_grad)
            for _ in range(steps):
                self.model.forward(self.x)
        seconds = time.perf_counter() - started
        self.model.train()
        return steps * len(self.x) / seconds

    def profile(self) -> list[tuple[str, float, float]]:
        """(layer, forward ms, backward ms) of one training step."""
        x, forward_ms = self.x, []
        for layer in self.model:
            started = time.perf_counter()
            x = layer.forward(x)
            forward_ms.append(1000 * (time.perf_counter() - started))
        self.loss.forward(x, self.t)
        dy, backward_ms = self.loss.backward(), []
        for index, layer in reversed(list(enumerate(self.model))):
            started = time.perf_counter()
            dy = layer.backward(dy) if index else layer.backward_params(dy)
            backward_ms.append(1000 * (time.perf_counter() - started))
        names = [repr(layer) for layer in self.model]
        return list(zip(names, forward_ms, reversed(backward_ms)))


class _Torch:
    def __init__(self, side: int, batch: int, seed: int) -> None:
        import torch

        from convnp.interop.torch import to_torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
        self.torch = torch
        self.net = to_torch(build_vgg(side, seed=seed))  # convnp's copy is freed here
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        rng = np.random.default_rng(seed + 1)
        self.x = torch.from_numpy(rng.standard_normal((batch, 3, side, side)).astype(np.float32))
        self.t = torch.from_numpy(rng.integers(0, 10, batch))

    def train(self, steps: int) -> float:
        functional = self.torch.nn.functional
        started = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            functional.cross_entropy(self.net(self.x), self.t).backward()
            self.optimizer.step()
        return steps * len(self.x) / (time.perf_counter() - started)

    def infer(self, steps: int) -> float:
        self.net.eval()
        with self.torch.no_grad():
            started = time.perf_counter()
            for _ in range(steps):
                self.net(self.x)
            seconds = time.perf_counter() - started
        self.net.train()
        return steps * len(self.x) / seconds


def _worker(framework: str, side: int, batch: int, options: dict[str, Any], conn: Any) -> None:
    """One framework in its own process, under the address-space guard."""
    limit = int(options["limit_gib"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if options.get("allocator"):
        from convnp.runtime.allocator import keep_freed_memory

        keep_freed_memory()
    try:
        runner = (_Convnp if framework == "convnp" else _Torch)(side, batch, options["seed"])
    except MemoryError:
        runner = None
    while True:
        command, argument = conn.recv()
        if command == "stop":
            conn.send(None)
            return
        try:
            if runner is None:
                raise MemoryError
            if command == "rss":
                conn.send(_peak_rss_mb())
            else:
                conn.send(getattr(runner, command)(*argument))
        except (MemoryError, RuntimeError) as error:  # torch raises RuntimeError on OOM
            conn.send(f"failed under the {options['limit_gib']} GiB guard: {error!r}"[:200])


class _Pair:
    """Worker processes driven by message; ``ask`` returns a figure or an error string."""

    def __init__(self, frameworks: list[str], side: int, batch: int, options: dict) -> None:
        context = mp.get_context("spawn")
        self.workers = {}
        for framework in frameworks:
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(framework, side, batch, options, child))
            process.start()
            self.workers[framework] = (process, parent)

    def ask(self, framework: str, command: str, *argument: Any) -> Any:
        _, conn = self.workers[framework]
        conn.send((command, argument))
        return conn.recv()

    def close(self) -> None:
        for process, conn in self.workers.values():
            conn.send(("stop", ()))
            conn.recv()
            process.join()


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, float)]
    return (
        statistics.median(numbers)
        if len(numbers) == len(values)
        else next(v for v in values if not isinstance(v, float))
    )


def workload(side: int, batch: int, mode: str, frameworks: list[str], options: dict) -> dict:
    """Images/s (median of windows, interleaved) and peak RSS of each framework."""
    steps = options["steps"] if side <= 96 else max(1, options["steps"] // 4)
    pair = _Pair(frameworks, side, batch, options)
    try:
        first = {framework: pair.ask(framework, mode, 1) for framework in frameworks}  # warm-up
        rates: dict[str, list[Any]] = {framework: [] for framework in frameworks}
        for _ in range(options["windows"]):
            for framework in frameworks:
                rates[framework].append(pair.ask(framework, mode, steps))
        result: dict[str, Any] = {"side": side, "batch": batch, "mode": mode}
        for framework in frameworks:
            result[framework] = {
                "images_per_s": _median(rates[framework]),
                "first_step_images_per_s": first[framework],  # fresh memory, cold caches
                "peak_rss_mb": pair.ask(framework, "rss"),
            }
        if mode == "train" and "convnp" in frameworks and options["profile"]:
            result["convnp"]["profile"] = pair.ask("convnp", "profile")
    finally:
        pair.close()
    if len(frameworks) == 2 and all(
        isinstance(result[f]["images_per_s"], float) for f in frameworks
    ):
        for key in ("images_per_s", "peak_rss_mb"):
            result[f"ratio_{key}"] = result["convnp"][key] / result["torch"][key]
    return result


def peak_training_rss(framework: str, side: int, batch: int, options: dict) -> Any:
    """Peak RSS (MiB) of a process that trains two steps, or the error it met."""
    pair = _Pair([framework], side, batch, options)
    try:
        outcome = pair.ask(framework, "train", 2)
        return pair.ask(framework, "rss") if isinstance(outcome, float) else outcome
    finally:
        pair.close()


def _slope(xs: list[float], ys: list[Any]) -> tuple[float, float] | None:
    points = [(x, y) for x, y in zip(xs, ys) if isinstance(y, float)]
    if len(points) < 2:
        return None
    slope, intercept = np.polyfit(*zip(*points), 1)
    return float(slope), float(intercept)


def curves(frameworks: list[str], options: dict) -> dict[str, Any]:
    """Peak training RSS against batch (32x32) and image side (batch options['side_batch']),
    plus a batch curve at 224x224 for the largest batch that fits in ``fit_gib``."""
    result: dict[str, Any] = {"frameworks": {}}
    for framework in frameworks:
        figures: dict[str, Any] = {}
        figures["batch"] = {
            b: peak_training_rss(framework, 32, b, options) for b in options["batches"]
        }
        side_batch = options["side_batch"]
        figures["side"] = {
            s: peak_training_rss(framework, s, side_batch, options) for s in options["sides"]
        }
        figures["batch_224"] = {
            b: peak_training_rss(framework, 224, b, options) for b in options["batches_224"]
        }
        batches, sides = list(figures["batch"]), list(figures["side"])
        figures["mib_per_sample_32px"] = _slope(batches, list(figures["batch"].values()))
        pixels = [s * s / 1000 for s in sides]
        figures["mib_per_kilopixel"] = _slope(pixels, list(figures["side"].values()))
        fit = _slope(list(figures["batch_224"]), list(figures["batch_224"].values()))
        figures["mib_per_sample_224px"] = fit
        if fit is not None and fit[0] > 0:
            figures["largest_batch_224px"] = int((options["fit_gib"] * 1024 - fit[1]) / fit[0])
        result["frameworks"][framework] = figures
    return result


def _print(report: dict[str, Any]) -> None:
    def cell(value: Any, form: str) -> str:
        return format(value, form) if isinstance(value, float) else "failed"

    header = f"{'workload':<18}{'mode':<7}{'framework':<8}{'img/s':>9}{'peak RSS MiB':>14}"
    print(f"\n{header}{'first step':>12}")
    for row in report["workloads"]:
        name = f"3x{row['side']}x{row['side']} b{row['batch']}"
        for framework in ("convnp", "torch"):
            if framework in row:
                figures = row[framework]
                rate = cell(figures["images_per_s"], "9.1f")
                rss = cell(figures["peak_rss_mb"], "14.0f")
                first = cell(figures["first_step_images_per_s"], "12.1f")
                print(f"{name:<18}{row['mode']:<7}{framework:<8}{rate}{rss}{first}")
        if "ratio_images_per_s" in row:
            print(
                f"{'':<18}{'':<7}{'ratio':<8}{row['ratio_images_per_s']:9.2f}"
                f"{row['ratio_peak_rss_mb']:14.2f}"
            )
    for row in report["workloads"]:
        for name, forward, backward in row.get("convnp", {}).get("profile", []):
            times = f"fwd {forward:8.1f} ms  bwd {backward:8.1f} ms"
            print(f"  {row['side']}px b{row['batch']}  {name:<52} {times}")
    if "curves" not in report:
        return
    for framework, figures in report["curves"]["frameworks"].items():
        print(f"\npeak training RSS, {framework} (MiB)")
        print(
            "  batch (32x32): "
            + ", ".join(f"{b}: {cell(v, '.0f')}" for b, v in figures["batch"].items())
        )
        print(
            "  side (batch {}): ".format(report["options"]["side_batch"])
            + ", ".join(f"{s}: {cell(v, '.0f')}" for s, v in figures["side"].items())
        )
        print(
            "  batch (224x224): "
            + ", ".join(f"{b}: {cell(v, '.0f')}" for b, v in figures["batch_224"].items())
        )
        for key in ("mib_per_sample_32px", "mib_per_kilopixel", "mib_per_sample_224px"):
            fit = figures[key]
            if fit is not None:
                print(f"  slope {key}: {fit[0]:.2f} (intercept {fit[1]:.0f} MiB)")
        if "largest_batch_224px" in figures:
            print(
                f"  largest batch at 224x224 in {report['options']['fit_gib']} GiB "
                f"(from the slope): {figures['largest_batch_224px']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=3, help="timed windows per framework")
    parser.add_argument("--steps", type=int, default=4, help="steps per window (/4 at 224 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-gib", type=float, default=8.0, help="RLIMIT_AS per worker")
    parser.add_argument("--fit-gib", type=float, default=24.0, help="memory for the largest batch")
    parser.add_argument("--no-torch", action="store_true", help="convnp only")
    parser.add_argument("--no-curves", action="store_true")
    parser.add_argument("--no-workloads", action="store_true")
    parser.add_argument("--profile", action="store_true", help="convnp per-layer times")
    parser.add_argument("--allocator", action="store_true", help="glibc keep_freed_memory()")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run")
    parser.add_argument(
        "--workload",
        action="append",
        metavar="SIDExBATCH",
        help="e.g. 96x32 (repeatable; default: 32x64 32x128 96x32 224x32)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--threads", type=int, help="BLAS/OpenMP threads of both frameworks (default: all cores)"
    )
    args = parser.parse_args(argv)
    if args.threads:  # read by OpenBLAS and OpenMP when the spawned workers load them
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    frameworks = ["convnp"] if args.no_torch else ["convnp", "torch"]
    options: dict[str, Any] = {
        "windows": args.windows,
        "steps": args.steps,
        "seed": args.seed,
        "limit_gib": args.limit_gib,
        "fit_gib": args.fit_gib,
        "profile": args.profile,
        "allocator": args.allocator,
        "batches": [1, 8, 32, 128, 512],
        "sides": [32, 64, 96, 160, 224],
        "side_batch": 8,
        "batches_224": [4, 8, 16, 32],
    }
    workloads = WORKLOADS
    if args.workload:
        workloads = [tuple(int(v) for v in text.split("x")) for text in args.workload]
    if args.quick:
        workloads = [(32, 8), (64, 4)]
        options.update(windows=1, steps=1, batches=[1, 4], sides=[32, 48], batches_224=[])
    options["threads"] = args.threads or os.cpu_count()
    report: dict[str, Any] = {"options": options, "workloads": []}
    if not args.no_workloads:
        for side, batch in workloads:
            for mode in ("train", "infer"):
                print(f"{mode} 3x{side}x{side} batch {batch} ...", flush=True)
                report["workloads"].append(workload(side, batch, mode, frameworks, options))
    if not args.no_curves:
        print("memory curves ...", flush=True)
        report["curves"] = curves(frameworks, options)
    _print(report)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=2)
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
