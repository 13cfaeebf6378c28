"""The reference shelf-label sketch, compiled on the host (g++ -Wall -Wextra -Werror, ASan/UBSan) against
a minimal Arduino stand-in (tests/firmware_shim/) and run as a device over pipes: its frames decode with
firmware_bridge.protocol, it syncs its clock, asks for tomorrow's forecast, re-sends an unacked sale
with the same sequence number and stops once acked, and garbage on its serial input does not hurt it."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from firmware_bridge.protocol import (
    Ack,
    Display,
    Heartbeat,
    Hello,
    Nack,
    NackReason,
    PredictRequest,
    PredictResponse,
    Sale,
    TimeRequest,
    TimeSync,
    encode,
)
from tests.firmware_kit import SketchProcess, build_sketch

DAY = dt.date(2017, 8, 16)
LOCAL = (DAY - dt.date(1970, 1, 1)).days * 86400 + 10 * 3600  # 10:00 shop time


@pytest.fixture(scope="module")
def sketch(tmp_path_factory):
    return build_sketch(tmp_path_factory.mktemp("sketch"))


def is_sale(seq: int | None = None):
    return lambda f: isinstance(f.message, Sale) and (seq is None or f.seq == seq)


def test_sketch_says_hello_syncs_sells_and_retries_with_the_same_seq(sketch):
    dev = SketchProcess(sketch)
    try:
        dev.wait(lambda f: isinstance(f.message, TimeRequest), "hello and a time request after boot")
        first = dev.snapshot()[:2]
        assert first[0].seq == 1 and isinstance(first[0].message, Hello)
        hello = first[0].message
        assert (hello.device_id, hello.firmware, hello.capabilities) == ("shelf-7", "1.0.0", 0x0F)
        assert first[1].seq == 2 and isinstance(first[1].message, TimeRequest)

        # a button press before the clock is set records nothing (a sale needs a day)
        dev.press()
        beat = dev.wait(lambda f: isinstance(f.message, Heartbeat), "a heartbeat")
        dev.wait(lambda f: isinstance(f.message, Heartbeat), "a second heartbeat", after=beat + 1)
        assert not any(is_sale()(f) for f in dev.snapshot())

        # garbage, a bad CRC and frames it ignores must not upset it (ASan/UBSan would abort it)
        bad = bytearray(encode(Ack(99), 7))
        bad[-3] ^= 0x10
        dev.write_raw(os.urandom(600) + b"\x00" + bytes(bad) + b"\x05" * 400 + b"\x00")
        dev.send(Display(103520, "08-17 fcst 3.2"), 8)
        dev.send(PredictResponse(1, 0, 3.25, 1), 9)

        # time sync: it now asks for tomorrow's forecast of its item
        dev.send(TimeSync(LOCAL), 10)
        at = dev.wait(lambda f: isinstance(f.message, PredictRequest), "a prediction request after the time sync")
        req = dev.snapshot()[at].message
        assert req == PredictRequest(1, 103520, (DAY - dt.date(1970, 1, 1)).days + 1, 0)

        # a press: a sale of one unit today, re-sent with the same seq until acked
        dev.press()
        at = dev.wait(is_sale(), "the sale of the button press")
        sale = dev.snapshot()[at]
        assert sale.message.store_nbr == 1 and sale.message.item_nbr == 103520
        assert sale.message.quantity_milli == 1000 and LOCAL <= sale.message.time < LOCAL + 3600
        again = dev.wait(is_sale(sale.seq), "the same sale re-sent (no ack yet)", after=at + 1)
        assert dev.snapshot()[again].message == sale.message

        # "unavailable" keeps it pending (re-sent again); the ack ends the re-sending
        dev.send(Nack(sale.seq, NackReason.UNAVAILABLE, "agent down"), 11)
        dev.wait(is_sale(sale.seq), "re-sent after a nack unavailable", after=again + 1)
        dev.send(Ack(sale.seq), 12)
        dev.press()  # seen by a loop() that already read the ack
        second = dev.wait(lambda f: is_sale()(f) and f.seq != sale.seq, "the second sale")
        second_seq = dev.snapshot()[second].seq
        resent = dev.wait(is_sale(second_seq), "the second sale re-sent", after=second + 1)
        assert not any(is_sale(sale.seq)(f) for f in dev.snapshot()[second:resent]), "an acked sale was re-sent"

        # "invalid" drops a sale for good
        dev.send(Nack(second_seq, NackReason.INVALID, "unknown item"), 13)
        dev.press()
        third = dev.wait(lambda f: is_sale()(f) and f.seq not in (sale.seq, second_seq), "the third sale")
        third_seq = dev.snapshot()[third].seq
        end = dev.wait(is_sale(third_seq), "the third sale re-sent", after=third + 1)
        assert not any(is_sale(second_seq)(f) for f in dev.snapshot()[third:end]), "a refused sale was re-sent"
    finally:
        rc = dev.close()
    frames = dev.snapshot()
    assert rc == 0, dev.stderr_text()
    assert not dev.decoder.errors, dev.decoder.errors  # every byte it wrote was a valid frame
    fresh = [f.seq for f in frames if not isinstance(f.message, Sale)]
    assert fresh == sorted(set(fresh)) and fresh[0] == 1  # its own counter, never reused
