"""Eval-mode inference with and without keeping what backward needs (issue 13).

Layers keep their backward caches in eval mode too (a network in eval mode back-propagates,
as in PyTorch); the inference paths run within ``no_grad()`` and must cost what eval-mode
inference cost before. Per built-in model, batch 1000 of the bundled digits, images/s
(median of the repeats):

* ``predict_in_blocks``: the CLI's and ``train.evaluate``'s path (blocks on every core);
* ``predict``: ``Sequential.predict``, one thread;
* ``eval forward, grad kept``: ``model.eval().forward(x)`` outside ``no_grad()``: every
  layer keeps its cache (and max pooling its argmax), ready for a backward;
* ``eval forward + input gradient``: that forward, then ``backward`` of a random dy down
  to ∂E/∂x (a saliency map).

``--before SRC`` also runs the first two with another convnp source tree (e.g. an exported
older commit's ``src``), alternating before/after processes for ``--rounds`` rounds, so the
two are measured under the same load. Run it on a quiet machine: on a shared one the
figures are noisy (say so when quoting them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("bouvrie", "lenet5", "modern")
BATCH = 1000


def _rate(run: Callable[[], Any], images: int, repeats: int) -> float:
    run()  # warm-up: workspaces, first touches
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return images / statistics.median(seconds)


def measure(models: list[str], batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """images/s per model and path, in this process (the convnp on sys.path)."""
    from convnp.app import zoo
    from convnp.data import load_dataset

    images = load_dataset("mnist5k").test_images[:batch].astype(np.float32) / 255
    x = images.reshape(len(images), 1, 28, 28)
    results = {}
    for name in models:
        model = zoo.get_recipe(name).build(rng=np.random.default_rng(0))
        results[name] = _inference(model, x, repeats)
        if hasattr(model, "no_grad"):  # backward after an eval-mode forward exists
            results[name].update(_with_grad_kept(model.eval(), x, repeats))
    return results


def _inference(model: Any, x: np.ndarray, repeats: int) -> dict[str, float]:
    from convnp.runtime.parallel import predict_in_blocks

    return {
        "predict_in_blocks": _rate(lambda: predict_in_blocks(model, x), len(x), repeats),
        "predict": _rate(lambda: model.predict(x), len(x), repeats),
    }


def _with_grad_kept(model: Any, x: np.ndarray, repeats: int) -> dict[str, float]:
    """Eval-mode forward outside no_grad(), alone and followed by backward to ∂E/∂x."""
    dy = np.ones((len(x), *model.forward(x[:1]).shape[1:]), np.float32)
    return {
        "eval_forward_grad_kept": _rate(lambda: model.forward(x), len(x), repeats),
        "eval_forward_input_gradient": _rate(
            lambda: (model.forward(x), model.backward(dy)), len(x), repeats
        ),
    }


def _child(source: str | None, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    environment = dict(os.environ)
    if source is not None:
        environment["PYTHONPATH"] = source
    command = [sys.executable, __file__, "--child", "--models", *args.models]
    command += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="another convnp source tree (its src folder)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.models, args.batch, args.repeats)))
        return 0
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"after": []}
    if args.before:
        runs["before"] = []
    for _ in range(args.rounds):  # interleaved: before, after, before, after...
        if args.before:
            runs["before"].append(_child(str(Path(args.before).resolve()), args))
        runs["after"].append(_child(None, args))
    report = {
        label: {
            model: {
                path: statistics.median(run[model][path] for run in rounds)
                for path in rounds[0][model]
            }
            for model in args.models
        }
        for label, rounds in runs.items()
    }
    print(f"images/s, batch {args.batch}, median of {args.repeats} repeats x {args.rounds} rounds")
    for model in args.models:
        for path, rate in report["after"][model].items():
            before = report.get("before", {}).get(model, {}).get(path)
            versus = f"  before {before:9.0f}  after/before {rate / before:5.2f}" if before else ""
            print(f"  {model:8} {path:30} {rate:9.0f}{versus}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": runs, "medians": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
