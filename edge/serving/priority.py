"""Serving first while background work runs in the same process (model installs, rollbacks).

An install verifies, unpacks, loads, warms up and gates a model on a background thread while the
HTTP event loop answers requests. Both need the GIL; CPython hands it over only every
``sys.getswitchinterval()`` (5 ms by default), so a request that arrives while the installer
computes waits up to 5 ms per hand-over. :func:`serving_first` lowers the interval while such work
runs (and restores it when the last one ends), so a request waits ≈0.5 ms instead::

    with serving_first():
        predictor = open_and_gate(bundle)     # requests keep being answered promptly meanwhile

Nested and concurrent uses are counted; the interval in force before the first is restored.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator

__all__ = ["serving_first", "BACKGROUND_SWITCH_INTERVAL_S"]

logger = logging.getLogger(__name__)

#: The GIL switch interval while background work runs (CPython's default is 0.005 s).
BACKGROUND_SWITCH_INTERVAL_S = 0.0005

_lock = threading.Lock()
_depth = 0
_saved = 0.0


@contextlib.contextmanager
def serving_first(interval: float = BACKGROUND_SWITCH_INTERVAL_S) -> Iterator[None]:
    """Lower the GIL switch interval to ``interval`` for the duration of the block (see module doc)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = sys.getswitchinterval()
            if interval < _saved:
                sys.setswitchinterval(interval)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                sys.setswitchinterval(_saved)
