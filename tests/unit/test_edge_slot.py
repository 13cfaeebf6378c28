"""Hot swap: the previous predictor is closed only after its in-flight requests finish."""

from __future__ import annotations

from edge.serving.slot import ModelSlot


class Model:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


def test_swap_waits_for_in_flight_requests():
    slot, old, new = ModelSlot(), Model("v1"), Model("v2")
    slot.swap(old)
    with slot.use() as held:
        assert held is old
        slot.swap(new)
        assert slot.current is new and not old.closed  # still serving the request that holds it
        with slot.use() as other:
            assert other is new
    assert old.closed and not new.closed


def test_idle_swap_closes_at_once_and_close_retires():
    slot, old, new = ModelSlot(), Model("v1"), Model("v2")
    slot.swap(old)
    slot.swap(new)
    assert old.closed
    slot.close()
    assert new.closed and slot.current is None
    with slot.use() as nothing:
        assert nothing is None
