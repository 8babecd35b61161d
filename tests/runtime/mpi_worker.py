"""Programs that test_distributed.py runs on every MPI rank (``mpiexec -n P python
mpi_worker.py MODE ...``) or, with ``--single``, in one plain process for the reference.

Modes:
  train OUT STEPS [--single]   every built-in model without batch norm, float64 and float32:
                               STEPS global batches with fit(), then an evaluation; rank 0
                               saves the weights and the evaluation's figures.
  batchnorm OUT [--emulate P]  the ``fashion`` model (batch norm, dropout, augmentation);
                               --emulate runs, in one process, the documented semantics of
                               P ranks (per-slice statistics, per-rank dropout streams).
  syncbn OUT [--single]        batch norm (2-D and 1-D) with synchronised statistics
                               (sync_batch_norm), float64; rank 0 saves weights and buffers.
  diverge [--single]           a NaN image in rank 1's slice; prints the TrainingDiverged message.
  slices                       Communicator.batches, gather and the check of a rank's slice.
  balance OUT [--single]       bouvrie, float64, with load balancing and the last rank made
                               slow: rank 0 saves the weights and the final shares.
  cli FAULT RANK STEP ARGS...  ``convnp train ARGS`` with a fault on rank RANK at its
                               STEP-th training step: kill (SIGKILL), raise, hang (SIGSTOP).
  cores pin|free               Communicator.start on bouvrie, every rank first pinned to the
                               first core it may use (pin) or left as started (free).
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time

import numpy as np

from convnp import train
from convnp.app import zoo
from convnp.data import DataLoader

EQUIVALENCE_MODELS = ("bouvrie", "lenet5", "lenet5-classic", "modern")
SEED = 7


def communicator(single: bool):
    if single:
        return None
    from convnp.runtime.distributed import Communicator

    return Communicator(timeout=60)


def data(n: int, shape=(1, 28, 28)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n)


def setup(name: str, dtype, n: int):
    recipe = zoo.get_recipe(name)
    model = recipe.build(dtype=dtype, rng=np.random.default_rng(SEED))
    images, labels = data(n)
    loader = DataLoader(images, labels, batch_size=recipe.batch_size, seed=SEED,
                        normalize=recipe.normalize, dtype=dtype,
                        transform=recipe.make_augmentation())  # fmt: skip
    return model, recipe.make_loss(), recipe.make_optimizer(model), loader


def evaluation_batches(dtype) -> DataLoader:
    """Batches of 23, 23 and 4 samples: a rank's slice of 11-12 spans several blocks of
    the sharded evaluation (``EVALUATION_BLOCK``, set to 5 in the ranks)."""
    images, labels = data(50)
    return DataLoader(images, labels, batch_size=23, shuffle=False, dtype=dtype)


def mode_train(out: str, steps: int, single: bool) -> None:
    comm = communicator(single)
    if comm is not None:
        from convnp.runtime import distributed

        distributed.EVALUATION_BLOCK = 5
    weights = {}
    for name in EQUIVALENCE_MODELS:
        for dtype in (np.float64, np.float32):
            batch = zoo.get_recipe(name).batch_size
            # a last batch of one sample: some ranks get an empty slice
            model, loss, optimizer, loader = setup(name, dtype, batch * (steps - 1) + 1)
            train.fit(model, loss, optimizer, loader, epochs=1, progress=False, comm=comm)
            prefix = f"{name}/{np.dtype(dtype).name}"
            for key, value in model.state_dict().items():
                weights[f"{prefix}/{key}"] = value
            result = train.evaluate(model, evaluation_batches(dtype), loss, 10, comm=comm)
            weights[f"{prefix}/evaluation loss"] = np.array(result["loss"])
            if dtype == np.float64:  # float32 rounding could move an argmax between ranks
                weights[f"{prefix}/evaluation confusion"] = result["confusion"]
    if comm is None or comm.is_root:
        np.savez(out, **weights)


def mode_syncbn(out: str, single: bool) -> None:
    from convnp import losses, optim
    from convnp.app import architectures

    comm = communicator(single)
    model = architectures.from_string(
        "6c3p1-bn-relu-2m-8c3-bn-relu-2m-24f-bn-relu", (1, 28, 28), 10,
        rng=np.random.default_rng(SEED),
    ).astype(np.float64)  # fmt: skip
    if comm is not None:
        from convnp.runtime.distributed import sync_batch_norm

        assert sync_batch_norm(model, comm) == 3
    images, labels = data(50 * 3 + 7)  # a last batch of 7: slices of 2 and 3 samples
    loader = DataLoader(images, labels, batch_size=50, seed=SEED, normalize="standardize",
                        dtype=np.float64)  # fmt: skip
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train.fit(model, losses.CrossEntropyLoss(), optimizer, loader, epochs=2,
              progress=False, comm=comm)  # fmt: skip
    if comm is None or comm.is_root:
        np.savez(out, **model.state_dict())


def mode_batchnorm(out: str, emulate: int | None) -> None:
    model, loss, optimizer, loader = setup("fashion", np.float64, 128 * 2 + 40)
    if emulate is None:
        comm = communicator(False)
        train.fit(model, loss, optimizer, loader, epochs=2, progress=False, comm=comm)
        if not comm.is_root:
            return
    else:
        emulate_ranks(model, loss, optimizer, loader, emulate, epochs=2)
    np.savez(out, **model.state_dict())


def emulate_ranks(model, loss, optimizer, loader, ranks: int, epochs: int) -> None:
    """convnp.runtime.distributed's documented semantics, spelled out in one process."""
    shared = {id(param): param for _, param, _ in model.parameters()}
    replicas = [model] + [copy.deepcopy(model, dict(shared)) for _ in range(ranks - 1)]
    for epoch in range(epochs):
        for rank, replica in enumerate(replicas):
            for index, layer in enumerate(replica):
                if isinstance(getattr(layer, "rng", None), np.random.Generator):
                    layer.rng = np.random.default_rng([loader.seed, epoch, rank, index])
        for x, t in loader.batches(epoch):
            n = len(x)
            total = [np.zeros_like(grad) for _, _, grad in model.parameters()]
            for rank, replica in enumerate(replicas):
                part = slice(n * rank // ranks, n * (rank + 1) // ranks)
                y = replica.forward(x[part])
                loss.forward(y, t[part])
                replica.backward(loss.backward() * (len(y) / n), input_grad=False)
                for sum_, (_, _, grad) in zip(total, replica.parameters()):
                    sum_ += grad
            for sum_, (_, _, grad) in zip(total, model.parameters()):
                grad[...] = sum_
            optimizer.step()
        for layer_index, layer in enumerate(model):
            for key in layer.buffers:
                mean = np.mean([r[layer_index].buffers[key] for r in replicas], axis=0)
                for replica in replicas:
                    replica[layer_index].buffers[key][...] = mean


def mode_diverge(single: bool) -> None:
    comm = communicator(single)
    model, loss, optimizer, _ = setup("bouvrie", np.float64, 0)
    images, labels = data(150)
    images = images.astype(np.float64) / 255
    images[50 + 40] = np.nan  # second batch of 50, in the last rank's slice (P = 2 or 3)
    loader = DataLoader(images, labels, batch_size=50, shuffle=False, normalize=None,
                        dtype=np.float64)  # fmt: skip
    try:
        train.fit(model, loss, optimizer, loader, epochs=1, progress=False, comm=comm)
    except train.TrainingDiverged as error:
        if comm is None or comm.is_root:
            print(f"diverged: {error}")


def mode_slices() -> None:
    """Communicator.batches slices any iterable of global batches (a rank may get none),
    gather rebuilds them, and forward_backward refuses a whole batch where a slice is due."""
    comm = communicator(False)
    rng = np.random.default_rng(SEED)
    batches = [(rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, n)) for n in (7, 2)]
    local = list(comm.batches(iter(batches)))
    for (x, t), (x_whole, t_whole) in zip(local, batches, strict=True):
        np.testing.assert_array_equal(x, x_whole[comm.shard(len(t_whole))])
        np.testing.assert_array_equal(t, t_whole)
        np.testing.assert_array_equal(comm.gather(x), x_whole)
    model, loss, _, _ = setup("bouvrie", np.float64, 0)
    x, t = batches[0]
    try:
        comm.forward_backward(model, loss, x, t)
    except ValueError as error:
        assert "its slice of the global batch of 7" in str(error), error
    else:
        raise AssertionError("a whole batch was taken for a rank's slice")
    if comm.is_root:
        print("slices ok")


def mode_balance(out: str, single: bool) -> None:
    """Load balancing moves samples away from a slow rank (the last, spinning 1 ms per
    sample in its first layer), and the weights stay the one process's. Rank 0 also saves
    every rank's slice sizes, step by step (counts: steps × ranks)."""
    comm = communicator(single)
    model, loss, optimizer, loader = setup("bouvrie", np.float64, 50 * 12 + 7)
    slices = []  # the samples this rank trained on, step by step
    if comm is not None:
        from convnp.runtime.balance import LoadBalancer

        comm.balancer = LoadBalancer(comm.size, window=2, damping=1.0)
        if comm.rank == comm.size - 1:
            slow_down(model[0], seconds_per_sample=1e-3)
        forward_backward = comm.forward_backward

        def counted(model, loss, x, t):
            slices.append(len(x))
            return forward_backward(model, loss, x, t)

        comm.forward_backward = counted
    train.fit(model, loss, optimizer, loader, epochs=1, progress=False, comm=comm)
    counts = [[]] if comm is None else comm.comm.gather(slices)
    if comm is None or comm.is_root:
        shares = [1.0] if comm is None else comm.balancer.shares
        np.savez(out, shares=np.array(shares), counts=np.array(counts).T, **model.state_dict())


def slow_down(layer, seconds_per_sample: float) -> None:
    """Make ``layer``'s forward spin for ``seconds_per_sample`` per sample: a slower core."""
    forward = layer.forward

    def slow_forward(x):
        end = time.perf_counter() + seconds_per_sample * len(x)
        while time.perf_counter() < end:
            pass
        return forward(x)

    layer.forward = slow_forward


def mode_cli(fault: str, rank: int, step: int, argv: list[str]) -> int:
    from convnp.app import cli
    from convnp.runtime.distributed import Communicator

    original = train.train_step
    calls = 0

    def faulty_step(*args, **kwargs):
        nonlocal calls
        calls += 1
        comm = kwargs.get("comm") or next((a for a in args if isinstance(a, Communicator)), None)
        if comm is not None and comm.rank == rank and calls == step:
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "hang":
                os.kill(os.getpid(), signal.SIGSTOP)
            if fault == "raise":
                raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    train.train_step = faulty_step
    return cli.main(argv)


def mode_cores(pin: bool) -> None:
    if pin:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    comm = communicator(False)
    model, _, optimizer, loader = setup("bouvrie", np.float32, 8)
    comm.start(model, optimizer, loader)


def main() -> int:
    mode, *rest = sys.argv[1:]
    if mode == "train":
        mode_train(rest[0], int(rest[1]), "--single" in rest)
    elif mode == "batchnorm":
        mode_batchnorm(rest[0], int(rest[2]) if "--emulate" in rest else None)
    elif mode == "syncbn":
        mode_syncbn(rest[0], "--single" in rest)
    elif mode == "diverge":
        mode_diverge("--single" in rest)
    elif mode == "slices":
        mode_slices()
    elif mode == "balance":
        mode_balance(rest[0], "--single" in rest)
    elif mode == "cores":
        mode_cores(rest[0] == "pin")
    elif mode == "cli":
        return mode_cli(rest[0], int(rest[1]), int(rest[2]), rest[3:])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
