"""Helpers shared by the benchmark scripts: latency sampling, the raw LiteRT reference, ports."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from edgeship.demo import free_port

__all__ = ["measure", "raw_litert", "http_post", "free_port"]


def measure(fn: Callable[[], object], iterations: int, budget_s: float, warmup: int = 200) -> dict[str, float]:
    """Call ``fn`` up to ``iterations`` times (at most ``budget_s`` seconds); latency stats in µs."""
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    gc.disable()
    try:
        deadline = time.perf_counter() + budget_s
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t0)
            if time.perf_counter() > deadline:
                break
    finally:
        gc.enable()
    us = np.array(samples, dtype=np.float64) / 1e3
    return {"n": len(us), "p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)), "mean": float(us.mean())}


def raw_litert(model_path: str | Path, feed: Mapping[str, np.ndarray]) -> Callable[[], object]:
    """The reference every ratio is against: one LiteRT invoke straight through its own API
    (``set_tensor`` ×2, ``invoke``, ``get_tensor``), 1 thread, no validation, no encoding."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path), num_threads=1)
    interp.allocate_tensors()
    ins = {d["name"]: d["index"] for d in interp.get_input_details()}
    out_idx = interp.get_output_details()[0]["index"]
    cat_idx = next(i for k, i in ins.items() if "cat" in k)
    num_idx = next(i for k, i in ins.items() if "num" in k)
    cat, num = feed["cat"], feed["num"]

    def invoke() -> object:
        interp.set_tensor(cat_idx, cat)
        interp.set_tensor(num_idx, num)
        interp.invoke()
        return interp.get_tensor(out_idx)

    return invoke


def http_post(url: str, path: str, body: bytes) -> tuple[Callable[[], bytes], Callable[[], None]]:
    """A keep-alive JSON POST to ``url`` + ``path`` (raises on a non-200) and a function closing it."""
    import http.client

    host, port = url.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)

    def post() -> bytes:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(data)
        return data

    return post, conn.close
