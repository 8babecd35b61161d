"""Data-parallel training on MPI ranks against PyTorch (``python benchmarks/run.py --mpi``).

Configurations, for bouvrie (batch 50), lenet5 (64) and modern (128), P = the cores:

    convnp P=1        one MPI rank, one BLAS thread
    convnp P=cores    one rank per core, one BLAS thread each (what `convnp train` runs)
    convnp balanced   the same with load balancing (`convnp train --balance`)
    convnp threads    one process, BLAS threads on every core (the threaded training step,
                      BatchSplitter, was removed after results-mpi.json: see README)
    torch             PyTorch's default single process (threads = cores)
    torch DDP         DistributedDataParallel on CPU, gloo, one process per core, 1 thread
    convnp P=1 slice  one rank at a rank's slice of the batch (batch / P), one BLAS thread
    convnp independent  P ranks each training a model of its own on batch / P, with no
                      communication (their windows start and end together)
    convnp P=cores weak  one rank per core, each on the model's batch: a global batch of
                      P·batch (weak scaling, the convention of DDP and Horovod figures)

convnp P=1 slice and convnp independent split the scaling efficiency of convnp P=cores
into three factors, each a ratio of throughputs within a round (their product is the
efficiency):

    batch split   (P=1 slice) / (P=1)            the per-step cost that does not shrink
                                                 with the batch (Python, small products)
    shared cores  (independent) / P·(P=1 slice)  ranks sharing caches, memory bandwidth
                                                 and, on a VM, the host's cores
    step sync     (P=cores) / (independent)      the Allreduce, waiting for the slowest
                                                 rank each step, slicing and packing

The efficiency above is strong scaling: the global batch stays the model's, as
``--batch-size`` means in ``convnp train``, so each of P ranks works on batch / P. The
weak-scaling efficiency, (P=cores weak) / P·(P=1), keeps each rank's batch at the
model's (P times the global batch; it lacks the batch split factor).

Each configuration is a job of its own that trains on Fashion-MNIST batches of the
model's size (but for the slice and weak ones, as said; ranks take slices of the global
batch). All the jobs of a model are started first and then driven in turns, one at a
time: each job times one window of about ``--seconds`` (1 s; at least ``steps`` steps;
its ranks start it together), then the next job times its window, and so on, for
``--windows`` rounds. A job waits between its windows blocked on a pipe, using no CPU,
so the timed job has the machine to itself, and every ratio is taken within one round,
from windows a few seconds apart: the machine's drift (30-40% here from one run to the
next) cancels. The report gives the median over rounds and the spread. Also measured:
convnp's time inside collectives per step (includes waiting for the slowest rank), peak
RSS and PSS per rank (PSS shares a page among the processes that map it: the machine's
memory per rank), Allreduce time against message size, a time-to-accuracy run of
``convnp train``, a projection to many machines, and (``--whole-runs R``) R rounds of
one training epoch per model, one process against ``mpiexec -n P`` in turns: wall time
and the largest process's peak memory.

``--slow-rank F`` emulates cores of uneven speed (a laptop's efficiency core, a VM's
core shared with another tenant): the last rank of every job of several ranks (convnp
P=cores, convnp balanced, convnp independent, convnp P=cores weak, torch DDP) spins, in
its network's first layer, F·τ for each sample it trains on, τ being convnp P=1's time
per sample (measured first, in its warm-up), as if its core ran at 1/(1 + F) of convnp's
speed. Every job's slow rank loses the same time per sample.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = (
    "convnp P=1", "convnp P=cores", "convnp balanced", "convnp threads", "torch", "torch DDP",
    "convnp P=1 slice", "convnp independent", "convnp P=cores weak",
)  # fmt: skip
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


# -- workers (one job per configuration and model; under mpiexec for the multi-rank ones) --
def _slow_core() -> Any:
    """``--slow-rank``: on the last of several ranks, a function that spins
    n·$BENCH_SLOW_SECONDS_PER_SAMPLE for n samples; None elsewhere (no hook at all)."""
    rank, size = int(os.environ.get("PMI_RANK", 0)), int(os.environ.get("PMI_SIZE", 1))
    per_sample = float(os.environ.get("BENCH_SLOW_SECONDS_PER_SAMPLE", 0))
    if size == 1 or rank != size - 1 or per_sample <= 0:
        return None

    def spin(samples: int) -> None:
        end = time.perf_counter() + per_sample * samples
        while time.perf_counter() < end:
            pass

    return spin


def _convnp_worker(name: str, batch: int, steps: int, seconds: float) -> None:
    from convnp import train
    from convnp.runtime import distributed

    sys.path.insert(0, str(HERE))
    from run import _ConvnpRunner

    independent = os.environ.get("BENCH_INDEPENDENT") == "1"
    ranks = int(os.environ.get("PMI_SIZE", 1))
    runner = _ConvnpRunner(name, batch // ranks if independent else batch, seed=0)
    balance = os.environ.get("BENCH_BALANCE") == "1"
    multi_rank = distributed.launched_by_mpi() and not independent
    comm = distributed.Communicator(balance=balance) if multi_rank else None
    if comm is not None:
        comm.start(runner.model, runner.optimizer, runner.loader)
    slow = _slow_core()
    if slow is not None:
        first, forward = runner.model[0], runner.model[0].forward

        def slowed_forward(x: np.ndarray) -> np.ndarray:
            slow(len(x))
            return forward(x)

        first.forward = slowed_forward

    def epochs() -> Any:  # as fit reads them: each rank its own slice of every batch
        while True:
            yield from runner.loader if comm is None else comm.batches(runner.loader)

    batches = epochs()

    def step() -> None:
        x, t = next(batches)
        train.train_step(runner.model, runner.loss, runner.optimizer, x, t, comm=comm)

    _serve(step, batch, steps, seconds, _World() if independent else comm)


class _World:
    """The two calls ``_serve`` makes on a communicator, for ranks that train alone: their
    windows start and end together and the window's images are all the ranks' together."""

    seconds_communicating = None

    def __init__(self) -> None:
        from mpi4py import MPI

        self.comm = MPI.COMM_WORLD


def _serve(step: Any, batch: int, steps: int, seconds: float, comm: Any) -> None:
    """Run windows when the driver says so, on this rank's command pipe: ``warm`` (choose
    the window's step count: at least ``steps`` and about ``seconds`` s; the ranks agree on
    it, as every step is a collective; then an untimed window, whose time per step it
    reports), ``window`` (a timed one), ``stop``. Rank 0 prints a line per command.
    Windows of a few steps (10 steps of bouvrie last 30 ms) measured mostly start-up
    effects and scheduler jitter."""
    rank = int(os.environ.get("PMI_RANK", 0))
    root = rank == 0
    with open(Path(os.environ["BENCH_CHANNEL"]) / f"rank-{rank}") as commands:
        for line in commands:
            command = line.strip()
            if command == "warm":
                started = time.perf_counter()
                for _ in range(max(steps // 2, 3)):
                    step()
                per_step = (time.perf_counter() - started) / max(steps // 2, 3)
                if comm is not None:
                    per_step = max(comm.comm.allgather(per_step))
                steps = max(steps, math.ceil(seconds / per_step))
                started = time.perf_counter()
                for _ in range(steps):
                    step()
                report = {
                    "steps": steps,
                    "seconds_per_step": (time.perf_counter() - started) / steps,
                }
            elif command == "window":
                if comm is not None:
                    comm.comm.Barrier()
                    before = comm.seconds_communicating
                started = time.perf_counter()
                for _ in range(steps):
                    step()
                if comm is not None:
                    comm.comm.Barrier()
                elapsed = time.perf_counter() - started
                report = {"images_per_s": batch * steps / elapsed}
                if comm is not None and comm.seconds_communicating is not None:
                    spent = comm.seconds_communicating - before
                    report["comm_ms_per_step"] = 1e3 * max(comm.comm.allgather(spent)) / steps
            elif command == "stop":
                memory = (_rss_mb(), _pss_mb())
                if comm is not None:
                    memory = tuple(max(values) for values in zip(*comm.comm.allgather(memory)))
                report = {
                    "global_batch": batch,
                    "peak_rss_mb_per_rank": memory[0],
                    "pss_mb_per_rank": memory[1],
                }
            else:
                raise ValueError(f"unknown command {command!r}")
            if root:
                print(f"{command.upper()} {json.dumps(report)}", flush=True)
            if command == "stop":
                return


def _pss_mb() -> float:
    """This process's proportional set size now: each page it maps counted divided by the
    number of processes mapping it (shared libraries, MPI's shared memory)."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _torch_worker(name: str, batch: int, steps: int, seconds: float, ddp: bool) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from run import _TorchRunner

    runner = _TorchRunner(name, batch, seed=0)  # threads = cores, as PyTorch's default
    rank, size = int(os.environ.get("PMI_RANK", 0)), int(os.environ.get("PMI_SIZE", 1))
    net = runner.net
    slow = _slow_core()
    if slow is not None:
        next(net.children()).register_forward_pre_hook(lambda _, inputs: slow(len(inputs[0])))
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

    class _Gloo:  # the few calls _serve makes on an MPI communicator, through gloo
        seconds_communicating = None  # not separable inside DDP's backward hooks

        class comm:  # noqa: N801
            @staticmethod
            def Barrier() -> None:  # noqa: N802
                dist.barrier()

            @staticmethod
            def allgather(value: Any) -> list[Any]:
                values = [None] * size
                dist.all_gather_object(values, value)
                return values

    _serve(step, batch, steps, seconds, _Gloo() if ddp else None)
    if ddp:  # gloo's teardown can wait forever for a peer that already left: skip it
        dist.barrier()
        sys.stdout.flush()
        os._exit(0)


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
        if result:
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    name, batch, steps, seconds = rest[0], int(rest[1]), int(rest[2]), float(rest[3])
    if kind == "convnp":
        _convnp_worker(name, batch, steps, seconds)
    else:
        _torch_worker(name, batch, steps, seconds, kind == "torch-ddp")
    return 0


# -- driver ------------------------------------------------------------------------------
class _Job:
    """One configuration's worker processes, driven line by line through a named pipe per
    rank (a rank blocked reading its pipe uses no CPU)."""

    def __init__(
        self, config: str, name: str, batch: int, steps: int, seconds: float, spin: float = 0.0
    ) -> None:
        self.config = config
        command, env, self.ranks = _command(config, name, batch, steps, seconds)
        env["BENCH_SLOW_SECONDS_PER_SAMPLE"] = str(spin)
        self.folder = Path(tempfile.mkdtemp(prefix="convnp-bench-"))
        for rank in range(self.ranks):
            os.mkfifo(self.folder / f"rank-{rank}")
        env["BENCH_CHANNEL"] = str(self.folder)
        env["DDP_INIT_FILE"] = str(self.folder / "ddp-init")
        self.stderr = open(self.folder / "stderr", "w+")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, env=env, start_new_session=True)  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.pipes: list[Any] = []
        for rank in range(self.ranks):  # opening a pipe waits for its reader: the rank's set-up
            self.pipes.append(self._open_when_read(self.folder / f"rank-{rank}"))

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _open_when_read(self, path: Path, timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while True:  # non-blocking open fails (ENXIO) until the rank opens its end
            try:
                return os.fdopen(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "w")
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self._failure("did not start")) from None
                time.sleep(0.05)

    def ask(self, command: str, timeout: float = 600) -> dict:
        """Send ``command`` to every rank; rank 0's answer."""
        for pipe in self.pipes:
            pipe.write(command + "\n")
            pipe.flush()
        deadline = time.monotonic() + timeout
        tag = command.upper() + " "
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise RuntimeError(self._failure(f"gave no answer to {command!r}"))
            if line.startswith(tag):  # the first object: another rank may share the line
                return json.JSONDecoder().raw_decode(line[len(tag) :])[0]

    def _failure(self, what: str) -> str:
        self.stderr.seek(0)
        return f"{self.config}: {what}:\n{self.stderr.read()[-2000:]}"

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


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
    config: str, name: str, batch: int, steps: int, seconds: float
) -> tuple[list, dict, int]:
    """The job's command line, environment and number of ranks."""
    from convnp.runtime.distributed import mpiexec_command

    cores = _cores()
    script = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    args = [name, str(batch), str(steps), str(seconds)]
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
    if config == "convnp threads":
        return [*script, "convnp", *args], env, 1
    if config == "torch":
        return [*script, "torch", *args], env, 1
    if config == "convnp P=1 slice":
        args[1] = str(batch // cores)
    if config == "convnp P=cores weak":
        args[1] = str(batch * cores)
    procs = 1 if config.startswith("convnp P=1") else cores
    env["BENCH_INDEPENDENT"] = "1" if config == "convnp independent" else "0"
    kind = "torch-ddp" if config == "torch DDP" else "convnp"
    env["BENCH_BALANCE"] = "1" if config == "convnp balanced" else "0"
    command, ranks_env = mpiexec_command([*script, kind, *args], procs, blas_threads=1)
    return command, dict(env, **ranks_env), procs


def throughput(
    models: dict[str, int], steps: int, windows: int, seconds: float = 1.0, slow: float = 0.0
) -> dict:
    """Every configuration of a model in turns, a window each, ``windows`` rounds; with
    ``slow``, the last rank of each multi-rank job is slowed (``--slow-rank``)."""
    assert CONFIGS[0] == "convnp P=1"  # it sets the slow rank's spin
    results: dict[str, dict[str, dict]] = {}
    for name, batch in models.items():
        print(f"  {name}: starting the jobs ...", flush=True)
        jobs = {}
        try:
            spin = 0.0
            for config in CONFIGS:  # one at a time: no set-up overlaps another's work
                jobs[config] = _Job(config, name, batch, steps, seconds, spin)
                warmed = jobs[config].ask("warm")
                if config == "convnp P=1":
                    spin = slow * warmed["seconds_per_step"] / batch
            rates: dict[str, list[dict]] = {config: [] for config in CONFIGS}
            for round_ in range(windows):
                order = CONFIGS[round_ % len(CONFIGS) :] + CONFIGS[: round_ % len(CONFIGS)]
                for config in order:  # rotated each round: no configuration always first
                    rates[config].append(jobs[config].ask("window"))
                print(f"  {name}: round {round_ + 1} of {windows} done", flush=True)
            results[name] = {
                config: {"windows": rates[config], **jobs[config].ask("stop")} for config in CONFIGS
            }
        except RuntimeError as error:  # reported, and the other models still come
            print(f"    failed: {str(error)[-800:]}", flush=True)
        finally:
            for job in jobs.values():
                job.close()
    return results


def allreduce_costs() -> dict[str, float]:
    from convnp.runtime.distributed import mpiexec_command

    script = [sys.executable, str(Path(__file__).resolve()), "--worker", "allreduce"]
    command, env = mpiexec_command(script, _cores())
    return _run_job(command, dict(os.environ, **env))


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


def whole_runs(models: list[str], rounds: int, data: str) -> dict:
    """One epoch of ``convnp train --model M --data DATA`` as one process (``--procs 1``)
    and as ``mpiexec -n P`` (P = cores, the issue's command), in turns (the order swapped
    each round), ``rounds`` times per model: the wall time from launch to exit, the peak
    RSS of the largest process, the test accuracy, and the largest difference between the
    two runs' weights. The peak is that of the largest process of the command's tree (the
    largest rank under mpiexec: a process's RUSAGE_CHILDREN peak covers the descendants its
    children reaped)."""
    from convnp import io
    from convnp.runtime.distributed import find_mpiexec

    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise FileNotFoundError("mpiexec not found: pip install 'convnp[mpi]'")
    procs = _cores()
    ranks = [mpiexec, "-n", str(procs), sys.executable]
    results: dict[str, dict] = {}
    for name in models:
        train = ["-m", "convnp", "train", "--model", name, "--data", data, "--epochs", "1",
                 "--quiet"]  # fmt: skip
        rows = []
        for round_ in range(rounds):
            out = Path(tempfile.mkdtemp(prefix="convnp-whole-run-"))
            commands = {
                "one process": [sys.executable, *train, "--procs", "1", "--out", str(out / "one")],
                "ranks": [*ranks, *train, "--out", str(out / "ranks")],
            }
            order = list(commands) if round_ % 2 == 0 else list(reversed(commands))
            row = {config: _timed_run(commands[config]) for config in order}
            weights = [io.load(out / folder / "model.safetensors").state_dict()
                       for folder in ("one", "ranks")]  # fmt: skip
            row["max_weight_difference"] = max(
                float(np.max(np.abs(weights[0][key] - weights[1][key]))) for key in weights[0]
            )
            shutil.rmtree(out, ignore_errors=True)
            rows.append(row)
            print(f"  {name}: whole run {round_ + 1} of {rounds} done", flush=True)
        results[name] = {"procs": procs, "rounds": rows}
    return results


# Runs a command, then prints its wall time and peak RSS (the largest of its processes, as
# RUSAGE_CHILDREN gives it). A process forked from a large one carries that one's size
# until it execs, and Linux counts that in its peak: hence this small process (no NumPy) in
# between, not the benchmark's driver (under pytest, the test run's 1 GB showed through).
_MEASURING_WRAPPER = """
import resource, subprocess, sys, time
started = time.monotonic()
code = subprocess.call(sys.argv[1:])
seconds = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"MEASURED {seconds} {peak}")
sys.exit(code)
"""


def _timed_run(command: list[str]) -> dict:
    """Wall seconds, peak RSS (MB) of the largest process, and the printed test accuracy."""
    wrapped = [sys.executable, "-c", _MEASURING_WRAPPER, *command]
    result = subprocess.run(wrapped, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}")
    seconds, peak_kb = re.search(r"MEASURED (\S+) (\d+)", result.stdout).groups()
    accuracy = float(re.search(r"test accuracy (\S+)", result.stdout).group(1))
    return {"wall_s": round(float(seconds), 2), "peak_rss_mb": round(int(peak_kb) / 1024, 1),
            "test_accuracy": accuracy}  # fmt: skip


def _read_history(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return []


def _test_accuracy(checkpoint: Path) -> float:
    result = subprocess.run([sys.executable, "-m", "convnp", "evaluate", str(checkpoint)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return float(re.search(r"test set: accuracy (\S+),", result.stdout).group(1))


def step_time_model(measured: dict, batch: int, cores: int) -> tuple[float, float]:
    """One rank's step time as t(n) = t0 + n·τ for n samples: (t0 s, τ s per sample), fitted
    from convnp P=1 at the model's batch and at a rank's slice (batch / cores) here, so a
    step's fixed cost (Python, small products) counts when the per-rank batch shrinks.
    A slice that is cheaper per sample than the whole batch (cache effects, modern) fits no
    fixed cost: t0 = 0, τ from the whole batch."""
    whole = batch / _median_rate(measured["convnp P=1"])
    part = batch // cores
    if part >= batch or "convnp P=1 slice" not in measured:
        return 0.0, whole / batch
    sliced = part / _median_rate(measured["convnp P=1 slice"])
    per_sample = max(whole - sliced, 0.0) / (batch - part)
    fixed = whole - batch * per_sample
    if fixed < 0:
        return 0.0, whole / batch
    return fixed, per_sample


def projection(costs: dict[str, float], models: dict[str, int], measured: dict, cores: int) -> dict:
    """Ring-allreduce α-β model: t(P, n bytes) = 2(P−1)·α + 2·(P−1)/P · n/B, fitted here (2
    ranks on shared memory) and stated for a 10 GbE cluster, against a rank's compute per
    step t(n) = t0 + n·τ (``step_time_model``), with no overlap of the two. P ranks take
    t(n) + Allreduce a step, n = batch / P (strong scaling) or the batch (weak); the
    efficiency is their images per second over P times one rank's at the batch."""
    sizes = np.array([int(k) for k in costs], dtype=float) * 4
    seconds = np.array(list(costs.values()))
    # weights 1/t: relative residuals, so the 16 MB point does not swamp the latency α
    beta, alpha = np.polyfit(sizes, seconds, 1, w=1 / seconds)
    from convnp.app import zoo

    rows = {}
    for name, batch in models.items():
        parameters = zoo.get_recipe(name).build().num_parameters()
        fixed, per_sample = step_time_model(measured[name], batch, cores)
        whole = fixed + batch * per_sample  # one rank's step at the model's batch
        row: dict[str, Any] = {
            "parameters": parameters,
            "step_model": {"fixed_ms": 1e3 * fixed, "per_sample_us": 1e6 * per_sample},
        }
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
                compute = fixed + per_rank * per_sample
                # images per second of the P ranks over P times one rank's at the batch
                efficiency = (per_rank / (compute + comm)) / (batch / whole)
                row[f"P={ranks} {scaling}"] = {
                    "samples_per_rank": per_rank,
                    "compute_ms": 1e3 * compute,
                    "allreduce_ms": 1e3 * comm,
                    "efficiency": efficiency,
                }
        rows[name] = row
    return {"fit_shared_memory": {"alpha_us": 1e6 * alpha, "beta_ns_per_byte": 1e9 * beta},
            "cluster": {"alpha_us": 1e6 * CLUSTER_ALPHA_S,
                        "bandwidth_GB_s": CLUSTER_BANDWIDTH_BPS / 1e9},
            "models": rows}  # fmt: skip


def run(
    models: dict[str, int],
    steps: int,
    windows: int,
    tta: dict | None,
    seconds: float = 1.0,
    slow: float = 0.0,
    whole_run_rounds: int = 0,
) -> dict:
    """The whole section: throughput, Allreduce costs, projection, whole runs, time to
    accuracy (no models: time to accuracy alone)."""
    report: dict[str, Any] = {"cores": _cores(), "slow_rank_factor": slow}
    if models:
        report["throughput"] = throughput(models, steps, windows, seconds, slow)
        report["allreduce_s"] = allreduce_costs()
        report["projection"] = projection(
            report["allreduce_s"], models, report["throughput"], report["cores"]
        )
    if models and whole_run_rounds:
        report["whole_runs"] = whole_runs(list(models), whole_run_rounds, "fashion-mnist")
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
    if "whole_runs" in report:
        _print_whole_runs(report["whole_runs"])
    for run in report.get("time_to_accuracy", []):
        text = (f"{run['seconds']:.0f} s" if run["reached"]
                else f"not reached (best {run['best_accuracy']:.4f})")  # fmt: skip
        print(f"\ntime to {run['target']:.1%} test accuracy, fashion, {run['procs']} "
              f"process(es): {text} (whole run {run['total_seconds']:.0f} s); "
              f"per epoch (epoch, s, test acc): {run['epochs']}")  # fmt: skip


def _median_rate(result: dict) -> float:
    return statistics.median(window["images_per_s"] for window in result["windows"])


def round_ratios(configs: dict, numerator: str, denominator: str, scale: float = 1.0) -> list:
    """numerator / (scale · denominator) in each round: windows seconds apart."""
    pairs = zip(configs[numerator]["windows"], configs[denominator]["windows"])
    return [a["images_per_s"] / (scale * b["images_per_s"]) for a, b in pairs]


def efficiency_factors(configs: dict, cores: int) -> dict[str, list[float]]:
    """convnp P=cores's scaling efficiency as three factors per round (module docstring)."""
    return {
        "batch split": round_ratios(configs, "convnp P=1 slice", "convnp P=1"),
        "shared cores": round_ratios(configs, "convnp independent", "convnp P=1 slice", cores),
        "step sync": round_ratios(configs, "convnp P=cores", "convnp independent"),
    }


def _print_throughput(report: dict) -> None:
    cores = report["cores"]
    print(f"\nMPI data parallelism ({cores} cores; a window per configuration in turns, each "
          "ratio within a round; median over rounds [min-max]):")  # fmt: skip
    if report.get("slow_rank_factor"):
        speed = 1 + report["slow_rank_factor"]
        print(f"the last rank of each multi-rank job slowed to 1/{speed:g} of its speed")
    print(f"{'model':8} {'configuration':16} {'img/s':>8} {'vs torch':>17} {'vs DDP':>17} "
          f"{'comm ms/step':>12} {'RSS MB/rank':>11} {'PSS MB/rank':>11}")  # fmt: skip

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):5.2f} [{min(values):.2f}-{max(values):.2f}]"

    for name, configs in report.get("throughput", {}).items():
        for config, result in configs.items():
            comm = [w["comm_ms_per_step"] for w in result["windows"] if "comm_ms_per_step" in w]
            label = config.replace("cores", str(cores))
            print(f"{name:8} {label:16} {_median_rate(result):8.0f} "
                  f"{spread(round_ratios(configs, config, 'torch')):>17} "
                  f"{spread(round_ratios(configs, config, 'torch DDP')):>17} "
                  f"{statistics.median(comm) if comm else float('nan'):12.2f} "
                  f"{result['peak_rss_mb_per_rank']:11.0f} "
                  f"{result['pss_mb_per_rank']:11.0f}")  # fmt: skip
        for config in ("convnp P=cores", "convnp balanced"):
            efficiency = round_ratios(configs, config, "convnp P=1", scale=cores)
            print(f"{'':8} scaling efficiency of {config.replace('cores', str(cores))}: "
                  f"{spread(efficiency)}")  # fmt: skip
        factors = efficiency_factors(configs, cores)
        print(f"{'':8} = " + " x ".join(f"{key} {spread(value)}" for key, value in factors.items()))
        weak = round_ratios(configs, "convnp P=cores weak", "convnp P=1", scale=cores)
        print(f"{'':8} weak scaling efficiency (each rank on batch "
              f"{configs['convnp P=1']['global_batch']}): {spread(weak)}")  # fmt: skip


def _print_whole_runs(results: dict) -> None:
    print("\none epoch of convnp train --data fashion-mnist, one process against mpiexec -n P, "
          "in turns: wall s, largest process's peak RSS MB, test accuracy")  # fmt: skip
    for name, result in results.items():
        rows = result["rounds"]
        ratios = [row["one process"]["wall_s"] / row["ranks"]["wall_s"] for row in rows]
        for config in ("one process", "ranks"):
            label = config if config == "one process" else f"{result['procs']} ranks"
            walls = [row[config]["wall_s"] for row in rows]
            peaks = [row[config]["peak_rss_mb"] for row in rows]
            accuracies = sorted({row[config]["test_accuracy"] for row in rows})
            print(f"  {name:8} {label:12} wall {min(walls):5.2f}-{max(walls):5.2f} s  peak "
                  f"{min(peaks):6.1f}-{max(peaks):6.1f} MB  accuracy {accuracies}")  # fmt: skip
        differences = [row["max_weight_difference"] for row in rows]
        print(f"  {name:8} sooner by {', '.join(f'{r:.2f}' for r in ratios)} (median "
              f"{statistics.median(ratios):.2f}); max |weight difference| "
              f"{min(differences):.2g}-{max(differences):.2g}")  # fmt: skip


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
          f"B = {cluster['bandwidth_GB_s']:.2f} GB/s); a rank's step t(n) = t0 + n·τ fitted "
          "from convnp P=1 and P=1 slice here:")  # fmt: skip
    for name, row in plan["models"].items():
        model = row["step_model"]
        print(f"  {name} ({row['parameters']:,} parameters; t0 = {model['fixed_ms']:.2f} ms, "
              f"τ = {model['per_sample_us']:.1f} µs):")  # fmt: skip
        for key, value in row.items():
            if key in ("parameters", "step_model"):
                continue
            print(f"    {key:14} {value['samples_per_rank']:6.1f} samples/rank, compute "
                  f"{value['compute_ms']:7.2f} ms, allreduce {value['allreduce_ms']:6.2f} ms, "
                  f"efficiency {value['efficiency']:.2f}")  # fmt: skip


def main(argv: list[str]) -> int:
    """This section alone: ``python benchmarks/distributed.py [--seconds S] [--windows W]``."""
    import argparse

    parser = argparse.ArgumentParser(description="MPI section of benchmarks/run.py alone")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--windows", type=int, default=8,
                        help="rounds: each configuration times one window per round")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=1.0, help="length of a timed window")
    parser.add_argument("--models", nargs="+", choices=["bouvrie", "lenet5", "modern"],
                        default=["bouvrie", "lenet5", "modern"])  # fmt: skip
    parser.add_argument("--tta-target", type=float, default=0.0, help="0 skips")
    parser.add_argument("--tta-epochs", type=int)
    parser.add_argument("--tta-procs", type=int, nargs="+", help="default: all cores, then 1")
    parser.add_argument("--tta-only", action="store_true", help="skip the throughput part")
    parser.add_argument("--whole-runs", type=int, default=0, metavar="R",
                        help="also R rounds of one training epoch on Fashion-MNIST per model, "
                        "one process against all cores (wall time, peak memory)")  # fmt: skip
    parser.add_argument("--slow-rank", type=float, default=0.0, metavar="F",
                        help="the last rank of each multi-rank job at 1/(1+F) speed")  # fmt: skip
    parser.add_argument(
        "--json",
        default="runs/benchmarks/results-mpi.json",
        help="output file (benchmarks/results-mpi.json is the committed record)",
    )
    args = parser.parse_args(argv)
    if args.tta_only and not args.tta_target:
        parser.error("--tta-only measures time to accuracy alone: give --tta-target (e.g. 0.93)")
    tta = {"target": args.tta_target, "epochs": args.tta_epochs, "data": "fashion-mnist",
           "procs": args.tta_procs}  # fmt: skip
    batches = {"bouvrie": 50, "lenet5": 64, "modern": 128}
    models = {} if args.tta_only else {name: batches[name] for name in args.models}
    report = run(models, args.steps, args.windows, tta if args.tta_target else None,
                 args.seconds, args.slow_rank, args.whole_runs)  # fmt: skip
    print_report(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
