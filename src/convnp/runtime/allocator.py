"""Keep freed memory for reuse: a process-wide glibc malloc setting that speeds convnp up.

A training step allocates the same large arrays every time (layer outputs, input
gradients: megabytes each; the patch matrices of convolutions live in bounded workspaces
that are reused, see ``convnp.layers._conv_ops``). By default glibc returns freed blocks to
the operating system (above its mmap threshold, and when the top of the heap grows past its
trim threshold) and maps fresh, zero-filled pages for the next step, so a step pays page
faults on every byte it touches. Raising glibc's mmap and trim thresholds keeps those
blocks in the heap for reuse. The ``convnp`` command calls this at start-up; library users
may call it once. It changes the allocator of the whole process, so the library never calls
it on import.

More needed since the bounded workspaces: a process whose large temporaries were freed
every step had glibc raise its mmap threshold to their size on its own (dynamic threshold),
but the workspaces keep theirs, so without this call every layer output above 128 KiB is a
fresh mapping. Measured (eval forward of a 64-sample block, 1 BLAS thread, CPU time, switch
off -> on): bouvrie 616 -> 0.4 page faults, 5.3 -> 2.7 ms; lenet5 556 -> 0.3 faults, 5.0 ->
3.5 ms (06cb8bd, without the workspaces: 0.2 faults and the same time either way). Earlier
(CPU seconds per step): VGG-style net at 3x96x96, batch 32: training 1.65-1.92 -> 1.57-1.63
s, inference 0.59-0.70 -> 0.47-0.55 s; before the workspaces it gave `modern` training
1681 -> 1882 images/s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 2**30
_TOP_PAD = 64 * 2**20


def keep_freed_memory() -> bool:
    """Tune glibc malloc as above; returns False (and does nothing) where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    settings = (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD),
    )
    return all(mallopt(option, value) == 1 for option, value in settings)
