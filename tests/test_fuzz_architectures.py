"""Fuzzing architecture strings and TOML architecture files."""

from __future__ import annotations

import json
import math

from fuzzing import HOSTILE_JSON, examples, fuzz, outcome, run_in_child, scratch_folder
from hypothesis import strategies as st

from convnp import io
from convnp.app import architectures

# In the child the per-layer cap is lowered, so any size that passes it is cheap to build and
# a MemoryError under the address-space limit can only mean an unchecked allocation.
FUZZ_LAYER_CAP = 2**22

NUMBER = st.one_of(
    st.integers(0, 12), st.integers(0, 10**6), st.sampled_from([0, 2**31, 10**12, 10**40])
)
OPTIONAL = st.none() | NUMBER


def _suffix(letter: str, value: int | None) -> str:
    return "" if value is None else f"{letter}{value}"


TOKEN = st.one_of(
    st.builds(
        lambda n, k, p, s: f"{n}c{k}{_suffix('p', p)}{_suffix('s', s)}",
        NUMBER,
        NUMBER,
        OPTIONAL,
        OPTIONAL,
    ),  # fmt: skip
    st.builds(
        lambda k, kind, s: f"{k}{kind}{_suffix('s', s)}", NUMBER, st.sampled_from("sbm"), OPTIONAL
    ),  # fmt: skip
    st.builds("{}f".format, NUMBER),
    st.sampled_from(["sigm", "tanh", "stanh", "relu", "bn", "gap", "", "d", "d.", "dnan"]),
    st.builds("d{}".format, st.floats(0, 2) | NUMBER),
    st.text(max_size=6),
)
ARCHITECTURE = st.one_of(st.lists(TOKEN, max_size=10).map("-".join), st.text(max_size=40))
INPUT_SHAPE = st.sampled_from([(1, 28, 28), (3, 8, 8), (1, 5, 5), (2, 1, 1)])


def fuzz_strings(count: int) -> dict:
    architectures.MAX_LAYER_PARAMETERS = FUZZ_LAYER_CAP

    def check(case: tuple[str, tuple[int, ...], int]) -> str:
        text, shape, classes = case
        return outcome(lambda: architectures.from_string(text, shape, classes), "architecture")

    return fuzz(count, st.tuples(ARCHITECTURE, INPUT_SHAPE, st.integers(1, 12)), check)


# -- TOML ----------------------------------------------------------------------------------
def _toml_value(value: object) -> str:
    """A JSON-like value as TOML (None has no TOML form: it becomes an empty inline table)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON-compatible for these
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


KEYS = st.sampled_from(
    ["in_channels", "out_channels", "kernel_size", "in_features", "out_features", "stride",
     "padding", "bias", "p", "output_size", "num_features", "input_size", "groups"]
) | st.text(min_size=1, max_size=6)  # fmt: skip
LAYER = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(io.LAYER_TYPES)) | HOSTILE_JSON},
    optional={"config": st.dictionaries(KEYS, HOSTILE_JSON, max_size=5)},
)


@st.composite
def toml_files(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["layers", "layers", "layers", "dotted", "nested", "keys", "text"]))
    if kind == "dotted":
        return "a" + ".b" * draw(st.integers(1, 5_000)) + " = 1\n"
    if kind == "nested":
        depth = draw(st.integers(1, 50_000))
        return "a = " + "[" * depth + "]" * depth + "\n"
    if kind == "keys":
        return "".join(f"k{i} = 1\n" for i in range(draw(st.integers(1, 20_000))))
    if kind == "text":
        return draw(st.text(max_size=80))
    tables = []
    for layer in draw(st.lists(LAYER, max_size=5)):
        lines = [f"type = {_toml_value(layer['type'])}"]
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in layer.get("config", {}).items()]
        tables.append("[[layers]]\n" + "\n".join(lines))
    return "\n".join(tables)


def fuzz_toml(count: int) -> dict:
    architectures.MAX_LAYER_PARAMETERS = FUZZ_LAYER_CAP
    path = scratch_folder() / "fuzzed.toml"

    def check(text: str) -> str:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return outcome(lambda: architectures.from_toml(path), str(path))

    return fuzz(count, toml_files(), check)


def test_fuzz_architecture_strings():
    counts = run_in_child("test_fuzz_architectures", "fuzz_strings", examples(300))
    assert counts["inputs"] >= examples(300) // 2 and counts.get("accepted", 0) > 0


def test_fuzz_toml_architectures():
    counts = run_in_child("test_fuzz_architectures", "fuzz_toml", examples(200))
    assert counts["inputs"] >= examples(200) // 2 and counts.get("refused", 0) > 0
