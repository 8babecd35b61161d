"""``convnp train`` killed with SIGKILL, at random moments and inside a checkpoint write:
``--resume`` finishes the run, and its model and history equal an uninterrupted run's."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import safetensors.numpy

from convnp import runs

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

ARGS = ("train", "--arch", "2c5-2m-10f", "--batch-size", "500", "--val-split", "100",
        "--seed", "5", "--epochs", "2", "--quiet")  # fmt: skip
TIMING = ("seconds", "images_per_second")
MODEL, CHECKPOINT = "model.safetensors", "checkpoint.safetensors"

# Runs convnp's main in a child that kills itself (SIGKILL: no clean-up of any kind) at a
# chosen point of the second (last) checkpoint write: "write" after half of the bytes reached
# the temporary file, "replace" when the complete temporary file is about to be renamed.
KILL_INSIDE_WRITE = """
import os, signal, sys
point, args = sys.argv[1], sys.argv[2:]
checkpoints = []
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "write":
    real_fdopen = os.fdopen
    class HalfWritten:
        def __init__(self, stream): self.stream = stream
        def __enter__(self): return self
        def __exit__(self, *exc): return self.stream.__exit__(*exc)
        def __getattr__(self, name): return getattr(self.stream, name)
        def write(self, data):
            if len(data) > 5000:  # a checkpoint, not a history file
                checkpoints.append(len(data))
                if len(checkpoints) == 2:
                    self.stream.write(data[: len(data) // 2]); self.stream.flush(); die()
            return self.stream.write(data)
    os.fdopen = lambda *a, **k: HalfWritten(real_fdopen(*a, **k))
else:
    real_replace = os.replace
    def replace(source, target):
        if str(target).endswith("checkpoint.safetensors"):
            checkpoints.append(target)
            if len(checkpoints) == 2:
                die()
        return real_replace(source, target)
    os.replace = replace
from convnp.app.cli import main
sys.exit(main(args))
"""


def convnp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convnp", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def outcome(folder):
    """The finished run's weights, history (without timings) and test accuracy."""
    tensors = safetensors.numpy.load_file(folder / MODEL)
    history = json.loads((folder / "history.json").read_text())
    history = [{k: v for k, v in record.items() if k not in TIMING} for record in history]
    return tensors, history, runs.load_model(folder / MODEL)[1].test_accuracy


def checkpointed_epochs(folder) -> int:
    """Epochs in the run's checkpoint, which must load (never half-written)."""
    runs.load_model(folder / CHECKPOINT)
    with safetensors.safe_open(folder / CHECKPOINT, "np") as stream:
        return len(json.loads(stream.metadata()["history"]))


def assert_resumes_to(folder, expected):
    """What a kill left is loadable (or absent); --resume finishes it exactly as expected."""
    if (folder / CHECKPOINT).exists():
        assert checkpointed_epochs(folder) >= 1  # never a half-written checkpoint
    result = convnp("train", "--resume", str(folder), "--quiet")
    assert result.returncode == 0, result.stderr
    assert not list(folder.glob(".*.tmp"))
    assert_same(outcome(folder), expected)


def assert_same(got, expected):
    assert got[0].keys() == expected[0].keys()
    for name, value in expected[0].items():
        assert (got[0][name] == value).all(), name  # bit for bit
    assert got[1:] == expected[1:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill") / "reference"
    result = convnp(*ARGS, "--out", str(folder))
    assert result.returncode == 0, result.stderr
    return outcome(folder)


@pytest.mark.parametrize("point", ["write", "replace"])
def test_killed_while_writing_a_checkpoint(tmp_path, uninterrupted, point):
    folder = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILL_INSIDE_WRITE, point, *ARGS, "--out",
                            str(folder)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert list(folder.glob(".checkpoint.safetensors.*.tmp"))  # the interrupted write's file
    assert checkpointed_epochs(folder) == 1  # the first epoch's checkpoint is intact
    assert_resumes_to(folder, uninterrupted)


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_at_a_random_moment(tmp_path, uninterrupted, seed):
    folder = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "convnp", *ARGS, "--out", str(folder)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    started = time.monotonic()
    while not (folder / CHECKPOINT).exists() and child.poll() is None:
        assert time.monotonic() - started < 120, "no checkpoint after 2 minutes"
        time.sleep(0.02)
    # the rest of the run (an epoch, the test set, the model file) takes about a third of the
    # time to the first checkpoint (start-up and an epoch): kill somewhere in it
    time.sleep(random.Random(seed).uniform(0, (time.monotonic() - started) / 3))
    child.send_signal(signal.SIGKILL)
    # it finished first (the model file, written atomically, is its last act): nothing to resume
    if child.wait() == 0 or (folder / MODEL).exists():
        assert_same(outcome(folder), uninterrupted)
        return
    assert_resumes_to(folder, uninterrupted)
