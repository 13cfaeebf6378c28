"""edge.serving.batching: concurrent requests share batches, a lone client is never held back, bounded queue."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from edge.serving.batching import BatchingConfig, BatchMetrics, MicroBatcher, Overloaded


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, key: str, items: list[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay)
        return [i * 10 for i in items]


def test_results_in_order_and_per_item():
    rec = Recorder()
    b = MicroBatcher(rec, BatchingConfig(max_wait_ms=1))
    try:
        futures = [b.submit("m", i) for i in range(50)]
        assert [f.result(5) for f in futures] == [i * 10 for i in range(50)]
        assert sum(len(x) for x in rec.batches) == 50
    finally:
        b.close()


def test_concurrent_clients_share_batches():
    rec = Recorder(delay=0.002)  # a slow model: requests pile up while it works
    registry = CollectorRegistry()
    b = MicroBatcher(rec, BatchingConfig(max_wait_ms=2), metrics=BatchMetrics(registry).child("live"))
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for i in range(20):
                assert b.submit("m", k * 100 + i).result(5) == (k * 100 + i) * 10
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        b.close()
    assert not errors
    assert len(rec.batches) < 160 / 2, f"{len(rec.batches)} batches for 160 requests: no batching happened"
    assert max(len(x) for x in rec.batches) >= 4
    assert registry.get_sample_value("edgeship_batch_requests_count", {"batcher": "live"}) == len(rec.batches)


def test_lone_client_is_not_held_back():
    rec = Recorder()
    b = MicroBatcher(rec, BatchingConfig(max_wait_ms=20))  # a long bound: waiting would show
    try:
        for i in range(30):  # sequential: nothing else is ever in flight
            b.submit("m", i).result(5)
        started = time.perf_counter()
        for i in range(20):
            b.submit("m", i).result(5)
        per_request = (time.perf_counter() - started) / 20
    finally:
        b.close()
    assert per_request < 0.010, f"a lone request took {per_request * 1e3:.1f} ms: it waited for company"


def test_a_lone_request_runs_on_the_callers_thread():
    threads = []

    def run(key: str, items: list[int]) -> list[int]:
        threads.append(threading.current_thread())
        return items

    b = MicroBatcher(run, BatchingConfig(max_wait_ms=5))
    try:
        assert b.submit("m", 1).result(5) == 1
        assert threads == [threading.current_thread()]  # no hand-off when nothing else is in flight
    finally:
        b.close()


def test_rows_cap_and_keys_are_batched_apart():
    rec = Recorder(delay=0.01)
    b = MicroBatcher(rec, BatchingConfig(max_wait_ms=0, max_rows=4), inline_when_idle=False)
    try:
        first = b.submit("a", 0, rows=1)  # occupies the worker
        time.sleep(0.002)
        futures = [b.submit("a" if i % 2 else "b", i, rows=2) for i in range(1, 7)]
        for f in [first, *futures]:
            f.result(5)
    finally:
        b.close()
    assert all(len(batch) <= 2 for batch in rec.batches[1:])  # 2 rows each, at most 4 rows per batch
    for batch in rec.batches:
        assert len({i % 2 for i in batch}) == 1 or batch == [0]  # one key (one model) per call


def test_errors_reach_every_waiter_and_the_worker_survives():
    calls = []

    def run(key: str, items: list[int]) -> list[int]:
        calls.append(items)
        if key == "bad":
            raise ValueError("model exploded")
        return items

    b = MicroBatcher(run, BatchingConfig(max_wait_ms=0))
    try:
        with pytest.raises(ValueError, match="exploded"):
            b.submit("bad", 1).result(5)
        assert b.submit("good", 2).result(5) == 2
    finally:
        b.close()


def test_bounded_queue_refuses_with_overloaded():
    gate = threading.Event()

    def run(key: str, items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    registry = CollectorRegistry()
    b = MicroBatcher(
        run, BatchingConfig(max_wait_ms=0, max_queue=3), metrics=BatchMetrics(registry).child("live"), inline_when_idle=False
    )
    try:
        running = b.submit("m", 0)
        deadline = time.monotonic() + 5
        while b.pending and time.monotonic() < deadline:
            time.sleep(0.001)
        queued = [b.submit("m", i) for i in range(1, 4)]
        with pytest.raises(Overloaded):
            b.submit("m", 99)
        assert registry.get_sample_value("edgeship_batch_rejected_total", {"batcher": "live"}) == 1
        gate.set()
        assert [f.result(5) for f in [running, *queued]] == [0, 1, 2, 3]
    finally:
        gate.set()
        b.close()
    with pytest.raises(Overloaded):
        b.submit("m", 1)  # closed
