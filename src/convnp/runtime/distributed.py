"""Data-parallel training over MPI ranks: one code path from a laptop's cores to a cluster.

Every rank (process) holds the whole model and follows the same global batches, the ones a
single process would train on (same ``--batch-size``, sample order, augmentation and
learning-rate schedule), but reads only its own contiguous slice of n_r of the N samples
of each (``Communicator.batches``: a rank gathers and normalises n_r images, not N). Rank r
of P runs forward and backward on its slice, starting from the scaled loss gradient
(n_r/N)·∂E_r/∂y (for a loss averaged over its batch; 1 for a summed loss). Layers sum
per-sample gradients and the loss's 1/N is the only scale (SPEC §1), so the sum over ranks

    ∇E = Σ_r (n_r/N)·∇E_r

is the gradient of the global batch. One in-place ``Allreduce`` on a contiguous buffer forms
that sum, together with the network outputs of every slice (each rank writes its own rows,
zeros elsewhere, so the sum gathers them) and the loss. Every rank then applies the same
optimizer step to the same gradients, so the weights stay identical without being sent.

Equivalence: in float64 the weights after many steps equal one process's to ~1e-12 (sums
are formed in a different order); float32 agrees to rounding, which training amplifies
slowly (tests/runtime/test_distributed.py states the bound it checks).

What differs from one process, by design (as PyTorch's DistributedDataParallel):

* Batch norm normalises with each rank's own slice statistics (n_r samples, not N). Its
  running statistics are averaged over the ranks at the end of every epoch, before
  evaluation and the checkpoint, so every rank holds the same model.
* Dropout draws from a per-rank stream, ``default_rng([seed, epoch, rank, layer index])``,
  reseeded every epoch: reproducible for a given P, and a resumed run draws what the
  uninterrupted one would. Augmentation is drawn for the whole global batch from the
  loader's epoch stream, as in one process, so it does not depend on P (a loader with a
  transform builds the whole batch on every rank, then keeps the rank's slice).

Resuming: a checkpoint holds one model; a run resumed with the same P continues
bit-for-bit. With another P it continues the same optimisation up to rounding of the
gradient sums (and different dropout masks and batch-norm slices).

Load balancing (``balance=True``, opt-in): the slices follow the ranks' measured speed
(``convnp.runtime.balance``) instead of being equal, for cores of uneven speed; the
gradient is the same sum, but its rounding, and so the run, then depends on timing.

Faults: ``abort_on_error`` turns an exception on one rank into ``MPI_Abort`` of the whole
job (a rank that merely exits would leave the others waiting in their next collective
forever). A rank killed outright is detected by the launcher (``mpiexec`` and ``srun
--kill-on-bad-exit`` end the job). A rank that stops responding is caught by a watchdog:
a collective that has not completed within ``timeout`` seconds aborts the job. Inputs that
differ between ranks (data, model, seed, settings) are refused at start-up
(``check_same``).

Threads: each rank limits BLAS (and convnp's inference blocks) to its share of the
node's cores, so P ranks on P cores do not oversubscribe them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convnp.layers.base import NonFiniteInputError
from convnp.runtime.balance import LoadBalancer
from convnp.runtime.parallel import (
    INFERENCE_BLOCK,
    available_cores,
    predict_in_blocks,
    usable_cores,
)

# A collective that waits longer than this for the other ranks ends the job. Between two
# collectives a rank does one training step, or rank 0 writes a checkpoint; both take far
# less on any machine convnp targets.
#: Seconds an aborting rank waits after printing why, so the launcher forwards the message.
ABORT_GRACE_SECONDS = 0.5
DEFAULT_TIMEOUT = 300.0
# Samples a rank runs through the network at a time in the sharded evaluation: a bound on
# its activations whatever the evaluation batch. The threads' block (INFERENCE_BLOCK, 64).
# Measured (2 ranks, 1 BLAS thread; `convnp train --model bouvrie --data fashion-mnist
# --epochs 1`, three interleaved runs each): a rank's peak RSS 124 MB by 256, 118 by 128,
# 116 by 64, the test evaluation 0.21-0.23 s in all three; one thread's forward per sample
# by 64 / 256: bouvrie 37 / 37 µs, lenet5 61-64 / 58-63, modern 208-216 / 242-254.
EVALUATION_BLOCK = INFERENCE_BLOCK

# Environment variables that MPI launchers set in every rank (MPICH/Intel hydra and Slurm's
# PMI, Open MPI, PMIx): their presence means "started by a launcher", without initialising MPI.
_LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def sync_batch_norm(model: Any, comm: Communicator) -> int:
    """PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``: every batch-norm layer of
    ``model`` takes its batch statistics, and their backward sums, over all ranks' slices
    of the global batch (``sum_over_ranks``: two small Allreduces per layer in forward, one
    in backward), so training equals one process's on the whole batch. Without it each rank
    normalises its own slice, as DDP does by default. Returns how many layers it set."""
    layers = [layer for layer in model if hasattr(layer, "sum_over_ranks")]
    for layer in layers:
        layer.sum_over_ranks = comm.sum
    return len(layers)


class MismatchError(ValueError):
    """Ranks started with different inputs (data, model, seed or settings).

    Raised on every rank at once (after a collective comparison), so the job can end
    normally instead of aborting.
    """


def launched_by_mpi() -> bool:
    """True when an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def find_mpiexec() -> str | None:
    """The ``mpiexec`` next to this Python (a virtual environment's, from the mpich wheel),
    else the first on PATH; None if there is none."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def mpi_available() -> bool:
    """mpi4py importable and an ``mpiexec`` to launch ranks with."""
    try:
        import mpi4py  # noqa: F401  (the package only: importing mpi4py.MPI starts MPI)
    except ImportError:
        return False
    return find_mpiexec() is not None


def mpiexec_command(
    command: list[str], procs: int, *, blas_threads: int = 1
) -> tuple[list[str], dict[str, str]]:
    """The ``mpiexec`` command line that runs ``command`` (a program) on ``procs`` ranks of
    this machine, and the environment variables to set for it (``blas_threads`` BLAS
    threads per rank, through the usual variables)."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise FileNotFoundError("mpiexec not found: pip install 'convnp[mpi]'")
    threads = str(blas_threads)
    env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return [mpiexec, "-n", str(procs), *command], env


def launch(command: list[str], procs: int, *, blas_threads: int = 1) -> int:
    """Run ``command`` (a Python program) on ``procs`` ranks with ``mpiexec``; its exit code.

    The settings are ``mpiexec_command``'s, for the child processes only.
    """
    argv, env = mpiexec_command(command, procs, blas_threads=blas_threads)
    import subprocess

    return subprocess.run(argv, env=dict(os.environ, **env)).returncode


def _crc(*arrays: np.ndarray) -> int:
    """CRC-32 of the arrays' bytes (a fingerprint; ~1 GB/s, so a data set costs ~50 ms)."""
    value = 0
    for array in arrays:
        value = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1), value)
    return value


def model_fingerprint(model: Any) -> str:
    """Layer types, shapes and a CRC of every parameter and buffer."""
    state = model.state_dict()
    layers = [type(layer).__name__ for layer in model]
    shapes = {name: list(value.shape) for name, value in state.items()}
    return f"{layers} {shapes} crc {_crc(*state.values()):08x}"


def loader_fingerprint(loader: Any, crcs: dict[int, int] | None = None) -> str:
    """Data CRC and batching settings of a DataLoader (repr of anything else); the seed only
    where it matters (shuffling or augmentation). ``crcs`` remembers the CRC of each array
    (by id, while the caller holds the loaders): the training and validation loaders read
    the same images, whose CRC then costs once (~15 ms for Fashion-MNIST)."""
    images, labels = getattr(loader, "images", None), getattr(loader, "labels", None)
    if images is None or labels is None:
        return repr(loader)
    random = loader.shuffle or loader.transform is not None
    settings = (loader.batch_size, loader.shuffle, loader.drop_last, loader.normalize,
                loader.dtype.name, loader.seed if random else None, repr(loader.transform),
                _crc(*(s for s in (loader.mean, loader.std) if s is not None)))  # fmt: skip
    indices = getattr(loader, "indices", None)
    data = (images, labels) if indices is None else (images, labels, indices)
    known = {} if crcs is None else crcs
    for array in data:
        if id(array) not in known:
            known[id(array)] = _crc(array)
    return f"{settings} {images.shape} crc {' '.join(f'{known[id(a)]:08x}' for a in data)}"


class Communicator:
    """Data parallelism over the ranks of an MPI communicator (default ``COMM_WORLD``).

    ``fit(..., comm=Communicator())`` trains one model with every rank; the same script runs
    on each rank (``mpiexec -n P python train.py``), and the ranks' figures and weights are
    identical. Only rank 0 should write files and print (``is_root``).

    Args:
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``).
        timeout: seconds a collective may wait for the other ranks before the watchdog
            aborts the job (a rank that hangs); None disables the watchdog.
        balance: split each global batch by the ranks' measured speed (``LoadBalancer``)
            instead of evenly: faster on cores of uneven speed, but the split, and so the
            rounding of the gradient sums, then depends on timing, and runs are no longer
            repeatable bit for bit.
    """

    def __init__(
        self, comm: Any = None, *, timeout: float | None = DEFAULT_TIMEOUT, balance: bool = False
    ) -> None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError(
                "distributed training needs mpi4py and an MPI library: pip install 'convnp[mpi]'"
            ) from None
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
        self.node_rank: int = node.Get_rank()
        self.node_size: int = node.Get_size()
        # the cores that this machine's ranks may run on between them (their affinity masks:
        # ranks bound one to a core by mpiexec or Slurm each see one core)
        self.node_cores: int = len(set().union(*node.allgather(usable_cores())))
        node.Free()
        self.timeout = timeout
        self.balancer = LoadBalancer(self.size) if balance else None
        self.seed = 0
        self.seconds_communicating = 0.0  # time spent inside collectives (benchmarks)
        self._buffer = np.empty(0)
        self._output_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._waiting_since: float | None = None
        self._waiting_for = ""
        if timeout is not None:
            threading.Thread(target=self._watch, name="convnp-mpi-watchdog", daemon=True).start()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    # -- the slice of a global batch ------------------------------------------------------
    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n samples: [⌊n·r/P⌋, ⌊n·(r+1)/P⌋) (sizes differ by
        at most one; a rank may get none when n < P), or with ``balance`` its part by the
        balancer's current shares (the same on every rank: they change only in
        ``forward_backward``, from figures every rank receives)."""
        if self.balancer is not None:
            bounds = self.balancer.bounds(n)
            return slice(bounds[self.rank], bounds[self.rank + 1])
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def batches(self, loader: Iterable[tuple[np.ndarray, Any]]) -> Iterator[tuple[np.ndarray, Any]]:
        """The next epoch of ``loader`` as this rank reads it: each global batch (x, t) of N
        as (x[shard(N)], t), its own slice of the inputs and all N targets (the outputs
        and figures are the global batch's). A ``DataLoader`` gathers and normalises only
        the slice's images (``DataLoader.sharded``), so a rank's loading cost is that of
        its n_r samples, not of N; any other iterable is sliced here."""
        if hasattr(loader, "sharded"):
            return loader.sharded(self.shard)
        return ((x[self.shard(len(x))], t) for x, t in loader)

    def gather(self, x: np.ndarray) -> np.ndarray:
        """The global batch from every rank's slice x (each rank's ``shard`` of it, in rank
        order), on every rank: for the rare paths that need the whole batch, such as naming
        the layer where a diverged batch turns NaN."""
        counts = self._collective(lambda: self.comm.allgather(len(x)), "gathering a batch")
        row = math.prod(x.shape[1:])
        batch = np.empty((sum(counts), *x.shape[1:]), x.dtype)
        self._collective(
            lambda: self.comm.Allgatherv(
                np.ascontiguousarray(x), [batch, [count * row for count in counts]]
            ),
            "gathering a batch",
        )
        return batch

    # -- one training step ----------------------------------------------------------------
    def forward_backward(self, model: Any, loss: Any, x: np.ndarray, t: Any) -> tuple[Any, float]:
        """Fill the model's grads with ∇E of the global batch; return (y, E) for it.

        x is this rank's slice of the global batch (``shard(N)`` of it, as ``batches``
        yields it) and t the targets of all N samples. This rank runs forward and backward
        on its slice only; one Allreduce sums the gradients, the outputs and the loss over
        the ranks, and gathers every rank's busy time (its forward and backward, less any
        collective within them) for the balancer. If any rank's forward met NaN or inf,
        every rank raises ``NonFiniteInputError`` (so the training loop reports the
        divergence identically on all of them).
        """
        started, communicated = time.perf_counter(), self.seconds_communicating
        n = len(t)
        part = self.shard(n)
        x_part, t_part = self._own_slice(x, n, part), np.asarray(t)[part]
        grads = [grad for _, _, grad in model.parameters()]
        out_shape = self._output_shape(model, x.shape[1:])
        dtype = grads[0].dtype if grads else np.dtype(np.float64)
        sizes = [g.size for g in grads]
        grad_size = sum(sizes)
        row = math.prod(out_shape)
        # [gradients | outputs (n, ...) | busy µs per rank | E | failed]
        buffer = self._workspace(grad_size + n * row + self.size + 2, dtype)
        outputs = buffer[grad_size : grad_size + n * row].reshape(n, *out_shape)
        busy = buffer[grad_size + n * row : -2]
        buffer[grad_size:] = 0
        failed = False
        if len(x_part):
            mean = getattr(loss, "reduction", "mean") == "mean"
            weight = len(x_part) / n if mean else 1.0  # E = Σ_r (n_r/N)·E_r
            try:
                y = model.forward(x_part)
                error = loss.forward(y, t_part) * weight
                model.backward(loss.backward() * y.dtype.type(weight), input_grad=False)
                outputs[part] = y
                buffer[-2] = error
            except NonFiniteInputError:
                failed = True
        if failed or not len(x_part):
            for grad in grads:
                grad[...] = 0
        buffer[-1] = failed
        offset = 0
        for grad, size in zip(grads, sizes):
            buffer[offset : offset + size] = grad.reshape(-1)
            offset += size
        seconds = time.perf_counter() - started - (self.seconds_communicating - communicated)
        # whole microseconds, at least 1: the sum of one rank's value and zeros is exact
        # (float32 holds integers to 2^24 µs), so every rank reads the same figures
        busy[self.rank] = min(max(1, round(seconds * 1e6)), 2**24)
        self._allreduce(buffer, "the gradient Allreduce")
        offset = 0
        for grad, size in zip(grads, sizes):
            grad[...] = buffer[offset : offset + size].reshape(grad.shape)
            offset += size
        if buffer[-1]:
            raise NonFiniteInputError("a rank's network output contains NaN or inf")
        if self.balancer is not None:
            self.balancer.record(n, [float(b) * 1e-6 for b in busy])
        return outputs.copy(), float(buffer[-2])

    def forward(self, model: Any, x: np.ndarray, n: int) -> np.ndarray:
        """The network's eval-mode output for a global batch of n samples, every rank
        computing its slice x (``shard(n)`` of the batch), ``EVALUATION_BLOCK`` samples at a
        time (for sharded evaluation: every rank gets the full output)."""
        part = self.shard(n)
        x = self._own_slice(x, n, part)
        out_shape = self._output_shape(model, x.shape[1:])
        dtype = model.dtype or np.float64
        buffer = self._workspace(n * math.prod(out_shape), dtype)
        buffer[:] = 0
        outputs = buffer.reshape(n, *out_shape)
        if len(x):
            outputs[part] = predict_in_blocks(model, x, block=EVALUATION_BLOCK, threads=1)
        self._allreduce(buffer, "the sharded evaluation")
        return outputs.copy()

    # -- once per run and per epoch -------------------------------------------------------
    def check_same(self, fingerprints: dict[str, str]) -> None:
        """Compare each rank's fingerprints with rank 0's; ``MismatchError`` on every rank
        if any differs, naming the ranks and the items."""
        everyone = self._collective(lambda: self.comm.allgather(fingerprints), "the start-up check")
        problems = []
        for rank, theirs in enumerate(everyone[1:], start=1):
            differing = [key for key in everyone[0] if theirs.get(key) != everyone[0][key]]
            if differing:
                problems.append(f"rank {rank} differs from rank 0 in {', '.join(differing)}")
        if problems:
            raise MismatchError(
                "the ranks were started with different inputs: " + "; ".join(problems)
                + " (every rank must load the same data set, model, seed and settings)"
            )  # fmt: skip

    def start(self, model: Any, optimizer: Any, train: Any, *, info: Any = None,
              history: Any = None, val: Any = None) -> None:  # fmt: skip
        """Before training: per-rank thread limits, and the start-up fingerprint check."""
        self.seed = int(getattr(train, "seed", 0))
        self._limit_threads(model)
        per_slice = [
            repr(layer)
            for layer in model
            if not layer.samples_independent and getattr(layer, "sum_over_ranks", None) is None
        ]
        if self.node_size > self.node_cores and self.node_rank == 0:
            cores = f"{self.node_cores} core" + ("s" if self.node_cores > 1 else "")
            warnings.warn(
                f"{self.node_size} ranks share {cores} on this machine: a rank that waits for "
                "the others polls on its core, taking time from those still computing, so "
                "training runs slower than with one rank per core",
                stacklevel=3,
            )
        if per_slice and self.is_root and self.size > 1:
            warnings.warn(
                f"{', '.join(per_slice)} work on each rank's slice of the batch (its own "
                "statistics, its own dropout masks), so results depend on the number of ranks"
                + (" and, with balance, on the split" if self.balancer is not None else ""),
                stacklevel=3,
            )
        optimizer_state = {key: value for key, value in optimizer.state_dict().items()}
        crcs: dict[int, int] = {}  # the loaders' arrays, each hashed once
        fingerprints = {
            "model": model_fingerprint(model),
            "optimizer": f"{optimizer!r} crc {_crc(*optimizer_state.values()):08x}",
            "training data": loader_fingerprint(train, crcs),
            "validation data": "none" if val is None else loader_fingerprint(val, crcs),
            "history": json.dumps(history or [], sort_keys=True, default=str),
            "run settings": json.dumps(info or {}, sort_keys=True, default=str),
            "load balancing": "on" if self.balancer is not None else "off",
        }
        self.check_same(fingerprints)

    def start_epoch(self, model: Any, epoch: int) -> None:
        """Reseed each dropout layer from (seed, epoch, rank, layer index)."""
        for index, layer in enumerate(model):
            if isinstance(getattr(layer, "rng", None), np.random.Generator):
                layer.rng = np.random.default_rng([self.seed, epoch, self.rank, index])

    def end_epoch(self, model: Any) -> None:
        """Average the buffers (batch-norm running statistics) over the ranks, then check
        that every rank holds the same weights (they can only differ through a bug or a
        non-deterministic MPI reduction; training on would silently fork the model)."""
        buffers = [value for layer in model for value in layer.buffers.values()]
        if buffers:
            flat = np.concatenate([b.reshape(-1).astype(np.float64) for b in buffers])
            self._allreduce(flat, "the buffer average")
            flat /= self.size
            offset = 0
            for value in buffers:
                value[...] = flat[offset : offset + value.size].reshape(value.shape)
                offset += value.size
        checksum = _crc(*(param for _, param, _ in model.parameters()))
        checksums = self._collective(lambda: self.comm.allgather(checksum), "the weight check")
        if len(set(checksums)) > 1:
            raise RuntimeError(f"the ranks' weights have drifted apart (CRCs {checksums})")

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (small Python objects: a run folder's path)."""
        return self._collective(lambda: self.comm.bcast(value, root=0), "a broadcast")

    def sum(self, values: Any) -> np.ndarray:
        """Element-wise sum over the ranks of a small float64 vector."""
        array = np.array(values, dtype=np.float64)
        self._allreduce(array, "a reduction")
        return array

    # -- failure handling -----------------------------------------------------------------
    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` (naming this rank) and end every rank of the job."""
        print(f"convnp: rank {self.rank} of {self.size}: {message}", file=sys.__stderr__)
        sys.__stderr__.flush()
        # The launcher forwards a rank's output through a pipe and kills every rank on
        # Abort; without a pause it sometimes exits before reading the message (seen: 2 of
        # 6 aborts silent on a busy machine).
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(code)

    @contextlib.contextmanager
    def abort_on_error(self, agreed: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """An exception on this rank ends the whole job (``MPI_Abort``), with a message.

        Exceptions listed in ``agreed`` are raised by every rank together (after a
        collective), so they propagate normally and the job ends cleanly.
        """
        try:
            yield
        except agreed:
            raise
        except KeyboardInterrupt:
            self.abort("interrupted; checkpoints written so far are intact", 130)
        except BaseException as error:  # SystemExit too: one rank exiting hangs the rest
            if isinstance(error, SystemExit) and not error.code:
                raise
            self.abort(f"{type(error).__name__}: {error}; stopping every rank", 1)

    # -- internals ------------------------------------------------------------------------
    def _own_slice(self, x: Any, n: int, part: slice) -> np.ndarray:
        if not isinstance(x, np.ndarray) or len(x) != part.stop - part.start:
            got = f"{len(x)} samples" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(
                f"rank {self.rank} of {self.size}: expected its slice of the global batch of "
                f"{n} ({part.stop - part.start} samples, Communicator.batches gives them), got "
                f"{got}"
            )
        return x

    def _output_shape(self, model: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        key = tuple(input_shape)
        if key not in self._output_shapes:
            self._output_shapes[key] = tuple(model.output_shapes(key)[-1])
        return self._output_shapes[key]

    def _workspace(self, size: int, dtype: Any) -> np.ndarray:
        """A contiguous 1-D array of ``size`` elements, reused across steps."""
        if self._buffer.dtype != dtype or self._buffer.size < size:
            self._buffer = np.empty(size, dtype=dtype)
        return self._buffer[:size]

    def _allreduce(self, buffer: np.ndarray, what: str) -> None:
        self._collective(
            lambda: self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM), what
        )

    def _collective(self, operation: Callable[[], Any], what: str) -> Any:
        started = time.perf_counter()
        self._waiting_for, self._waiting_since = what, time.monotonic()
        try:
            return operation()
        finally:
            self._waiting_since = None
            self.seconds_communicating += time.perf_counter() - started

    def _watch(self) -> None:
        """Watchdog thread: abort the job when a collective waits longer than ``timeout``."""
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.timeout:
                self.abort(
                    f"waited more than {self.timeout:g} s for the other ranks in "
                    f"{self._waiting_for}: a rank died or hangs; stopping every rank",
                    3,
                )

    def _limit_threads(self, model: Any) -> None:
        """BLAS threads: at most this rank's share of the node's cores (a lower limit
        already set, e.g. OMP_NUM_THREADS=1, is kept)."""
        share = max(1, available_cores() // self.node_size)
        from convnp.runtime.parallel import _blas_controller

        controller = _blas_controller()
        if controller is not None:
            blas = controller.select(user_api="blas")
            current = min((lib.num_threads for lib in blas.lib_controllers), default=share)
            blas.limit(limits=min(current, share))
