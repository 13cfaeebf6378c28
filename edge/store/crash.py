"""Crash points: let a test kill the agent with SIGKILL at a named step of an update.

Production never sets the variable, and then :func:`crash_point` is one dictionary look-up. The
kill -9 matrix test (``tests/integration/test_crash_matrix.py``) starts the real agent with::

    EDGESHIP_CRASH_AT=after_unpack edgeship agent ...

and the process sends itself SIGKILL when it reaches that point, exactly as a power cut or the
OOM killer would: no ``finally``, no ``atexit``, no flushed buffers. Points (in update order):

``after_chunk_<N>``                 N chunks of a bundle stored (edge.delivery.link)
``after_download``                  whole-file hash checked, ``downloads/<id>.tar`` renamed into place
``during_unpack``                   first member verified and written into the temp folder
``after_unpack``                    ``models/<version>/`` renamed into place, not yet gated or active
``before_pointer_write``            loaded, warmed up, gate passed; ``active.json`` still old
``after_pointer_write_before_swap`` ``active.json`` points at the new version; old model still serving
``after_swap``                      new model serving; history and pruning not done yet
``during_prune``                    one old version renamed away for deletion, others not yet
``during_rollback``                 rollback intent recorded in ``history.json``, pointer not yet moved

>>> crash_point("after_unpack")   # no-op unless EDGESHIP_CRASH_AT=after_unpack
"""

from __future__ import annotations

import logging
import os
import signal
import sys

__all__ = ["ENV", "POINTS", "armed", "crash_point"]

logger = logging.getLogger(__name__)

ENV = "EDGESHIP_CRASH_AT"
#: Every named point (``after_chunk_<N>`` is a family).
POINTS = (
    "after_chunk_<N>",
    "after_download",
    "during_unpack",
    "after_unpack",
    "before_pointer_write",
    "after_pointer_write_before_swap",
    "after_swap",
    "during_prune",
    "during_rollback",
)

_target: str | None = os.environ.get(ENV) or None


def armed() -> bool:
    """Whether any crash point is set (to skip building a point's name on hot paths)."""
    return _target is not None


def crash_point(name: str) -> None:
    """SIGKILL this process if ``EDGESHIP_CRASH_AT`` (read at import) names ``name``."""
    if _target is None or name != _target:
        return
    sys.stderr.write(f'{{"level": "CRITICAL", "logger": "{__name__}", "message": "crash point {name}: SIGKILL"}}\n')
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
