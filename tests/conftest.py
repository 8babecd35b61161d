from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20061128)


@pytest.fixture(autouse=True, scope="session")
def _one_process_training():
    """`convnp train` launches MPI ranks on every core by default; the tests that want ranks
    ask for them (tests/runtime/test_distributed.py), the rest train in one process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVNP_PROCS", "1")
        yield


@pytest.fixture(autouse=True, scope="session")
def _data_cache_in_a_temporary_folder(tmp_path_factory):
    """Loading a gzip data set writes its decompressed copy into the cache: the tests' copies
    go to a temporary folder, not the user's ~/.cache/convnp."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVNP_DATA", str(tmp_path_factory.mktemp("convnp-data")))
        yield


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """PyTorch's second thread only spins on the small tensors of the parity tests (seen on a
    2-core machine: 0.5 s instead of 2 ms a step); one thread keeps the suite fast."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
