"""Data-parallel training on MPI ranks against PyTorch (``python benchmarks/run.py --mpi``).

Configurations, for bouvrie (batch 50), lenet5 (64) and modern (128), P = the cores:

    convnp P=1        one MPI rank, one BLAS thread
    convnp P=cores    one rank per core, one BLAS thread each (what `convnp train` runs)
    convnp threads    one process, BLAS threads on every core (the threaded training step,
                      BatchSplitter, was removed after results-mpi.json: see README)
    torch             PyTorch's default single process (threads = cores)
    torch DDP         DistributedDataParallel on CPU, gloo, one process per core, 1 thread

Each configuration is a fresh job that trains on the same Fashion-MNIST batches (global
batch = the model's batch; ranks take slices), warms up, then times ``windows`` windows of
about ``--seconds`` (1 s; at least ``steps`` steps; the ranks start each window
together). The configurations run in turns, and the whole round twice, so all see the
same machine conditions; the report gives the median of the rounds and their spread.
Also measured: convnp's time inside collectives per step (includes waiting for the
slowest rank), peak RSS per rank, Allreduce time against message size, a time-to-accuracy
run of ``convnp train``, and a projection to many machines.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = ("convnp P=1", "convnp P=cores", "convnp threads", "torch", "torch DDP")
ALLREDUCE_SIZES = (1_000, 10_000, 100_000, 1_000_000, 4_000_000)  # float32 values
# A 10 GbE cluster for the projection: per-message latency α (MPI over TCP, typical) and
# bandwidth B (line rate less protocol overhead).
CLUSTER_ALPHA_S = 30e-6
CLUSTER_BANDWIDTH_BPS = 1.1e9
CHECKPOINT = "checkpoint.safetensors"  # convnp.io.CHECKPOINT_NAME, in a run folder


def _cores() -> int:
    from convnp.runtime.parallel import available_cores

    return available_cores()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers (one per configuration and model; under mpiexec for the multi-rank ones) ----
def _convnp_worker(name: str, batch: int, steps: int, windows: int, seconds: float) -> dict:
    from convnp import train
    from convnp.runtime import distributed

    sys.path.insert(0, str(HERE))
    from run import _ConvnpRunner

    runner = _ConvnpRunner(name, batch, seed=0)
    comm = distributed.Communicator() if distributed.launched_by_mpi() else None
    if comm is not None:
        comm.start(runner.model, runner.optimizer, runner.loader)

    def step() -> None:
        x, t = next(runner.batches)
        train.train_step(runner.model, runner.loss, runner.optimizer, x, t, comm=comm)

    return _timed(step, batch, steps, windows, comm, seconds)


def _timed(step: Any, batch: int, steps: int, windows: int, comm: Any, seconds: float) -> dict:
    """Images/s over ``windows`` windows of at least ``steps`` steps and about ``seconds``
    seconds each (the ranks agree on the count: every step is a collective), after an
    untimed window of the same length. Windows of a few steps (10 steps of bouvrie last 30
    ms) measured mostly start-up effects and scheduler jitter: ratios moved 2x between runs."""
    started = time.perf_counter()
    for _ in range(max(steps // 2, 3)):
        step()
    per_step = (time.perf_counter() - started) / max(steps // 2, 3)
    if comm is not None:
        per_step = max(comm.comm.allgather(per_step))
    steps = max(steps, math.ceil(seconds / per_step))
    for _ in range(steps):  # warm-up window
        step()
    rates, comm_seconds = [], 0.0
    for _ in range(windows):
        if comm is not None:
            comm.comm.Barrier()
            before = comm.seconds_communicating
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if comm is not None:
            comm.comm.Barrier()
            comm_seconds += comm.seconds_communicating - before
        rates.append(batch * steps / (time.perf_counter() - started))
    rss = _rss_mb() if comm is None else max(comm.comm.allgather(_rss_mb()))
    return {
        "images_per_s": statistics.median(rates),
        "windows": rates,
        "steps_per_window": steps,
        "comm_ms_per_step": 1e3 * comm_seconds / (steps * windows) if comm else 0.0,
        "peak_rss_mb_per_rank": rss,
    }


def _torch_worker(
    name: str, batch: int, steps: int, windows: int, seconds: float, ddp: bool
) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from run import _TorchRunner

    runner = _TorchRunner(name, batch, seed=0)  # threads = cores, as PyTorch's default
    rank, size = int(os.environ.get("PMI_RANK", 0)), int(os.environ.get("PMI_SIZE", 1))
    net = runner.net
    if ddp:
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{os.environ['DDP_INIT_FILE']}",
                                rank=rank, world_size=size)  # fmt: skip
        net = torch.nn.parallel.DistributedDataParallel(net)  # same parameters: optimizer kept
    part = slice(batch * rank // size, batch * (rank + 1) // size)

    def step() -> None:
        x, t = next(runner.batches)
        runner.torch_optimizer.zero_grad(set_to_none=True)
        y = net(torch.from_numpy(x[part]))
        runner.loss_fn(y, torch.from_numpy(t[part])).backward()
        runner.torch_optimizer.step()

    class _Barrier:  # the few calls _timed makes on an MPI communicator, through gloo
        seconds_communicating = 0.0

        class comm:  # noqa: N801
            @staticmethod
            def Barrier() -> None:  # noqa: N802
                dist.barrier()

            @staticmethod
            def allgather(value: float) -> list[float]:
                values = [None] * size
                dist.all_gather_object(values, value)
                return values

    result = _timed(step, batch, steps, windows, _Barrier() if ddp else None, seconds)
    result["comm_ms_per_step"] = None  # not separable inside DDP's backward hooks
    if ddp:  # gloo's teardown can wait forever for a peer that already left: skip it
        dist.barrier()
        if rank == 0:
            print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)
    return result


def _allreduce_worker() -> dict:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    result = {}
    for size in ALLREDUCE_SIZES:
        buffer = np.ones(size, dtype=np.float32)
        times = []
        for _ in range(30):
            comm.Barrier()
            started = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            times.append(time.perf_counter() - started)
        result[str(size)] = statistics.median(times[5:])
    return result if comm.Get_rank() == 0 else {}


def worker_main(argv: list[str]) -> int:
    from convnp.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # as the convnp command does (run.py too); for both frameworks alike
    kind, *rest = argv
    if kind == "allreduce":
        result = _allreduce_worker()
    else:
        name, batch, steps, windows = rest[0], int(rest[1]), int(rest[2]), int(rest[3])
        seconds = float(rest[4])
        if kind in ("convnp", "convnp-threads"):
            result = _convnp_worker(name, batch, steps, windows, seconds)
        else:
            result = _torch_worker(name, batch, steps, windows, seconds, kind == "torch-ddp")
    if result:
        print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- driver ------------------------------------------------------------------------------
def _run_job(command: list[str], env: dict[str, str], timeout: float = 600) -> dict:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise RuntimeError(f"{' '.join(command)}: timed out") from None
    for line in stdout.splitlines():
        if line.startswith("RESULT "):  # the first object: another rank may share the line
            return json.JSONDecoder().raw_decode(line[len("RESULT ") :])[0]
    raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")


def _command(
    config: str, name: str, batch: int, steps: int, windows: int, seconds: float
) -> tuple[list, dict]:
    from convnp.runtime.distributed import find_mpiexec

    cores = _cores()
    script = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    args = [name, str(batch), str(steps), str(windows), str(seconds)]
    one_thread = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
    if config == "convnp threads":
        return [*script, "convnp-threads", *args], env
    if config == "torch":
        return [*script, "torch", *args], env
    procs = 1 if config == "convnp P=1" else cores
    kind = "torch-ddp" if config == "torch DDP" else "convnp"
    env.update(one_thread)
    env["DDP_INIT_FILE"] = tempfile.mktemp(prefix="convnp-ddp-")
    return [find_mpiexec(), "-n", str(procs), *script, kind, *args], env


def throughput(
    models: dict[str, int], steps: int, windows: int, seconds: float = 1.0, rounds: int = 2
) -> dict:
    """Every configuration for every model, in turns, ``rounds`` times."""
    results: dict[str, dict[str, list[dict]]] = {m: {c: [] for c in CONFIGS} for m in models}
    for round_ in range(rounds):
        for name, batch in models.items():
            for config in CONFIGS:
                print(f"  round {round_ + 1}: {name} {config} ...", flush=True)
                command, env = _command(config, name, batch, steps, windows, seconds)
                try:
                    results[name][config].append(_run_job(command, env))
                except RuntimeError as error:  # reported, and the other figures still come
                    print(f"    failed: {str(error)[-500:]}", flush=True)
    return results


def allreduce_costs() -> dict[str, float]:
    from convnp.runtime.distributed import find_mpiexec

    command = [find_mpiexec(), "-n", str(_cores()), sys.executable, str(Path(__file__).resolve()),
               "--worker", "allreduce"]  # fmt: skip
    return _run_job(command, dict(os.environ))


def time_to_accuracy(target: float, procs: int, epochs: int | None, data: str) -> dict:
    """Wall time from launching ``convnp train --model fashion`` to the end of the first
    epoch whose model reaches ``target`` accuracy on the **test** set.

    ``convnp train`` evaluates only its validation split during training (the test set is
    kept for one evaluation at the end), so the run is left untouched: each epoch's
    checkpoint is copied aside the moment its history row appears (a 0.2 s poll; the
    checkpoint is written before the history), and after the run every copy is scored on
    the test set with ``convnp evaluate``, which the timing does not include."""
    out = Path(tempfile.mkdtemp(prefix="convnp-tta-"))
    run_dir, snapshots = out / "run", out / "epochs"
    snapshots.mkdir()
    command = [sys.executable, "-m", "convnp", "train", "--model", "fashion", "--data", data,
               "--procs", str(procs), "--out", str(run_dir), "--quiet"]  # fmt: skip
    if epochs:
        command += ["--epochs", str(epochs)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    ends: dict[int, float] = {}
    try:
        while True:
            finished = process.poll() is not None
            history = _read_history(run_dir / "history.json")
            for row in history[len(ends) :]:
                ends[row["epoch"]] = time.monotonic() - started
                shutil.copy(run_dir / CHECKPOINT, snapshots / f"epoch-{row['epoch']}-{CHECKPOINT}")
            if finished:
                break
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if process.returncode:
        raise RuntimeError(f"convnp train failed: {process.stderr.read()[-2000:]}")
    per_epoch = []
    for epoch, seconds in sorted(ends.items()):
        accuracy = _test_accuracy(snapshots / f"epoch-{epoch}-{CHECKPOINT}")
        per_epoch.append((epoch, round(seconds, 1), accuracy))
    reached = [row for row in per_epoch if row[2] >= target]
    shutil.rmtree(out, ignore_errors=True)
    return {"procs": procs, "target": target, "reached": bool(reached),
            "seconds": reached[0][1] if reached else None,
            "best_accuracy": max(row[2] for row in per_epoch), "epochs": per_epoch,
            "total_seconds": round(time.monotonic() - started, 1)}  # fmt: skip


def _read_history(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return []


def _test_accuracy(checkpoint: Path) -> float:
    result = subprocess.run([sys.executable, "-m", "convnp", "evaluate", str(checkpoint)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return float(re.search(r"test set: accuracy (\S+),", result.stdout).group(1))


def projection(costs: dict[str, float], models: dict[str, int], measured: dict) -> dict:
    """Ring-allreduce α-β model: t(P, n bytes) = 2(P−1)·α + 2·(P−1)/P · n/B, fitted here (2
    ranks on shared memory) and stated for a 10 GbE cluster, against compute per step."""
    sizes = np.array([int(k) for k in costs], dtype=float) * 4
    seconds = np.array(list(costs.values()))
    beta, alpha = np.polyfit(sizes, seconds, 1)
    from convnp.app import zoo

    rows = {}
    for name, batch in models.items():
        parameters = zoo.get_recipe(name).build().num_parameters()
        one_rank = statistics.median(r["images_per_s"] for r in measured[name]["convnp P=1"])
        compute_per_sample = 1 / one_rank
        row = {"parameters": parameters}
        for ranks in (8, 64):
            comm = (
                2 * (ranks - 1) * CLUSTER_ALPHA_S
                + 2
                * (ranks - 1)
                / ranks
                * (
                    parameters * 4 + batch * 10 * 4  # gradients + the gathered outputs
                )
                / CLUSTER_BANDWIDTH_BPS
            )
            for scaling, per_rank in (("strong", batch / ranks), ("weak", batch)):
                compute = per_rank * compute_per_sample
                row[f"P={ranks} {scaling}"] = {
                    "samples_per_rank": per_rank,
                    "compute_ms": 1e3 * compute,
                    "allreduce_ms": 1e3 * comm,
                    "efficiency": compute / (compute + comm),
                }
        rows[name] = row
    return {"fit_shared_memory": {"alpha_us": 1e6 * alpha, "beta_ns_per_byte": 1e9 * beta},
            "cluster": {"alpha_us": 1e6 * CLUSTER_ALPHA_S,
                        "bandwidth_GB_s": CLUSTER_BANDWIDTH_BPS / 1e9},
            "models": rows}  # fmt: skip


def run(
    models: dict[str, int], steps: int, windows: int, tta: dict | None, seconds: float = 1.0
) -> dict:
    """The whole section: throughput, Allreduce costs, projection, time to accuracy (no
    models: time to accuracy alone)."""
    report: dict[str, Any] = {"cores": _cores()}
    if models:
        report["throughput"] = throughput(models, steps, windows, seconds)
        report["allreduce_s"] = allreduce_costs()
        report["projection"] = projection(report["allreduce_s"], models, report["throughput"])
    if tta:
        report["time_to_accuracy"] = [
            time_to_accuracy(tta["target"], procs, tta.get("epochs"), tta["data"])
            for procs in tta.get("procs") or (_cores(), 1)
        ]
    return report


def print_report(report: dict) -> None:
    if "throughput" in report:
        _print_throughput(report)
    if "allreduce_s" in report:
        _print_allreduce(report)
    for run in report.get("time_to_accuracy", []):
        text = (f"{run['seconds']:.0f} s" if run["reached"]
                else f"not reached (best {run['best_accuracy']:.4f})")  # fmt: skip
        print(f"\ntime to {run['target']:.1%} test accuracy, fashion, {run['procs']} "
              f"process(es): {text} (whole run {run['total_seconds']:.0f} s); "
              f"per epoch (epoch, s, test acc): {run['epochs']}")  # fmt: skip


def _print_throughput(report: dict) -> None:
    cores = report["cores"]
    print(f"\nMPI data parallelism ({cores} cores; median of rounds, spread min-max):")
    print(f"{'model':8} {'configuration':16} {'img/s':>8} {'spread':>13} {'vs torch':>8} "
          f"{'vs DDP':>7} {'comm ms/step':>12} {'RSS MB/rank':>11}")  # fmt: skip
    for name, configs in report.get("throughput", {}).items():
        medians = {c: statistics.median(r["images_per_s"] for r in runs)
                   for c, runs in configs.items()}  # fmt: skip
        for config, runs in configs.items():
            rates = [r["images_per_s"] for r in runs]
            comm = [r["comm_ms_per_step"] for r in runs if r["comm_ms_per_step"] is not None]
            label = config.replace("cores", str(cores))
            print(f"{name:8} {label:16} {medians[config]:8.0f} "
                  f"{min(rates):6.0f}-{max(rates):<6.0f} "
                  f"{medians[config] / medians['torch']:8.2f} "
                  f"{medians[config] / medians['torch DDP']:7.2f} "
                  f"{statistics.median(comm) if comm else float('nan'):12.2f} "
                  f"{max(r['peak_rss_mb_per_rank'] for r in runs):11.0f}")  # fmt: skip
        efficiency = medians["convnp P=cores"] / (cores * medians["convnp P=1"])
        print(f"{'':8} scaling efficiency at P={cores}: {efficiency:.2f}")


def _print_allreduce(report: dict) -> None:
    cores = report["cores"]
    print("\nAllreduce (float32, in place) on this machine, "
          f"{cores} ranks:")  # fmt: skip
    for size, seconds in report["allreduce_s"].items():
        print(f"  {int(size):>9,} values ({int(size) * 4 / 1e6:6.2f} MB): {1e6 * seconds:8.1f} µs")
    plan = report["projection"]
    fit = plan["fit_shared_memory"]
    print(f"  fitted t = α + β·bytes: α = {fit['alpha_us']:.1f} µs, β = "
          f"{fit['beta_ns_per_byte']:.3f} ns/byte")  # fmt: skip
    cluster = plan["cluster"]
    print(f"\nprojection, ring Allreduce on 10 GbE (α = {cluster['alpha_us']:.0f} µs, "
          f"B = {cluster['bandwidth_GB_s']:.2f} GB/s), compute from convnp P=1 here:")  # fmt: skip
    for name, row in plan["models"].items():
        print(f"  {name} ({row['parameters']:,} parameters):")
        for key, value in row.items():
            if key == "parameters":
                continue
            print(f"    {key:14} {value['samples_per_rank']:6.1f} samples/rank, compute "
                  f"{value['compute_ms']:7.2f} ms, allreduce {value['allreduce_ms']:6.2f} ms, "
                  f"efficiency {value['efficiency']:.2f}")  # fmt: skip


def main(argv: list[str]) -> int:
    """This section alone: ``python benchmarks/distributed.py [--seconds S] [--windows W]``."""
    import argparse

    parser = argparse.ArgumentParser(description="MPI section of benchmarks/run.py alone")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of a timed window")
    parser.add_argument("--models", nargs="+", choices=["bouvrie", "lenet5", "modern"],
                        default=["bouvrie", "lenet5", "modern"])  # fmt: skip
    parser.add_argument("--tta-target", type=float, default=0.0, help="0 skips")
    parser.add_argument("--tta-epochs", type=int)
    parser.add_argument("--tta-procs", type=int, nargs="+", help="default: all cores, then 1")
    parser.add_argument("--tta-only", action="store_true", help="skip the throughput part")
    parser.add_argument(
        "--json",
        default="runs/benchmarks/results-mpi.json",
        help="output file (benchmarks/results-mpi.json is the committed record)",
    )
    args = parser.parse_args(argv)
    tta = {"target": args.tta_target, "epochs": args.tta_epochs, "data": "fashion-mnist",
           "procs": args.tta_procs}  # fmt: skip
    batches = {"bouvrie": 50, "lenet5": 64, "modern": 128}
    models = {} if args.tta_only else {name: batches[name] for name in args.models}
    report = run(models, args.steps, args.windows, tta if args.tta_target else None, args.seconds)
    print_report(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
