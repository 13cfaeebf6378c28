"""edge.serving.priority.serving_first lowers the GIL switch interval while background work runs
and restores it afterwards (nested and concurrent uses counted); edge.store.gate.chunked infers in
chunks with the same outputs as one call."""

from __future__ import annotations

import sys

import numpy as np

from edge.serving.priority import BACKGROUND_SWITCH_INTERVAL_S, serving_first
from edge.store.gate import chunked
from models.features import Encoded


def test_serving_first_lowers_and_restores_the_switch_interval():
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        with serving_first():
            assert sys.getswitchinterval() == BACKGROUND_SWITCH_INTERVAL_S
            with serving_first():
                assert sys.getswitchinterval() == BACKGROUND_SWITCH_INTERVAL_S
            assert sys.getswitchinterval() == BACKGROUND_SWITCH_INTERVAL_S  # the outer block still runs
        assert sys.getswitchinterval() == 0.005
    finally:
        sys.setswitchinterval(before)


def test_serving_first_restores_after_an_exception():
    before = sys.getswitchinterval()
    try:
        with serving_first():
            raise RuntimeError("install failed")
    except RuntimeError:
        pass
    assert sys.getswitchinterval() == before


def test_chunked_gives_the_same_outputs_in_bounded_calls():
    rng = np.random.default_rng(0)
    enc = Encoded(cat=rng.integers(0, 5, (1000, 8)).astype(np.int32), num=rng.random((1000, 12), dtype=np.float32))
    sizes: list[int] = []

    def infer(e: Encoded) -> np.ndarray:
        sizes.append(len(e.cat))
        return e.num.sum(axis=1) + e.cat.sum(axis=1)

    whole = infer(enc)
    sizes.clear()
    out = chunked(infer, rows=256)(enc)
    np.testing.assert_array_equal(out, whole)
    assert sizes == [256, 256, 256, 232]
