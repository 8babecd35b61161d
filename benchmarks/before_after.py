"""Two convnp source trees side by side: training and inference images/s, before and after.

    python benchmarks/before_after.py --before /path/to/old/checkout
    python benchmarks/before_after.py --before OLD --after NEW --models bouvrie --rounds 7

Each tree runs in its own worker process (its ``src`` first on ``sys.path``) through that
tree's own ``benchmarks/run.py`` worker, so each side trains (``train_step`` as its ``fit``
does) and infers (batch 1000, as its CLI does) the way its own benchmark measures it, with
its own allocator setting. Both workers build the same model from the same seed and read the
same batches, and they are driven in turns, before, after, before, after, ..., so both see
the same machine conditions. Per model and round: one training window (``--steps`` steps)
and ``--infer-repeats`` inference passes per tree (their median); the table gives the
median over rounds and the after/before ratio of the medians, and the per-round ratios show
the spread. Figures also go to a JSON file (default ``runs/before_after.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODELS = {"bouvrie": 50, "lenet5": 64, "modern": 128}  # name -> training batch (run.py's)


# -- the worker side ------------------------------------------------------------------------
class _LineConnection:
    """The ``recv``/``send`` of a multiprocessing connection over two file objects, one JSON
    document per line (run.py's worker only needs these two methods)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader, self.writer = reader, writer

    def recv(self) -> Any:
        line = self.reader.readline()
        if not line:
            return ("stop", None)  # the driver has gone
        return tuple(json.loads(line))

    def send(self, value: Any) -> None:
        self.writer.write(json.dumps(value) + "\n")
        self.writer.flush()


def _serve(tree: Path, name: str, batch_size: int, seed: int) -> None:
    """Run ``tree``'s benchmark worker for one model on this process's stdin/stdout."""
    sys.path.insert(0, str(tree / "src"))
    spec = importlib.util.spec_from_file_location("tree_benchmark", tree / "benchmarks/run.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"before_after: cannot load {tree / 'benchmarks/run.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the worker's own prints (dataset notes) must not corrupt the protocol
    sys.stdout = sys.stderr
    module._worker("convnp", name, batch_size, seed, _LineConnection(sys.stdin, protocol))


# -- the driver side ------------------------------------------------------------------------
class _Worker:
    def __init__(self, tree: Path, name: str, batch_size: int, seed: int) -> None:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            str(tree),
            "--models",
            name,
            "--seed",
            str(seed),
        ]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(tree / "src")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.name, self.batch_size = name, batch_size

    def ask(self, command: str, argument: Any = None) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps([command, argument]) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"before_after: the worker for {self.name} exited (see stderr)")
        return json.loads(line)

    def stop(self) -> None:
        self.ask("stop")
        self.process.wait()


def compare(
    name: str, trees: dict[str, Path], rounds: int, steps: int, infer_repeats: int, seed: int
) -> dict[str, Any]:
    """Drive one worker per tree in turns; the figures of every round."""
    workers = {label: _Worker(tree, name, MODELS[name], seed) for label, tree in trees.items()}
    try:
        for worker in workers.values():  # warm-up: caches, BLAS threads, allocator
            worker.ask("train", max(steps // 2, 2))
            worker.ask("infer")
        train: dict[str, list[float]] = {label: [] for label in trees}
        infer: dict[str, list[float]] = {label: [] for label in trees}
        for round_ in range(rounds):
            order = list(workers) if round_ % 2 == 0 else list(reversed(workers))
            for label in order:  # A, B, B, A, A, B ...: neither side always goes first
                train[label].append(workers[label].ask("train", steps))
                passes = [workers[label].ask("infer") for _ in range(infer_repeats)]
                infer[label].append(statistics.median(passes))
    finally:
        for worker in workers.values():
            worker.stop()
    return {"model": name, "batch_size": MODELS[name], "train": train, "infer": infer}


def _ratios(result: dict[str, Any], kind: str) -> list[float]:
    before, after = result[kind]["before"], result[kind]["after"]
    return [a / b for a, b in zip(after, before)]


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'model':<9} {'what':<22} {'before img/s':>13} {'after img/s':>12} {'ratio':>6}"
        "  per-round ratios"
    )
    for result in results:
        _print_row(result, "train", f"train batch {result['batch_size']}")
        _print_row(result, "infer", "infer batch 1000")


def _print_row(result: dict[str, Any], kind: str, label: str) -> None:
    before = statistics.median(result[kind]["before"])
    after = statistics.median(result[kind]["after"])
    rounds = " ".join(f"{r:.2f}" for r in _ratios(result, kind))
    print(
        f"{result['model']:<9} {label:<22} {before:>13.0f} {after:>12.0f} "
        f"{after / before:>6.2f}  {rounds}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout of the old tree")
    parser.add_argument(
        "--after", type=Path, default=HERE.parent, help="checkout of the new tree (this one)"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5, help="turns per tree (default 5)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per window")
    parser.add_argument("--infer-repeats", type=int, default=3, help="inference passes a round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=HERE.parent / "runs" / "before_after.json")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the worker side
    args = parser.parse_args(argv)
    if args.serve is not None:
        _serve(args.serve.resolve(), args.models[0], MODELS[args.models[0]], args.seed)
        return 0
    if args.before is None:
        parser.error("--before PATH is required")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for label, tree in trees.items():
        if not (tree / "benchmarks" / "run.py").is_file() or not (tree / "src").is_dir():
            parser.error(f"--{label} {tree}: not a convnp checkout (no src/ or benchmarks/run.py)")
    started = time.perf_counter()
    results = [
        compare(name, trees, args.rounds, args.steps, args.infer_repeats, args.seed)
        for name in args.models
    ]
    print_table(results)
    print(f"({args.rounds} rounds, {time.perf_counter() - started:.0f} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"trees": {k: str(v) for k, v in trees.items()}, "results": results}
    temporary = args.json.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    temporary.replace(args.json)  # atomic: never a half-written file
    return 0


if __name__ == "__main__":
    sys.exit(main())
