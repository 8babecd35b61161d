"""Fuzzing with hypothesis: hostile inputs for every parser, run in a child process.

Each ``tests/test_fuzz_*.py`` defines targets ``fuzz_<name>(examples) -> counts`` and runs
them through ``run_in_child``: a fresh interpreter whose address space is capped by
``resource.setrlimit(RLIMIT_AS)`` (a loader that starts allocating what a hostile header
announces fails there with MemoryError instead of taking the machine down) and whose
wall-clock time is bounded (a hang fails the test). The contract checked for every input:
it loads, or it raises a ValueError whose message names the file (or the string) — never
another exception.

``CONVNP_FUZZ_EXAMPLES=N`` scales every target to N examples (the CI default is small);
each test prints its counts (``pytest -s`` shows them): inputs checked, accepted, refused.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ADDRESS_SPACE_LIMIT = 2 * 2**30  # 2 GiB: far above what a correct loader needs here
TESTS = Path(__file__).resolve().parent


def examples(default: int) -> int:
    """The CI default, or CONVNP_FUZZ_EXAMPLES for a longer local run."""
    return int(os.environ.get("CONVNP_FUZZ_EXAMPLES", default))


def run_in_child(module: str, target: str, count: int, timeout: float = 300) -> dict[str, int]:
    """Run ``module.target(count)`` in a child under the address-space limit; its counts."""
    code = (
        "import json, resource\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_LIMIT}, {ADDRESS_SPACE_LIMIT}))\n"
        f"import {module}\n"
        f"print(json.dumps({module}.{target}({count})))\n"
    )
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    # one BLAS thread: each thread reserves address space the limit would count
    env = {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, f"{module}.{target} failed:\n{result.stderr[-6000:]}"
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{module}.{target}: {counts}")
    return counts


def scratch_folder() -> Path:
    """A temporary folder for the fuzzed files, removed when the child process exits."""
    folder = tempfile.mkdtemp(prefix="convnp-fuzz-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def fuzz(count: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], str]) -> dict:
    """Run ``check`` on ``count`` generated inputs; ``check`` returns "accepted" or "refused"
    (and raises on a broken contract). Deterministic, so CI runs are reproducible."""
    tally: Counter[str] = Counter()

    @settings(
        max_examples=count,
        deadline=None,
        database=None,  # nothing written into the checkout
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        tally[check(value)] += 1  # inputs hypothesis discards mid-draw are not counted

    run()
    return {"inputs": sum(tally.values()), **tally}


def outcome(call: Callable[[], Any], name: str) -> str:
    """ "accepted" if ``call()`` returns, "refused" if it raises a ValueError naming ``name``;
    any other exception (or a message without the name) propagates and fails the target."""
    try:
        call()
    except ValueError as error:
        if name not in str(error):
            raise AssertionError(f"error does not name {name!r}: {error}") from error
        return "refused"
    return "accepted"


# -- hostile values ---------------------------------------------------------------------------
EDGE_INTS = st.sampled_from(
    [
        0,
        1,
        -1,
        2,
        3,
        2**12,
        2**16,
        2**20,
        2**24,
        2**31 - 1,
        2**31,
        2**32 - 1,
        2**32,
        2**53,
        2**63,
        -(2**63),
        10**12,
        10**30,
    ]
)
EDGE_FLOATS = st.sampled_from([0.0, -0.0, 0.5, 1.0, 1e-300, 1e300, float("inf"), float("nan")])
HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 40),
    EDGE_INTS,
    st.integers(),
    EDGE_FLOATS,
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["same", "valid", "full", "per_pair", "per_input", "Linear", "Conv2d", ""]),
)
HOSTILE_JSON = st.recursive(
    HOSTILE_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def mutate(document: Any, data: st.DataObject) -> Any:
    """``document`` with one node replaced, deleted or added (at a drawn place)."""
    if isinstance(document, (dict, list)) and document and data.draw(st.booleans()):
        keys = list(document) if isinstance(document, dict) else list(range(len(document)))
        key = data.draw(st.sampled_from(keys))
        copy = dict(document) if isinstance(document, dict) else list(document)
        action = data.draw(st.sampled_from(["descend", "descend", "delete", "add"]))
        if action == "descend":
            copy[key] = mutate(copy[key], data)
        elif action == "delete":
            del copy[key]
        elif isinstance(copy, dict):
            copy[data.draw(st.text(max_size=8))] = data.draw(HOSTILE_JSON)
        else:
            copy.insert(key, data.draw(HOSTILE_JSON))
        return copy
    return data.draw(HOSTILE_JSON)


def hostile_json_text(document: Any, data: st.DataObject) -> str:
    """JSON text of a mutated ``document``, or text no JSON parser should accept calmly."""
    kind = data.draw(st.sampled_from(["mutated", "mutated", "mutated", "nested", "raw", "digits"]))
    if kind == "nested":
        depth = data.draw(st.integers(1, 200_000))
        return "[" * depth + "]" * depth
    if kind == "raw":
        return data.draw(st.text(max_size=40))
    if kind == "digits":
        return "[" + "9" * data.draw(st.integers(1, 20_000)) + "]"
    return json.dumps(mutate(document, data))


def mutate_bytes(blob: bytes, data: st.DataObject) -> bytes:
    """Truncated, extended or overwritten bytes (often within the first 200: the header)."""
    kind = data.draw(st.sampled_from(["overwrite", "overwrite", "truncate", "append", "length"]))
    if kind == "truncate":
        return blob[: data.draw(st.integers(0, len(blob)))]
    if kind == "append":
        return blob + data.draw(st.binary(min_size=1, max_size=64))
    if kind == "length":  # safetensors and IDX begin with sizes: make them lie
        return data.draw(st.binary(min_size=8, max_size=8)) + blob[8:]
    position = data.draw(st.integers(0, len(blob) - 1) | st.integers(0, min(len(blob), 200) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=8))
    return blob[:position] + patch + blob[position + len(patch) :]
