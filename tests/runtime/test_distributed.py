"""Data-parallel training over MPI (convnp.runtime.distributed).

Each test launches ``mpiexec -n P`` (P = 2 or 3) running tests/runtime/mpi_worker.py or the
``convnp`` command line, with a hard timeout that kills the whole process group, and
compares with one plain process. Skipped where mpi4py or mpiexec is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convnp import io
from convnp.app import cli, zoo
from convnp.runtime import distributed

WORKER = Path(__file__).with_name("mpi_worker.py")
needs_mpi = pytest.mark.skipif(
    not distributed.mpi_available(), reason="needs mpi4py and mpiexec (pip install convnp[mpi])"
)
# float32: P ranks sum the gradient in another order than one process, ~1 ulp apart. After
# a few SGD steps the weights agree within FLOAT32_ATOL (measured: < 1e-6). Adam divides by
# √v̂, so a weight whose gradient is near zero (rounding large relative to it) can move by up
# to lr per step differently: for Adam, 99.9% of weights within FLOAT32_ATOL and all within
# 2·steps·lr.
FLOAT32_ATOL = 1e-5
STEPS = 3
SMALL_ARCH = "8c3p1-2m-bn-relu-32f-relu-d0.5"  # batch norm and dropout, fast


def run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on timeout kill the group and fail."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(command)} did not finish within {timeout} s")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def mpiexec(procs: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run([distributed.find_mpiexec(), "-n", str(procs), sys.executable, *args], timeout)


def worker(*args: str) -> list[str]:
    return [str(WORKER), *args]


def convnp_train(*args: str) -> list[str]:
    return ["-m", "convnp", "train", "--quiet", *args]


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# -- equivalence with one process --------------------------------------------------------
@pytest.fixture(scope="module")
def one_process_weights(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("single") / "weights.npz"
    checked(run([sys.executable, *worker("train", str(out), str(STEPS), "--single")]))
    return dict(np.load(out))


@needs_mpi
@pytest.mark.parametrize("procs", [2, 3])
def test_every_model_trains_as_one_process(procs, one_process_weights, tmp_path):
    """bouvrie, lenet5, lenet5-classic, modern: 3 global batches (the last of one sample, so
    some ranks get none); float64 equal to 1e-10, float32 to FLOAT32_ATOL. Then the sharded
    evaluation, several blocks per rank, gives the one process's loss and confusion matrix."""
    out = tmp_path / "weights.npz"
    checked(mpiexec(procs, *worker("train", str(out), str(STEPS))))
    weights = dict(np.load(out))
    assert weights.keys() == one_process_weights.keys()
    for key, expected in one_process_weights.items():
        if "/float64/" in key:
            np.testing.assert_allclose(weights[key], expected, rtol=0, atol=1e-10, err_msg=key)
            continue
        difference = np.abs(weights[key] - expected)
        recipe = zoo.get_recipe(key.split("/")[0])
        if recipe.optimizer == "adam":
            assert (difference <= FLOAT32_ATOL).mean() >= 0.999, key
            assert difference.max() <= 2 * STEPS * recipe.lr, key
        else:
            assert difference.max() <= FLOAT32_ATOL, key
    changed = [k for k in weights if "/float64/" in k and "weight" in k]
    assert changed  # the comparison covered trained weights


@needs_mpi
def test_batch_norm_uses_per_rank_statistics(tmp_path):
    """fashion (batch norm, dropout, augmentation) on 2 ranks equals its documented
    semantics spelled out in one process: each rank's slice normalised by its own
    statistics, per-rank dropout streams, running statistics averaged each epoch."""
    out = tmp_path / "mpi.npz"
    checked(mpiexec(2, *worker("batchnorm", str(out))))
    emulated = tmp_path / "emulated.npz"
    checked(run([sys.executable, *worker("batchnorm", str(emulated), "--emulate", "2")]))
    got, expected = np.load(out), np.load(emulated)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-10, err_msg=key)
    assert any("running_mean" in key for key in expected)


@needs_mpi
@pytest.mark.parametrize("procs", [2, 3])
def test_sync_batch_norm_trains_as_one_process(procs, tmp_path):
    """With sync_batch_norm, batch norm's statistics and their gradient sums span the
    global batch: weights and running statistics equal one process's (float64, 1e-10),
    with uneven slices (a last batch of 7 on 3 ranks)."""
    single, mpi = tmp_path / "single.npz", tmp_path / "mpi.npz"
    checked(run([sys.executable, *worker("syncbn", str(single), "--single")]))
    checked(mpiexec(procs, *worker("syncbn", str(mpi))))
    expected, got = np.load(single), np.load(mpi)
    assert any("running_var" in key for key in expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-10, err_msg=key)


@needs_mpi
@pytest.mark.parametrize("procs", [2, 3])
def test_balancing_moves_samples_off_a_slow_rank_and_trains_as_one_process(procs, tmp_path):
    """With balance, the last rank (made slow) ends with the smallest share of each batch,
    and the weights still equal one process's (float64, 1e-10): any split sums to ∇E."""
    single, mpi = tmp_path / "single.npz", tmp_path / "mpi.npz"
    checked(run([sys.executable, *worker("balance", str(single), "--single")]))
    checked(mpiexec(procs, *worker("balance", str(mpi))))
    expected, got = np.load(single), np.load(mpi)
    shares, counts = got["shares"], got["counts"]
    assert shares.sum() == pytest.approx(1.0)
    assert shares[-1] < 0.8 / procs and shares[-1] == shares.min(), shares
    assert counts.sum(axis=1).tolist() == [50] * 12 + [7]  # every sample, once
    even = np.diff(np.round(np.arange(procs + 1) * 50 / procs))  # before any measurement
    assert counts[0].tolist() == even.tolist() and counts[11, -1] < 0.8 * 50 / procs, counts
    for key in expected.keys() - {"shares", "counts"}:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-10, err_msg=key)


@needs_mpi
def test_divergence_on_one_rank_stops_all_with_the_one_process_message():
    single = checked(run([sys.executable, *worker("diverge", "--single")]))
    ranks = checked(mpiexec(2, *worker("diverge"), timeout=60))
    assert single.stdout.startswith("diverged: epoch 1:")
    assert ranks.stdout == single.stdout


@needs_mpi
@pytest.mark.parametrize("procs", [2, 3])
def test_each_rank_reads_its_slice_and_gather_rebuilds_the_batch(procs):
    result = checked(mpiexec(procs, *worker("slices"), timeout=60))
    assert result.stdout == "slices ok\n"


# -- the command line --------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("balance", [[], ["--balance"]])
def test_procs_launches_ranks_and_trains_the_one_process_model(balance, tmp_path):
    """`convnp train --procs 2` (mpiexec launched by convnp) vs one process; with
    --balance the split may move after 50 steps, which changes only the rounding."""
    args = ["--epochs", "1", "--model", "bouvrie"]
    two = convnp_train(*args, *balance, "--procs", "2", "--out", str(tmp_path / "two"))
    result = checked(run([sys.executable, *two]))
    assert "training on 2 MPI ranks" in result.stdout
    assert result.stdout.count("test accuracy") == 1  # rank 0 alone prints
    one = ["train", "--quiet", *args, "--procs", "1", "--out", str(tmp_path / "one")]
    assert cli.main(one) == 0
    two = io.load(tmp_path / "two" / "model.safetensors").state_dict()
    one = io.load(tmp_path / "one" / "model.safetensors").state_dict()
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=FLOAT32_ATOL, err_msg=key)


@needs_mpi
def test_sync_batchnorm_option_trains_the_one_process_model(tmp_path):
    """`convnp train --sync-batchnorm` on 2 ranks: batch norm over the global batch, so the
    model equals the one-process run (float32 rounding); the run records the option and a
    resume keeps it (the flag itself is refused with --resume)."""
    # SGD: Adam magnifies the rounding in the ~0 gradient of a bias just before batch norm
    args = ["--epochs", "1", "--arch", "6c5-bn-relu-2m-10f", "--seed", "2", "--val-split", "0",
            "--optimizer", "sgd", "--lr", "0.05"]  # fmt: skip
    two = convnp_train(*args, "--sync-batchnorm", "--out", str(tmp_path / "two"))
    checked(mpiexec(2, *two))
    one = ["train", "--quiet", *args, "--procs", "1", "--out", str(tmp_path / "one")]
    assert cli.main(one) == 0
    assert io.read_info(tmp_path / "two" / "model.safetensors")["sync_batch_norm"] is True
    two = io.load(tmp_path / "two" / "model.safetensors").state_dict()
    one = io.load(tmp_path / "one" / "model.safetensors").state_dict()
    assert any("running_var" in key for key in one)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=FLOAT32_ATOL, err_msg=key)
    resumed = convnp_train("--resume", str(tmp_path / "two"), "--sync-batchnorm")
    refused = run([sys.executable, *resumed])
    assert refused.returncode == 2 and "--sync-batchnorm cannot be combined" in refused.stderr


@needs_mpi
def test_resume_at_the_same_ranks_is_bit_identical_and_at_others_continues(tmp_path):
    common = ["--arch", SMALL_ARCH, "--schedule", "constant", "--seed", "3"]
    checked(mpiexec(2, *convnp_train(*common, "--epochs", "2", "--out", str(tmp_path / "a"))))
    checked(mpiexec(2, *convnp_train(*common, "--epochs", "1", "--out", str(tmp_path / "b"))))
    checked(mpiexec(2, *convnp_train("--resume", str(tmp_path / "b"), "--epochs", "2")))
    uninterrupted = io.load(tmp_path / "a" / "model.safetensors").state_dict()
    resumed = io.load(tmp_path / "b" / "model.safetensors").state_dict()
    for key in uninterrupted:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)
    # another number of ranks (here one process) continues the same run
    other = str(tmp_path / "b")
    assert cli.main(["train", "--quiet", "--resume", other, "--epochs", "3"]) == 0
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]


# -- faults ------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize(
    "fault, message",
    [
        ("kill", "Killed (signal 9)"),
        ("raise", "rank 1 of 2: RuntimeError: injected fault; stopping every rank"),
        ("hang", "waited more than 3 s for the other ranks"),
    ],
)
def test_a_failing_rank_stops_the_job_and_keeps_the_checkpoint(fault, message, tmp_path):
    """Rank 1 fails in epoch 2 (step 90 of 80 per epoch): the job ends within seconds,
    epoch 1's checkpoint is intact and --resume finishes the run."""
    out = str(tmp_path / "run")
    args = ["--model", "bouvrie", "--epochs", "2", "--mpi-timeout", "3", "--out", out]
    started = time.monotonic()
    result = mpiexec(2, *worker("cli", fault, "1", "90", "train", "--quiet", *args), timeout=90)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert time.monotonic() - started < 60
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    _, metadata = io.load_tensors(checkpoint)  # readable, and holds epoch 1
    assert [record["epoch"] for record in json.loads(metadata["history"])] == [1]
    assert not (tmp_path / "run" / "model.safetensors").exists()
    checked(mpiexec(2, *convnp_train("--resume", out, "--epochs", "2")))
    assert (tmp_path / "run" / "model.safetensors").exists()


@needs_mpi
@pytest.mark.parametrize(
    "first, second, differing",
    [
        (["--seed", "0"], ["--seed", "1"], "model"),
        ([], ["--balance"], "run settings, load balancing"),
    ],
)
def test_mismatched_settings_are_refused_at_start(first, second, differing, tmp_path):
    """Different seeds (so different initial weights), or load balancing on one rank only
    (the ranks would split the batches differently), are refused before any training."""
    out = tmp_path / "run"
    python = [sys.executable, *convnp_train("--epochs", "1", "--out", str(out))]
    command = [distributed.find_mpiexec(), "-n", "1", *python, *first,
               ":", "-n", "1", *python, *second]  # fmt: skip
    result = run(command, timeout=60)
    assert result.returncode == 2
    assert f"rank 1 differs from rank 0 in {differing}" in result.stderr
    assert result.stderr.count("convnp: error:") == 1
    assert not out.exists() or not any(out.iterdir())


@needs_mpi
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity masks")
def test_more_ranks_than_cores_are_warned_about():
    """Ranks wait for each other by polling, so more ranks than cores slow training (3 on 2
    cores: 7.7-8.5 s against 4.4-5.8 for 2 ranks, bouvrie's epoch): start() says so, once."""
    worker = [distributed.find_mpiexec(), "-n", "2", sys.executable, str(WORKER), "cores"]
    pinned = run([*worker, "pin"], timeout=60)  # both ranks on one core
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stderr.count("2 ranks share 1 core on this machine") == 1
    assert "slower than with one rank per core" in pinned.stderr
    if len(os.sched_getaffinity(0)) >= 2:
        free = run([*worker, "free"], timeout=60)
        assert free.returncode == 0, free.stderr
        assert "ranks share" not in free.stderr


@pytest.mark.parametrize("code", [11, 9, 1, 130])
def test_launcher_says_what_to_do_when_the_ranks_end_with_a_foreign_exit_code(
    code, monkeypatch, capsys, tmp_path
):
    """A job of ranks that crashed in MPI (a segmentation fault at start-up: 11) or lost a
    rank to kill -9 (9) ends with a code convnp never uses: the launcher points to --procs 1.
    convnp's own codes (a failed run, an interrupt) come with their own messages."""
    launched = []

    def launch(command: list[str], procs: int, **settings) -> int:
        launched.append(procs)
        return code

    monkeypatch.setattr(distributed, "launched_by_mpi", lambda: False)
    monkeypatch.setattr(distributed, "mpi_available", lambda: True)
    monkeypatch.setattr(distributed, "launch", launch)
    assert cli.main(["train", "--procs", "2", "--out", str(tmp_path)]) == code
    assert launched == [2]
    hint = "If MPI cannot run on this machine, train in one process: --procs 1"
    foreign = code not in cli.EXIT_CODES
    assert (hint in capsys.readouterr().err) == foreign
    assert foreign == (code in (11, 9))


# -- without MPI -------------------------------------------------------------------------
def test_without_mpi_training_runs_in_one_process(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(distributed, "mpi_available", lambda: False)
    assert cli._resolve_procs("auto") == 1
    assert cli.main(["train", "--procs", "2", "--out", str(tmp_path)]) == 2
    assert "--procs 2 needs mpi4py and mpiexec" in capsys.readouterr().err


def test_launcher_detection(monkeypatch):
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "2")
    assert distributed.launched_by_mpi()


def test_loader_fingerprint_tells_splits_apart():
    """Ranks holding the same images but different training splits are refused at start."""
    from convnp.data import DataLoader

    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)
    labels = np.arange(10) % 3

    def fingerprint(indices: list[int] | None) -> str:
        return distributed.loader_fingerprint(
            DataLoader(images, labels, 2, seed=0, indices=indices)
        )

    assert fingerprint([0, 1, 2]) == fingerprint([0, 1, 2])
    assert fingerprint([0, 1, 2]) != fingerprint([0, 1, 3])


def test_loader_fingerprint_hashes_an_array_shared_by_two_loaders_once(monkeypatch):
    """The training and validation loaders read the same images: one CRC of them."""
    from convnp.data import DataLoader

    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)
    labels = np.arange(10) % 3
    hashed = []
    crc = distributed._crc
    monkeypatch.setattr(distributed, "_crc", lambda *arrays: hashed.extend(arrays) or crc(*arrays))
    crcs: dict[int, int] = {}
    train = distributed.loader_fingerprint(
        DataLoader(images, labels, 2, seed=0, indices=[0, 1]), crcs
    )
    val = distributed.loader_fingerprint(
        DataLoader(images, labels, 2, seed=0, indices=[2, 3]), crcs
    )
    assert sum(array is images for array in hashed) == 1
    assert train != val
    assert train == distributed.loader_fingerprint(
        DataLoader(images, labels, 2, seed=0, indices=[0, 1])
    )
