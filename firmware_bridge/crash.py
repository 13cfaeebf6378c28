"""Crash points of the bridge: let a test kill it with SIGKILL at a named step (like edge.store.crash).

Production never sets the variable, and then :func:`crash_point` is one comparison. The kill -9 test
(``tests/integration/test_bridge_e2e.py``) starts ``edgeship bridge`` with::

    EDGESHIP_CRASH_AT=bridge_after_accept_40 edgeship bridge ...

and the process sends itself SIGKILL when it gets there, exactly as a power cut would. Points:

``bridge_after_accept_<N>``  the agent accepted the N-th sale event of this process; the bridge has
                             neither removed it from its queue nor acked it to the device (so both
                             re-send it with the same seq, and only the agent's deduplication keeps
                             it from being counted twice)

>>> crash_point("bridge_after_accept_1")   # no-op unless EDGESHIP_CRASH_AT names it
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["ENV", "crash_point"]

ENV = "EDGESHIP_CRASH_AT"
_target: str | None = os.environ.get(ENV) or None


def crash_point(name: str) -> None:
    """SIGKILL this process if ``EDGESHIP_CRASH_AT`` (read at import) names ``name``."""
    if _target is None or name != _target:
        return
    sys.stderr.write(f'{{"level": "CRITICAL", "logger": "{__name__}", "message": "crash point {name}: SIGKILL"}}\n')
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
