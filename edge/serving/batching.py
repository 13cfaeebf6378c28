"""Adaptive micro-batching: concurrent requests are encoded and inferred together, with a bounded wait.

Encoding has a fixed cost per call that dwarfs its cost per row (≈150 µs for one row, ≈210 µs for
64 on the reference machine) and a runtime invoke has one too, so answering concurrent requests as
one batch multiplies throughput. A single worker thread takes the requests queued so far and runs
them as one batch; while it works, new requests queue up and form the next batch (natural
batching under load). It waits for more only when more are likely: when requests were recently
in flight together, it holds the first one until as many are queued, ``max_rows`` rows are
queued, or ``max_wait`` (1 ms by default) has passed. A lone client is never held back: when
nothing else is in flight and nothing was recently, a request runs at once on the caller's own
thread (no hand-off to the worker), exactly as without batching. On an asyncio loop
(:meth:`MicroBatcher.submit_async`) the same holds: a request that finds no batch forming on its
loop and nothing in flight elsewhere runs inline, without a future or a loop iteration's wait;
only requests that overlap one already waiting join its batch.

::

    batcher = MicroBatcher(run, BatchingConfig(max_wait_ms=1.0, max_rows=256))
    future = batcher.submit(key=predictor, item=prepared, rows=len(prepared))   # any thread
    result = future.result()                           # or: await asyncio.wrap_future(future)
    batcher.close()

``run(key, items)`` gets the items of one key (one predictor) in submission order and returns one
result per item; an exception fails every item of that call. The queue is bounded: past
``max_queue`` waiting requests :class:`Overloaded` is raised (HTTP 503), never unbounded memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar


from edge.monitoring.metrics import BatcherMetrics, BatchMetrics
from pydantic import BaseModel, ConfigDict, Field

from edge.serving.errors import Overloaded

__all__ = ["BatchingConfig", "MicroBatcher", "Overloaded", "BatchMetrics"]

logger = logging.getLogger(__name__)

K = TypeVar("K")
_DECAY = 0.95  # per arrival: a burst's concurrency is forgotten after a few dozen lone requests
T = TypeVar("T")


class BatchingConfig(BaseModel):
    """Adaptive micro-batching of concurrent prediction requests (HTTP, MQTT, serial)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Batch concurrent requests; False = each request runs alone.")
    max_wait_ms: float = Field(
        default=1.0, ge=0.0, le=50.0, description="Longest a request is held for others to join its batch."
    )
    max_rows: int = Field(default=256, ge=1, le=65536, description="Most rows one batch encodes and infers.")
    max_queue: int = Field(default=1024, ge=1, description="Requests waiting at most; beyond, 503 (overloaded).")
    endpoint_max_rows: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Most rows POST /v1/predict:batch accepts (413 beyond)."
    )


class _Job(Generic[K, T]):
    __slots__ = ("key", "item", "rows", "future", "queued_at")

    def __init__(self, key: K, item: T, rows: int, future: Any = None) -> None:
        self.key, self.item, self.rows = key, item, rows
        self.future: Any = future if future is not None else Future()  # concurrent or asyncio future
        self.queued_at = time.perf_counter()

    def claim(self) -> bool:
        """Mark running; False if the waiter gave up (cancelled) before its batch started."""
        f = self.future
        return f.set_running_or_notify_cancel() if isinstance(f, Future) else not f.done()


class _LoopQueue:
    """Requests of one asyncio event loop waiting for the loop's next batch."""

    __slots__ = ("jobs", "rows", "scheduled", "seen", "first")

    def __init__(self) -> None:
        self.jobs: list[_Job[Any, Any]] = []
        self.rows = 0
        self.scheduled = False
        self.seen = 0
        self.first = 0.0


class MicroBatcher(Generic[K, T]):
    """Runs concurrent requests in batches; see the module docstring.

    Two ways in: :meth:`submit` from any thread (a worker thread runs the batches; a lone request
    runs at once on the caller's thread) and ``await`` :meth:`submit_async` on an asyncio event loop
    (HTTP): requests whose handlers run in the same loop iterations form one batch, run on the loop
    itself — no thread hand-off, and a lone request waits one loop iteration.
    """

    def __init__(
        self,
        run: Callable[[K, list[T]], Sequence[Any]],
        config: BatchingConfig | None = None,
        *,
        metrics: BatcherMetrics | None = None,
        name: str = "live",
        inline_when_idle: bool = True,
    ) -> None:
        self.config = config or BatchingConfig()
        self._inline = inline_when_idle
        self._run = run
        self._metrics = metrics
        self._max_wait = self.config.max_wait_ms / 1000.0
        self._queue: collections.deque[_Job[K, T]] = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._inflight = 0  # submitted and not finished (queued or running)
        self._concurrency = 1.0  # recent peak of requests in flight at an arrival, decaying per arrival
        self._loops: dict[Any, _LoopQueue] = {}
        self._thread = threading.Thread(target=self._work, name=f"edgeship-batch-{name}", daemon=True)
        self._thread.start()

    # -- submitting from threads ------------------------------------------------------------
    def submit(self, key: K, item: T, rows: int = 1) -> Future[Any]:
        """Queue one request; its Future gets the result (or the exception) of its batch."""
        job: _Job[K, T] = _Job(key, item, max(1, rows))
        with self._cond:
            if self._closed:
                raise Overloaded("the batcher is closed")
            if len(self._queue) >= self.config.max_queue:
                if self._metrics is not None:
                    self._metrics.rejected.inc()
                raise Overloaded(f"{len(self._queue)} requests are already waiting")
            self._inflight += 1
            self._concurrency = max(float(self._inflight), self._concurrency * _DECAY)
            inline = self._inline and self._inflight == 1 and self._concurrency < 1.5
            if not inline:
                self._queue.append(job)
                self._queued_rows += job.rows
                self._cond.notify()
        if inline:  # nothing else in flight, none expected: no hand-off to the worker
            try:
                self._execute([job])
            finally:
                with self._cond:
                    self._inflight -= 1
        return job.future

    @property
    def pending(self) -> int:
        """Requests queued and not yet started."""
        return len(self._queue) + sum(len(q.jobs) for q in list(self._loops.values()))

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the worker. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- submitting on an event loop --------------------------------------------------------
    async def submit_async(self, key: K, item: T, rows: int = 1, *, alone: bool = True) -> Any:
        """Queue one request on the running loop's batch and wait for its result. ``alone``: the
        caller knows of no other request in flight on its loop (e.g. uvicorn's running request
        tasks); then, if no batch is forming either, it runs inline."""
        if self._closed:
            raise Overloaded("the batcher is closed")
        loop = asyncio.get_running_loop()
        q = self._loops.get(loop)
        if q is None:
            q = self._loops[loop] = _LoopQueue()
        if len(q.jobs) >= self.config.max_queue:
            if self._metrics is not None:
                self._metrics.rejected.inc()
            raise Overloaded(f"{len(q.jobs)} requests are already waiting")
        if alone and self._inline and not q.jobs:
            with self._cond:
                alone = self._inflight == 0
                if alone:
                    self._inflight += 1
            if alone:  # nothing waits on this loop, nothing in flight elsewhere: no hand-off, no wait
                try:
                    return self._run_alone(key, item, max(1, rows))
                finally:
                    with self._cond:
                        self._inflight -= 1
        job: _Job[K, T] = _Job(key, item, max(1, rows), loop.create_future())
        q.jobs.append(job)
        q.rows += job.rows
        if q.rows >= self.config.max_rows:
            self._flush_loop(q)
        elif not q.scheduled:
            q.scheduled, q.seen, q.first = True, len(q.jobs), job.queued_at
            loop.call_soon(self._tick, loop, q)
        return await job.future

    def _tick(self, loop: asyncio.AbstractEventLoop, q: _LoopQueue) -> None:
        """After the loop ran what was ready: wait one more iteration while the batch still grows."""
        if not q.scheduled:
            return
        n = len(q.jobs)
        if n > q.seen and q.rows < self.config.max_rows and time.perf_counter() - q.first < self._max_wait:
            q.seen = n
            loop.call_soon(self._tick, loop, q)
            return
        self._flush_loop(q)

    def _flush_loop(self, q: _LoopQueue) -> None:
        jobs, q.jobs, q.rows, q.scheduled = q.jobs, [], 0, False
        if jobs:
            self._execute(jobs)

    # -- running ----------------------------------------------------------------------------
    def _run_alone(self, key: K, item: T, rows: int) -> Any:
        """One request, right here (a batch of one: its result, or its exception raised)."""
        m = self._metrics
        if m is not None:
            m.rows.observe(rows)
            m.requests.observe(1)
        results = self._run(key, [item])
        if len(results) != 1:
            raise RuntimeError(f"batch function returned {len(results)} results for 1 item")
        return results[0]

    def _execute(self, batch: list[_Job[K, T]], on_done: Callable[[], None] | None = None) -> None:
        """Run a batch (one call per key, in order) and settle every job's future."""
        started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.rows.observe(sum(j.rows for j in batch))
            self._metrics.requests.observe(len(batch))
            for j in batch:
                self._metrics.queued.observe(started - j.queued_at)
        groups: dict[int, list[_Job[K, T]]] = {}
        for job in batch:
            groups.setdefault(id(job.key), []).append(job)
        outcomes: list[tuple[_Job[K, T], Any, BaseException | None]] = []
        fatal: BaseException | None = None
        for jobs in groups.values():
            live = [j for j in jobs if j.claim()]
            if not live:
                continue
            try:
                results = self._run(live[0].key, [j.item for j in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
                outcomes += [(j, r, None) for j, r in zip(live, results, strict=True)]
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                outcomes += [(j, None, exc) for j in live]
                if not isinstance(exc, Exception):
                    fatal = exc
        if on_done is not None:
            on_done()  # before the waiters wake: a client sending its next request sees it
        for job, result, exc in outcomes:
            if job.future.done():  # an asyncio waiter cancelled meanwhile
                continue
            if exc is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(exc)
        if fatal is not None:
            raise fatal

    # -- worker -----------------------------------------------------------------------------
    def _take(self) -> list[_Job[K, T]] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if self._max_wait > 0 and not self._closed:
                deadline = self._queue[0].queued_at + self._max_wait
                # Wait only while fewer requests are queued than were recently in flight together: a
                # lone client (nothing else in flight when it sends) is never held back.
                expected = int(self._concurrency + 0.5)
                while (
                    len(self._queue) < expected and self._queued_rows < self.config.max_rows and not self._closed
                ):
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            batch: list[_Job[K, T]] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.config.max_rows):
                job = self._queue.popleft()
                rows += job.rows
                batch.append(job)
            self._queued_rows -= rows
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:

            def done(n: int = len(batch)) -> None:
                with self._cond:
                    self._inflight -= n

            self._execute(batch, on_done=done)
