"""The active predictor, swapped atomically; the old one is closed when its last request ends.

>>> slot = ModelSlot()
>>> with slot.use() as predictor:
...     predictor is None            # no model yet: callers answer 503
True

Serving code holds a reference only for the duration of one request::

    with slot.use() as predictor:
        predictions = predictor.predict(rows)

and the updater swaps: ``slot.swap(new_predictor)`` returns at once; the previous predictor is
closed by whichever thread releases it last (the swapper if it was idle).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Protocol

__all__ = ["ModelSlot", "Closeable"]

logger = logging.getLogger(__name__)


class Closeable(Protocol):
    def close(self) -> None: ...


class _Lease:
    __slots__ = ("value", "refs", "retired")

    def __init__(self, value: Closeable) -> None:
        self.value = value
        self.refs = 0
        self.retired = False


class ModelSlot:
    """Holds at most one active predictor with a reference count per lease."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lease: _Lease | None = None
        self._retiring: list[_Lease] = []  # swapped out, still held by in-flight requests

    @property
    def current(self) -> Closeable | None:
        """The active predictor (for reading properties; use :meth:`use` to call it)."""
        lease = self._lease
        return lease.value if lease else None

    @contextlib.contextmanager
    def use(self) -> Iterator[Closeable | None]:
        """Borrow the active predictor (or None) for one request."""
        with self._lock:
            lease = self._lease
            if lease is not None:
                lease.refs += 1
        try:
            yield lease.value if lease else None
        finally:
            if lease is not None:
                self._release(lease)

    def acquire(self) -> tuple[Closeable | None, object]:
        """:meth:`use` without a context manager (the hot path): the predictor (or None) and a
        token that must be given to :meth:`release` exactly once."""
        with self._lock:
            lease = self._lease
            if lease is not None:
                lease.refs += 1
        return (lease.value if lease else None), lease

    def release(self, token: object) -> None:
        """End a lease :meth:`acquire` took."""
        if token is not None:
            self._release(token)  # type: ignore[arg-type]

    @property
    def retiring(self) -> int:
        """Swapped-out predictors still serving in-flight requests (closed when those end)."""
        with self._lock:
            return len(self._retiring)

    def _release(self, lease: _Lease) -> None:
        with self._lock:
            lease.refs -= 1
            close = lease.retired and lease.refs == 0
            if close:
                self._retiring.remove(lease)
        if close:
            self._close(lease)

    def swap(self, new: Closeable | None) -> None:
        """Make ``new`` active; the previous one is closed once no request holds it.

        Atomic for readers: a request gets the old or the new predictor, never none in between.
        Swapping in the predictor that is already active changes nothing (it is not closed)."""
        with self._lock:
            old = self._lease
            if old is not None and new is old.value:
                return
            self._lease = _Lease(new) if new is not None else None
            close = False
            if old is not None:
                old.retired = True
                close = old.refs == 0
                if not close:
                    self._retiring.append(old)
        if close:
            assert old is not None
            self._close(old)

    def close(self) -> None:
        """Retire the active predictor (closed now, or when its last request ends)."""
        self.swap(None)

    @staticmethod
    def _close(lease: _Lease) -> None:
        try:
            lease.value.close()
        except Exception:  # a failing close must not break serving
            logger.exception("closing the previous model failed")
