"""firmware_bridge.protocol: golden vectors, round trips and a decoder that never chokes (hypothesis)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p
from firmware_bridge.firmware import make_vectors

VECTORS = json.loads(make_vectors.PATH.read_text())


def test_checked_in_vectors_are_what_the_codec_produces():
    assert VECTORS == json.loads(json.dumps(make_vectors.vectors()))


@pytest.mark.parametrize("v", VECTORS["frames"], ids=lambda v: v["name"])
def test_golden_frames_encode_and_decode(v):
    cls = p.MESSAGES[v["type"]]
    message = cls(**v["fields"])
    assert p.encode(message, v["seq"]).hex() == v["wire"]
    assert message.payload().hex() == v["payload"]
    frames = p.Decoder().feed(bytes.fromhex(v["wire"]))
    assert frames == [p.Frame(v["seq"], message)]


@pytest.mark.parametrize("v", VECTORS["bad"], ids=lambda v: v["name"])
def test_golden_bad_frames_are_dropped_for_their_reason(v):
    d = p.Decoder()
    assert d.feed(bytes.fromhex(v["wire"])) == []
    assert dict(d.errors) == {v["reason"]: 1}


def test_crc_and_cobs_vectors():
    for c in VECTORS["crc16"]:
        assert p.crc16(bytes.fromhex(c["input"])) == c["crc"]
    for c in VECTORS["cobs"]:
        raw, enc = bytes.fromhex(c["raw"]), bytes.fromhex(c["encoded"])
        assert p.cobs_encode(raw) == enc and 0 not in enc
        assert p.cobs_decode(enc) == raw


def test_garbage_between_frames_costs_only_the_garbage():
    good = [p.encode(p.Heartbeat(i), i) for i in range(5)]
    stream = b"\xff\xfe\x00" + good[0] + b"junk\x00" + good[1][:7] + good[2] + bytes(600) + good[3] + b"\x01" * 1000 + b"\x00" + good[4]
    d = p.Decoder()
    got = [f.seq for f in d.feed(stream)]
    # good[1], cut short, runs into good[2]: that one bad frame costs both, then the decoder is in step again
    assert got == [0, 3, 4]
    assert d.errors["oversize"] == 1 and sum(d.errors.values()) >= 3


def test_oversize_run_is_bounded_and_the_next_frame_decodes_byte_by_byte():
    d = p.Decoder()
    for b in b"\x05" * 5000:
        d.feed(bytes([b]))
        assert len(d._buf) <= p.MAX_WIRE
    assert d.errors["oversize"] == 1
    wire = b"\x00" + p.encode(p.Ack(9), 3)
    out = []
    for b in wire:
        out += d.feed(bytes([b]))
    assert out == [p.Frame(3, p.Ack(9))]


def test_encoding_checks_field_ranges():
    with pytest.raises(ValueError, match="device_id"):
        p.Hello("x" * 33, "1", 0, 0).payload()
    with pytest.raises(ValueError, match="Sale"):
        p.Sale(-1, 1, 1, 1).payload()
    with pytest.raises(ValueError, match="seq"):
        p.encode(p.Ack(1), 2**32)


u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
text = lambda n: st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=n).filter(  # noqa: E731
    lambda s: len(s.encode()) <= n
)
messages = st.one_of(
    st.builds(p.Hello, text(32).filter(bool), text(16), u32, st.integers(0, 0xFFFF)),
    st.builds(p.Heartbeat, u32),
    st.builds(p.TimeRequest, u32),
    st.builds(p.TimeSync, u32),
    st.builds(p.Sale, u32, u32, i32, u32),
    st.builds(p.SensorReading, st.integers(0, 255), st.sampled_from(sorted(p.SENSOR_KINDS)), st.sampled_from(sorted(p.UNITS)),
              st.integers(-128, 127), i32, u32),  # fmt: skip
    st.builds(p.PredictRequest, u32, u32, st.integers(0, 0xFFFF), st.integers(0, 1)),
    st.builds(p.PredictResponse, u32, st.integers(0, 255), st.floats(width=32), u32),
    st.builds(p.Display, u32, text(48)),
    st.builds(p.Ack, u32),
    st.builds(p.Nack, u32, st.integers(0, 255), text(64)),
)


@settings(max_examples=400, deadline=None)
@given(messages, u32)
def test_decode_of_encode_is_identity(message, seq):
    frames = p.Decoder().feed(p.encode(message, seq))
    assert len(frames) == 1 and frames[0].seq == seq and frames[0].message == message


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_the_decoders_own_error(data):
    try:
        p.decode_body(p.cobs_decode(data))
    except p.ProtocolError as exc:
        assert exc.reason in p.ERROR_REASONS
    d = p.Decoder()
    frames = d.feed(data)  # the stream decoder never raises at all
    assert len(d._buf) <= p.MAX_WIRE
    assert all(isinstance(f.message, tuple(p.MESSAGES.values())) for f in frames)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.binary(max_size=80), st.integers(1, 64))
def test_frames_survive_noise_and_any_chunking(batch, noise, chunk):
    wire = b"".join(p.encode(m, i) for i, m in enumerate(batch))
    stream = noise + b"\x00" + wire
    d = p.Decoder()
    got = []
    for i in range(0, len(stream), chunk):
        got += d.feed(stream[i : i + chunk])
    assert [f.message for f in got][-len(batch):] == batch


def test_nan_prediction_round_trips():
    (f,) = p.Decoder().feed(p.encode(p.PredictResponse(1, 2, math.nan, 0), 1))
    assert math.isnan(f.message.value)
