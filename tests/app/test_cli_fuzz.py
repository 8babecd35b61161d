"""Every subcommand's arguments, fuzzed (hypothesis): whatever a user types ends in exit 0,
1 or 2, and an error is exactly one ``convnp[ <command>]: error: ...`` line (``predict``:
one per unreadable file), never a traceback.

The work behind a valid command line that would take long (training, figures, gradient
checks, benchmarks) is replaced by a marker: reaching it means the arguments passed every
check. Downloads are disabled. Files are only written under a temporary folder.
"""

from __future__ import annotations

import contextlib
import io as text_io
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convnp import schedules, train
from convnp.app import cli, zoo
from convnp.data import DATASETS, datasets, load_dataset


class ReachedTheWork(Exception):
    """The arguments were accepted and the long-running work was about to start."""


def _reached(*args, **kwargs):
    raise ReachedTheWork


def _offline(*args, **kwargs):
    raise OSError("offline (downloads are disabled in this test)")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a finished run, an image, and a few wrong kinds of file."""
    folder = tmp_path_factory.mktemp("fuzz")
    tiny = ["--arch", "2c5-2m-10f", "--batch-size", "500", "--epochs", "1", "--val-split", "100"]
    with contextlib.redirect_stdout(text_io.StringIO()):
        assert cli.main(["train", *tiny, "--quiet", "--out", str(folder / "run")]) == 0
    np.save(folder / "digit.npy", load_dataset("mnist5k").test_images[0, 0])
    (folder / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (folder / "notes.txt").write_text("[[layers]]\ntype = 3\n")
    (folder / "empty").mkdir()
    return folder


@pytest.fixture
def sandbox(workdir, monkeypatch, tmp_path):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CONVNP_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    monkeypatch.setattr(datasets, "fetch", _offline)
    monkeypatch.setattr(train, "fit", _reached)
    monkeypatch.setattr(cli, "gradcheck", _reached)
    monkeypatch.setattr("convnp.app.plot.plot_run", _reached)
    monkeypatch.setattr("subprocess.run", _reached)
    return workdir


PATHS = ["run", "run/model.safetensors", "run/checkpoint.safetensors", "junk.safetensors",
         "digit.npy", "notes.txt", "empty", "absent", "out.onnx", "figures", "run/x"]  # fmt: skip
SPECIAL = ["", "-", "--", "0", "-1", "1", "2", "0.5", "1.0", "1e9", "1e400", "nan", "inf",
           "-inf", "99999999999999999999", "0x10", " 3", "3 ", "+4", "--help", "--version",
           "ø", "\x00", "a\nb"]  # fmt: skip


def _text_that_stays_here(text: str) -> bool:
    """Random text may name a file to write: keep it inside the sandbox folder."""
    return ".." not in text and not text.startswith(("/", "~", "\\"))


VALUES = st.one_of(
    st.sampled_from(SPECIAL + PATHS),
    st.integers(-(10**20), 10**20).map(str),
    st.floats().map(repr),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12).filter(_text_that_stays_here),
)
# Values a user could mean, so that examples also get past the first check.
LIKELY = {
    "--model": list(zoo.RECIPES),
    "--arch": ["2c5-2m-10f", "4c5-relu-2m-16f-relu", "6c5s0", "", "10f", "2m-10f"],
    "--config": ["notes.txt", "absent", "run"],
    "--data": list(DATASETS),
    "--data-dir": ["empty", "run", "absent"],
    "--val-split": ["0", "100", "0.1", "3999", "4000", "0.99"],
    "--epochs": ["1", "3"],
    "--batch-size": ["1", "64", "100000"],
    "--lr": ["0.1", "1e-3", "1e30"],
    "--optimizer": ["sgd", "adam"],
    "--momentum": ["0.9", "0"],
    "--weight-decay": ["0", "5e-4"],
    "--schedule": list(schedules.SCHEDULES),
    "--warmup": ["0", "10", "100000"],
    "--seed": ["0", "7", "18446744073709551616"],
    "--out": ["new", "run", "notes.txt", "empty", "notes.txt/x"],
    "--resume": ["run", "run/checkpoint.safetensors", "empty", "junk.safetensors"],
    "--samples": ["1", "5"],
    "--input-shape": ["1", "28"],
    "--opset": ["17", "18", "16"],
    "--image": ["0", "999", "5000"],
}
FLAGS = {"--quiet", "--nesterov"}
MODELS = ["run", "run/model.safetensors", "run/checkpoint.safetensors"]
IMAGES = ["digit.npy", "digit.npy", "notes.txt"]
COMMANDS = {  # positional arguments (what a user would give, or not), options
    "train": ([], ["--model", "--arch", "--config", "--data", "--data-dir", "--val-split",
                   "--epochs", "--batch-size", "--lr", "--optimizer", "--momentum", "--nesterov",
                   "--weight-decay", "--schedule", "--warmup", "--seed", "--out", "--resume",
                   "--quiet"]),
    "evaluate": ([MODELS], ["--data", "--data-dir"]),
    "predict": ([MODELS, IMAGES, IMAGES], []),
    "summary": ([MODELS], ["--model"]),
    "gradcheck": ([], ["--model", "--samples", "--seed"]),
    "export": ([MODELS, ["m.onnx", "sub/m.onnx", "run", "notes.txt/m.onnx"]],
               ["--input-shape", "--opset"]),
    "plot": ([MODELS, ["figures", "notes.txt", "empty"]], ["--image", "--data", "--data-dir"]),
    "bench": ([], ["--help", "--no-scaling"]),
}  # fmt: skip
EXAMPLES = 60  # per subcommand
ONE_LINE_ERROR = re.compile(r"convnp( [a-z]+)?: error: [^\n]*\n")


@st.composite
def command_lines(draw, command: str) -> list[str]:
    positionals, options = COMMANDS[command]
    argv = [command]
    for likely in positionals[: draw(st.integers(0, len(positionals)))]:
        argv.append(draw(st.one_of(*[st.sampled_from(likely)] * 4, st.sampled_from(PATHS), VALUES)))
    unknown = st.sampled_from(["--bogus", "-x", "--epoch", "--Model"])  # typos, now and then
    known = [st.sampled_from(options)] * 9 if options else []
    for option in draw(st.lists(st.one_of(*known, unknown), max_size=4)):
        argv.append(option)
        if option not in FLAGS:
            argv.append(draw(st.one_of(st.sampled_from(LIKELY.get(option, ["x"])), VALUES)))
    return argv


def run_main(argv: list[str]) -> tuple[int | str, str]:
    stdout, stderr = text_io.StringIO(), text_io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(argv)
        except SystemExit as exit:
            code = exit.code
        except ReachedTheWork:
            code = "reached"
    return code, stderr.getvalue()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_fuzzed_arguments_end_in_a_code_and_at_most_one_error_line(sandbox, command):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(argv=command_lines(command))
    def check(argv):
        code, err = run_main(argv)
        assert code in (0, 1, 2, "reached"), (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        if code == 2 and command == "predict":  # each unreadable image file, then a summary
            assert all(ONE_LINE_ERROR.fullmatch(line) for line in err.splitlines(True)), err
        elif code == 2:
            assert ONE_LINE_ERROR.fullmatch(err), (argv, err)
        elif code == 1:
            assert err.count("\n") == 1 and err.startswith("convnp"), (argv, err)

    check()
