"""convnp and PyTorch side by side on the CPU: training and inference throughput, memory.

    python benchmarks/run.py                      # bouvrie, lenet5, modern + scaling
    python benchmarks/run.py --models modern --windows 3 --no-scaling
    python benchmarks/run.py --mpi               # + MPI ranks vs PyTorch and DDP (distributed.py)

For each built-in model, two worker processes (convnp and PyTorch) train the same network
(PyTorch's copy is made with ``convnp.interop.torch.to_torch``, so the initial weights are equal)
on the same batches (one DataLoader seed) and are driven in turns, A, B, A, B, ..., so both
see the same machine conditions. Reported per model: training images/s (median over timed
windows after a warm-up window), inference images/s at batch 1000 (median of repeats), each
process's peak RSS, the ratio convnp/PyTorch, and convnp's per-layer forward/backward time.
Scaling figures (convnp, in-process): training images/s and peak NumPy memory (tracemalloc)
against batch size, and against image size for the ``modern`` network. Results also go to a
JSON file. PyTorch is skipped cleanly when it is not installed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

# OpenBLAS's idle threads sleep at once instead of spinning for ~0.1 s after each product
# on the cores convnp's own threads need (README, Speed). OpenBLAS reads it when NumPy
# loads, so it is set before the import. Only OpenBLAS reads it: PyTorch's kernels do not.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

MODELS = {"bouvrie": 50, "lenet5": 64, "modern": 128}  # name -> batch size (the issue's)
INFERENCE_BATCH = 1000


def _dataset() -> Any:
    from convnp.data import DatasetNotFoundError, load_dataset

    try:
        return load_dataset("fashion-mnist", download=False, progress=False)
    except DatasetNotFoundError:
        print("note: Fashion-MNIST not found; benchmarking on the bundled mnist5k")
        return load_dataset("mnist5k")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


class _ConvnpRunner:
    def __init__(self, name: str, batch_size: int, seed: int) -> None:
        from convnp.app import zoo
        from convnp.data import DataLoader

        recipe = zoo.get_recipe(name)
        self.model = recipe.build(rng=np.random.default_rng(seed))
        self.loss = recipe.make_loss()
        self.optimizer = recipe.make_optimizer(self.model)
        data = _dataset()
        self.loader = DataLoader(
            data.train_images,
            data.train_labels,
            batch_size=batch_size,
            seed=seed,
            drop_last=True,
            normalize=recipe.normalize,
        )
        self.test_x = next(
            iter(
                DataLoader(
                    data.test_images,
                    data.test_labels,
                    batch_size=INFERENCE_BATCH,
                    shuffle=False,
                    normalize=recipe.normalize,
                )
            )
        )[0]
        self.batches = self._forever()

    def _forever(self) -> Any:
        while True:
            yield from self.loader

    def train(self, steps: int) -> float:
        from convnp.train import train_step

        count = 0
        started = time.perf_counter()
        for _ in range(steps):
            x, t = next(self.batches)
            train_step(self.model, self.loss, self.optimizer, x, t)  # as fit
            count += len(x)
        return count / (time.perf_counter() - started)

    def infer(self) -> float:
        from convnp.runtime.parallel import predict_in_blocks

        started = time.perf_counter()
        predict_in_blocks(self.model, self.test_x)  # as the CLI and train.evaluate
        seconds = time.perf_counter() - started
        return len(self.test_x) / seconds

    def profile(self, repeats: int = 5) -> list[dict[str, Any]]:
        """Median forward and backward milliseconds of each layer on one training batch,
        in one pass on the calling thread (a split batch runs these on each part)."""
        x, t = next(self.batches)
        times: list[list[tuple[float, float]]] = []
        for _ in range(repeats):
            forward, h = [], x
            for layer in self.model:
                started = time.perf_counter()
                h = layer.forward(h)
                forward.append(time.perf_counter() - started)
            self.loss.forward(h, t)
            dy, backward = self.loss.backward(), []
            for index in reversed(range(len(self.model))):
                layer, started = self.model[index], time.perf_counter()
                if index:
                    dy = layer.backward(dy)
                else:  # as in training: the first layer computes no input gradient
                    layer.backward_params(dy)
                backward.append(time.perf_counter() - started)
            times.append(list(zip(forward, reversed(backward))))
        return [
            {
                "layer": repr(layer),
                "forward_ms": 1e3 * statistics.median(run[i][0] for run in times),
                "backward_ms": 1e3 * statistics.median(run[i][1] for run in times),
            }
            for i, layer in enumerate(self.model)
        ]


class _TorchRunner(_ConvnpRunner):
    """The same network, weights, loss, optimizer and batches in PyTorch."""

    def __init__(self, name: str, batch_size: int, seed: int) -> None:
        import torch

        from convnp.interop.torch import to_torch

        super().__init__(name, batch_size, seed)
        torch.set_num_threads(os.cpu_count() or 1)
        self.torch = torch
        self.net = to_torch(self.model)
        recipe_loss = type(self.loss).__name__
        if recipe_loss == "SquaredErrorLoss":

            def loss_fn(y, t):  # 1/2 Σ (y - t)², averaged over the batch: SquaredErrorLoss
                target = torch.nn.functional.one_hot(t, y.shape[1]).to(y.dtype)
                return 0.5 * ((y - target) ** 2).sum() / len(y)
        else:
            loss_fn = torch.nn.functional.cross_entropy
        self.loss_fn = loss_fn
        config = self.optimizer.config()
        if type(self.optimizer).__name__ == "SGD":
            self.torch_optimizer = torch.optim.SGD(
                self.net.parameters(), lr=config["lr"], momentum=config["momentum"]
            )
        else:
            self.torch_optimizer = torch.optim.Adam(self.net.parameters(), lr=config["lr"])
        self.model = None  # free convnp's copy: RSS should be PyTorch's own
        self.optimizer = None

    def train(self, steps: int) -> float:
        torch = self.torch
        count = 0
        started = time.perf_counter()
        for _ in range(steps):
            x, t = next(self.batches)
            self.torch_optimizer.zero_grad(set_to_none=True)
            y = self.net(torch.from_numpy(x))
            self.loss_fn(y, torch.from_numpy(t)).backward()
            self.torch_optimizer.step()
            count += len(x)
        return count / (time.perf_counter() - started)

    def infer(self) -> float:
        torch = self.torch
        self.net.eval()
        with torch.no_grad():
            started = time.perf_counter()
            self.net(torch.from_numpy(self.test_x))
            seconds = time.perf_counter() - started
        self.net.train()
        return len(self.test_x) / seconds


def _worker(framework: str, name: str, batch_size: int, seed: int, conn: Any) -> None:
    from convnp.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # as the convnp command does; applied to both frameworks alike
    runner_class = _ConvnpRunner if framework == "convnp" else _TorchRunner
    runner = runner_class(name, batch_size, seed)
    while True:
        command, argument = conn.recv()
        if command == "stop":
            conn.send(None)
            return
        if command == "train":
            conn.send(runner.train(argument))
        elif command == "infer":
            conn.send(runner.infer())
        elif command == "profile":
            conn.send(runner.profile())
        elif command == "rss":
            conn.send(_peak_rss_mb())


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def compare(name: str, windows: int, steps: int, seed: int, with_torch: bool) -> dict[str, Any]:
    """Drive the convnp and PyTorch workers in turns and collect their figures."""
    context = mp.get_context("spawn")
    frameworks = ["convnp", "torch"] if with_torch else ["convnp"]
    batch_size = MODELS[name]
    workers = {}
    for framework in frameworks:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(framework, name, batch_size, seed, child))
        process.start()
        workers[framework] = (process, parent)

    def ask(framework: str, command: str, argument: Any = None) -> Any:
        _, conn = workers[framework]
        conn.send((command, argument))
        return conn.recv()

    for framework in frameworks:  # warm-up: caches, BLAS threads, allocator
        ask(framework, "train", max(steps // 2, 2))
        ask(framework, "infer")
    result: dict[str, Any] = {"model": name, "batch_size": batch_size}
    train_rates: dict[str, list[float]] = {f: [] for f in frameworks}
    infer_rates: dict[str, list[float]] = {f: [] for f in frameworks}
    for _ in range(windows):
        for framework in frameworks:  # A, B, A, B ...
            train_rates[framework].append(ask(framework, "train", steps))
            infer_rates[framework].append(ask(framework, "infer"))
    for framework in frameworks:
        result[framework] = {
            "train_images_per_s": statistics.median(train_rates[framework]),
            "infer_images_per_s": statistics.median(infer_rates[framework]),
            "peak_rss_mb": ask(framework, "rss"),
            "train_windows": train_rates[framework],
        }
    result["convnp"]["layers"] = ask("convnp", "profile")
    for framework in frameworks:
        process, conn = workers[framework]
        ask(framework, "stop")
        process.join()
    if with_torch:
        for key in ("train_images_per_s", "infer_images_per_s", "peak_rss_mb"):
            result[f"ratio_{key}"] = result["convnp"][key] / result["torch"][key]
    return result


def scaling(seed: int) -> dict[str, Any]:
    """convnp ``modern``: images/s and peak NumPy memory vs batch size and vs image size."""
    from convnp.app import zoo
    from convnp.losses import CrossEntropyLoss
    from convnp.optim import Adam
    from convnp.train import train_step

    def measure(batch: int, side: int) -> dict[str, float]:
        model = zoo.get_recipe("modern").build((1, side, side), rng=np.random.default_rng(seed))
        loss, optimizer = CrossEntropyLoss(), Adam(model.parameters())
        rng = np.random.default_rng(seed)
        x = rng.random((batch, 1, side, side), dtype=np.float32)
        t = rng.integers(0, 10, batch)
        steps = max(2, min(50, 2048 // batch))
        tracemalloc.start()
        for step in range(steps + 1):
            if step == 1:
                started = time.perf_counter()
            train_step(model, loss, optimizer, x, t)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {
            "batch_size": batch,
            "image_size": side,
            "train_images_per_s": steps * batch / seconds,
            "peak_numpy_mb": peak / 2**20,
        }

    return {
        "batch_size": [measure(batch, 28) for batch in (1, 8, 32, 128, 512)],
        "image_size": [measure(32, side) for side in (28, 56, 112)],
    }


def import_seconds() -> float:
    """Wall time of ``python -c "import convnp"`` in a fresh interpreter (best of 5).

    An untimed first run writes the bytecode cache, as ``pip install`` or any first import
    does; with PYTHONDONTWRITEBYTECODE set (some CI images) every import would recompile
    convnp's sources (+60 ms here), which no installed user sees.
    """
    import subprocess

    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, "-c", "import convnp"]
    subprocess.run(command, check=True, env=env)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        times.append(time.perf_counter() - started)
    return min(times)


def _print_report(report: dict[str, Any]) -> None:
    print(f"\nmachine: {report['machine']}")
    print(f"import convnp: {report['import_seconds']:.3f} s (fresh interpreter, incl. startup)")
    columns = ("train img/s", "infer img/s", "peak RSS MB")
    print(f"{'model':8} {'batch':>5} {'':8} " + " ".join(f"{c:>12}" for c in columns))
    for result in report["models"]:
        for framework in ("convnp", "torch"):
            if framework not in result:
                continue
            figures = result[framework]
            print(
                f"{result['model']:8} {result['batch_size']:>5} {framework:8} "
                f"{figures['train_images_per_s']:>12.0f} {figures['infer_images_per_s']:>12.0f} "
                f"{figures['peak_rss_mb']:>12.0f}"
            )
        if "ratio_train_images_per_s" in result:
            print(
                f"{'':8} {'':>5} {'ratio':8} {result['ratio_train_images_per_s']:>12.2f} "
                f"{result['ratio_infer_images_per_s']:>12.2f} {result['ratio_peak_rss_mb']:>12.2f}"
            )
    for result in report["models"]:
        print(f"\nconvnp per-layer time, {result['model']} (batch {result['batch_size']}):")
        for row in result["convnp"]["layers"]:
            print(
                f"  {row['layer'][:58]:58} fwd {row['forward_ms']:7.2f} ms  "
                f"bwd {row['backward_ms']:7.2f} ms"
            )
    if "scaling" in report:
        print("\nscaling (convnp, modern): batch size -> train img/s, peak NumPy MB")
        for row in report["scaling"]["batch_size"]:
            print(
                f"  batch {row['batch_size']:4d}: {row['train_images_per_s']:8.0f} img/s "
                f"{row['peak_numpy_mb']:8.1f} MB"
            )
        print("scaling (convnp, modern, batch 32): image size -> train img/s, pixels/s")
        for row in report["scaling"]["image_size"]:
            pixels = row["train_images_per_s"] * row["image_size"] ** 2
            print(
                f"  {row['image_size']:3d}x{row['image_size']:<3d}: "
                f"{row['train_images_per_s']:8.0f} img/s {pixels / 1e6:8.2f} Mpixel/s"
            )


def _distributed_module() -> Any:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import distributed

    return distributed


def _mpi_section(args: argparse.Namespace) -> dict[str, Any]:
    """convnp on MPI ranks vs threads vs PyTorch and DDP; see benchmarks/distributed.py."""
    print("MPI data parallelism ...", flush=True)
    models = {name: MODELS[name] for name in args.models}
    data = "fashion-mnist" if "fashion" in _dataset().name else "mnist5k"
    tta = {"target": args.tta_target, "epochs": args.tta_epochs, "data": data}
    return _distributed_module().run(
        models, args.steps, args.windows, tta if args.tta_target else None
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--windows", type=int, default=5, help="timed windows per framework")
    parser.add_argument("--steps", type=int, default=20, help="training steps per window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="convnp only")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument(
        "--json",
        default="runs/benchmarks/results.json",
        help="output file (default under the ignored runs/; benchmarks/results.json is the "
        "committed record)",
    )
    parser.add_argument("--mpi", action="store_true", help="MPI section (distributed.py)")
    parser.add_argument("--tta-target", type=float, default=0.93,
                        help="--mpi: time-to-accuracy target for fashion (0 skips)")  # fmt: skip
    parser.add_argument("--tta-epochs", type=int, help="--mpi: fashion epochs (default recipe)")
    parser.add_argument(
        "--memory", action="store_true", help="then benchmarks/memory.py (real image sizes)"
    )
    args = parser.parse_args(argv)

    with_torch = not args.no_torch and _torch_available()
    if not with_torch and not args.no_torch:
        print("note: PyTorch is not installed; running convnp alone")
    import convnp

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "convnp": convnp.__version__,
    }
    if with_torch:
        import torch

        versions["torch"] = torch.__version__
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "models": [],
        "import_seconds": import_seconds(),
    }
    for name in args.models:
        print(f"benchmarking {name} ...", flush=True)
        report["models"].append(compare(name, args.windows, args.steps, args.seed, with_torch))
    if not args.no_scaling:
        print("scaling ...", flush=True)
        report["scaling"] = scaling(args.seed)
    if args.mpi:
        report["mpi"] = _mpi_section(args)
    _print_report(report)
    if args.mpi:
        _distributed_module().print_report(report["mpi"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as stream:
        json.dump(report, stream, indent=2)
    print(f"\nresults written to {args.json}")
    if args.memory:
        _memory_section(with_torch)
    return 0


def _memory_section(with_torch: bool) -> None:
    """VGG-style network at 32-224 px: speed, peak RSS and memory curves (memory.py)."""
    import memory  # benchmarks/memory.py, next to this script

    print("\nmemory at real image sizes (benchmarks/memory.py) ...", flush=True)
    memory.main([] if with_torch else ["--no-torch"])


if __name__ == "__main__":
    sys.exit(main())
