"""Process-level memory settings of the agent: what a device does not need, it does not keep.

Two calls, both no-ops where they do not apply (another libc, a platform without ``mallopt``)::

    from edge.memory import tune_process, release_free_memory
    tune_process()          # first thing in the agent's entry point, before numpy is imported
    ...                     # imports, Agent(config).start()
    release_free_memory()   # after start-up and after each model swap (Agent does this itself)

``tune_process`` sets ``OPENBLAS_NUM_THREADS=1`` unless the environment chose otherwise (the agent
does no BLAS work worth a thread pool: inference runs in LiteRT/ONNX Runtime with their own
``threads`` setting; each OpenBLAS worker is a thread with its own stack and buffers) and caps
glibc's malloc arenas at :data:`ARENA_MAX` (``MALLOC_ARENA_MAX`` in the environment wins; glibc's
default is 8 per core, each arena keeping its own free memory). Only the agent calls it: cloud
commands keep numpy's and glibc's defaults.

``release_free_memory`` is glibc's ``malloc_trim(0)``: pages that start-up (imports, bundle
verification, the model load and warm-up) or a model swap freed inside the heap go back to the
system instead of staying in the process's RSS. Measured with ``bench/serving.py``: see
BENCHMARKS.md ("agent RSS").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["ARENA_MAX", "release_free_memory", "tune_process"]

logger = logging.getLogger(__name__)

#: glibc malloc arenas at most (mallopt M_ARENA_MAX) unless MALLOC_ARENA_MAX is set.
ARENA_MAX = 2
_M_ARENA_MAX = -8  # glibc malloc.h

_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not glibc


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt"):
                    _libc = lib
            except OSError:
                pass
    return _libc or None


def tune_process(environ: dict[str, str] | None = None) -> dict[str, str]:
    """One OpenBLAS thread and at most :data:`ARENA_MAX` malloc arenas for this process; returns
    what it set. Call before numpy is imported (OpenBLAS reads its thread count when it loads);
    a value already in the environment is kept.

    >>> env = {"OPENBLAS_NUM_THREADS": "4"}
    >>> tune_process(env)["OPENBLAS_NUM_THREADS"]
    '4'
    """
    env = os.environ if environ is None else environ
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    done = {"OPENBLAS_NUM_THREADS": env["OPENBLAS_NUM_THREADS"]}
    if "numpy" in sys.modules and environ is None:
        logger.debug("tune_process after numpy was imported: OpenBLAS keeps its thread count")
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in env:  # glibc read it itself at start-up
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)
        done["malloc_arena_max"] = str(ARENA_MAX)
    return done


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``); False elsewhere.

    >>> release_free_memory() in (True, False)
    True
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
