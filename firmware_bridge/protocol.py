"""The serial protocol between shop microcontrollers and the bridge: framing, CRC, codec. No I/O.

Specified byte by byte in ``docs/serial-protocol.md``; the golden vectors in
``firmware_bridge/firmware/vectors.json`` are checked by this module's tests and by the C core's.

A frame on the wire is ``COBS(body) 0x00`` with ``body`` = version (u8) | type (u8) | seq (u32) |
length (u16) | payload | CRC-16/CCITT-FALSE (u16) over everything before it; integers little-endian.

>>> wire = encode(Sale(store_nbr=1, item_nbr=103520, quantity_milli=2000, time=1502841600), seq=7)
>>> d = Decoder()
>>> [(f.seq, f.message) for f in d.feed(wire)]
[(7, Sale(store_nbr=1, item_nbr=103520, quantity_milli=2000, time=1502841600))]
>>> d.feed(b"\\x13garbage\\x00"), d.errors["crc"] + d.errors["short"] + d.errors["cobs"]
([], 1)
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = [
    "VERSION",
    "MAX_PAYLOAD",
    "MAX_WIRE",
    "ProtocolError",
    "ERROR_REASONS",
    "crc16",
    "cobs_encode",
    "cobs_decode",
    "Hello",
    "Heartbeat",
    "TimeRequest",
    "TimeSync",
    "Sale",
    "SensorReading",
    "PredictRequest",
    "PredictResponse",
    "Display",
    "Ack",
    "Nack",
    "MESSAGES",
    "NackReason",
    "Frame",
    "encode",
    "encode_body",
    "decode_body",
    "Decoder",
    "SENSOR_KINDS",
    "UNITS",
]

VERSION = 1
HEADER = struct.Struct("<BBIH")  # version, type, seq, length
MAX_PAYLOAD = 240
#: Longest body (header + payload + CRC) and longest COBS-encoded frame with its 0x00 delimiter.
MAX_BODY = HEADER.size + MAX_PAYLOAD + 2
MAX_WIRE = MAX_BODY + MAX_BODY // 254 + 2

#: Why a frame was dropped (the keys of :attr:`Decoder.errors`).
ERROR_REASONS = ("cobs", "short", "length", "crc", "version", "type", "payload", "oversize")


class ProtocolError(ValueError):
    """A frame that cannot be used; ``reason`` is one of :data:`ERROR_REASONS`, ``seq`` if it was readable."""

    def __init__(self, reason: str, message: str, seq: int | None = None, type_: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.seq = seq
        self.type = type_


# -- CRC and COBS -----------------------------------------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout).

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: ``data`` without any 0x00 (the delimiter is not added).

    >>> cobs_encode(b"\\x11\\x00\\x22").hex()
    '02110222'
    """
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; :class:`ProtocolError` ("cobs") on a malformed block."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ProtocolError("cobs", f"zero byte at {i}")
        end = i + code
        if end > n:
            raise ProtocolError("cobs", f"block at {i} runs past the end")
        block = data[i + 1 : end]
        if 0 in block:
            raise ProtocolError("cobs", f"zero byte inside block at {i}")
        out += block
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


# -- messages ---------------------------------------------------------------------------------
#: Sensor kinds and units (codes on the wire).
SENSOR_KINDS = {1: "weight", 2: "temperature", 3: "humidity", 4: "door_count", 5: "battery"}
UNITS = {1: "g", 2: "degC", 3: "percent", 4: "count", 5: "V"}


class NackReason:
    """Codes of :class:`Nack`: whether the device should retry."""

    INVALID = 1  # the agent refused the content (validation): do not retry
    UNAVAILABLE = 2  # the agent cannot take it now (down, no model): retry with the same seq
    UNSUPPORTED = 3  # unknown message type
    BAD_PAYLOAD = 4  # the payload does not parse for its type
    NAMES: ClassVar[dict[int, str]] = {1: "invalid", 2: "unavailable", 3: "unsupported", 4: "bad_payload"}


def _str(data: bytes, at: int, limit: int, what: str) -> tuple[str, int]:
    if at >= len(data):
        raise ProtocolError("payload", f"{what}: missing length")
    n = data[at]
    if n > limit or at + 1 + n > len(data):
        raise ProtocolError("payload", f"{what}: length {n} (at most {limit}, {len(data) - at - 1} left)")
    if 0 in data[at + 1 : at + 1 + n]:
        raise ProtocolError("payload", f"{what}: contains a NUL byte")
    try:
        return data[at + 1 : at + 1 + n].decode("utf-8"), at + 1 + n
    except UnicodeDecodeError:
        raise ProtocolError("payload", f"{what}: not UTF-8") from None


def _put_str(text: str, limit: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"{what}: must not contain NUL")
    if len(raw) > limit:
        raise ValueError(f"{what}: {len(raw)} bytes, at most {limit}")
    return bytes([len(raw)]) + raw


@dataclasses.dataclass(frozen=True)
class _Message:
    TYPE: ClassVar[int]
    FIXED: ClassVar[struct.Struct | None] = None

    def payload(self) -> bytes:
        assert self.FIXED is not None
        try:
            return self.FIXED.pack(*dataclasses.astuple(self))
        except struct.error as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    @classmethod
    def parse(cls, data: bytes) -> Any:
        assert cls.FIXED is not None
        if len(data) != cls.FIXED.size:
            raise ProtocolError("payload", f"{cls.__name__} payload is {len(data)} bytes, expected {cls.FIXED.size}")
        return cls(*cls.FIXED.unpack(data))


@dataclasses.dataclass(frozen=True)
class Hello(_Message):
    """Device → bridge after boot: who it is. ``boot_id`` changes every boot (sequence numbers restart)."""

    TYPE: ClassVar[int] = 0x01
    device_id: str
    firmware: str
    boot_id: int
    capabilities: int  # bit 0 sales, 1 predict, 2 display, 3 sensors

    def payload(self) -> bytes:
        if not self.device_id:
            raise ValueError("device_id: must not be empty")
        return _put_str(self.device_id, 32, "device_id") + _put_str(self.firmware, 16, "firmware") + struct.pack(
            "<IH", self.boot_id, self.capabilities
        )

    @classmethod
    def parse(cls, data: bytes) -> Hello:
        device_id, at = _str(data, 0, 32, "device_id")
        firmware, at = _str(data, at, 16, "firmware")
        if len(data) - at != 6 or not device_id:
            raise ProtocolError("payload", "hello: bad device_id or trailer")
        boot_id, caps = struct.unpack_from("<IH", data, at)
        return cls(device_id, firmware, boot_id, caps)


@dataclasses.dataclass(frozen=True)
class Heartbeat(_Message):
    """Device → bridge, every few seconds: still alive; also keeps the link's idle timer quiet."""

    TYPE: ClassVar[int] = 0x02
    FIXED: ClassVar[struct.Struct] = struct.Struct("<I")
    uptime_ms: int


@dataclasses.dataclass(frozen=True)
class TimeRequest(_Message):
    """Device → bridge: please send me the time (an MCU has no clock)."""

    TYPE: ClassVar[int] = 0x03
    FIXED: ClassVar[struct.Struct] = struct.Struct("<I")
    uptime_ms: int


@dataclasses.dataclass(frozen=True)
class TimeSync(_Message):
    """Bridge → device: shop-local wall-clock time as seconds since 1970-01-01 (a day is ``local // 86400``)."""

    TYPE: ClassVar[int] = 0x04
    FIXED: ClassVar[struct.Struct] = struct.Struct("<I")
    local_seconds: int


@dataclasses.dataclass(frozen=True)
class Sale(_Message):
    """Device → bridge: ``quantity_milli``/1000 units of an item sold (negative: returned) at ``time``."""

    TYPE: ClassVar[int] = 0x10
    FIXED: ClassVar[struct.Struct] = struct.Struct("<IIiI")
    store_nbr: int
    item_nbr: int
    quantity_milli: int
    time: int  # shop-local seconds since 1970-01-01


@dataclasses.dataclass(frozen=True)
class SensorReading(_Message):
    """Device → bridge: ``value × 10^exponent`` in ``unit`` from sensor ``sensor_id`` of ``kind``."""

    TYPE: ClassVar[int] = 0x11
    FIXED: ClassVar[struct.Struct] = struct.Struct("<BBBbiI")
    sensor_id: int
    kind: int
    unit: int
    exponent: int
    value: int
    time: int

    @classmethod
    def parse(cls, data: bytes) -> SensorReading:
        r: SensorReading = super().parse(data)
        if r.kind not in SENSOR_KINDS or r.unit not in UNITS:
            raise ProtocolError("payload", f"sensor kind {r.kind} / unit {r.unit} unknown")
        return r

    @property
    def scaled(self) -> float:
        return self.value * 10.0**self.exponent


@dataclasses.dataclass(frozen=True)
class PredictRequest(_Message):
    """Device → bridge: forecast units of an item in a store on ``day`` (days since 1970-01-01)."""

    TYPE: ClassVar[int] = 0x20
    FIXED: ClassVar[struct.Struct] = struct.Struct("<IIHB")
    store_nbr: int
    item_nbr: int
    day: int
    onpromotion: int  # 0 or 1


@dataclasses.dataclass(frozen=True)
class PredictResponse(_Message):
    """Bridge → device: the answer to the request numbered ``request_seq``; ``status`` 0 = ok, else a NackReason."""

    TYPE: ClassVar[int] = 0x21
    FIXED: ClassVar[struct.Struct] = struct.Struct("<IBfI")
    request_seq: int
    status: int
    value: float
    model_version: int

    def __eq__(self, other: object) -> bool:  # NaN-safe, for round-trip tests
        if not isinstance(other, PredictResponse):
            return NotImplemented
        same = self.value == other.value or (math.isnan(self.value) and math.isnan(other.value))
        return same and (self.request_seq, self.status, self.model_version) == (
            other.request_seq,
            other.status,
            other.model_version,
        )

    __hash__ = _Message.__hash__


@dataclasses.dataclass(frozen=True)
class Display(_Message):
    """Bridge → device: show ``text`` for ``item_nbr`` (a shelf label's forecast line)."""

    TYPE: ClassVar[int] = 0x30
    item_nbr: int
    text: str

    def payload(self) -> bytes:
        return struct.pack("<I", self.item_nbr) + _put_str(self.text, 48, "text")

    @classmethod
    def parse(cls, data: bytes) -> Display:
        if len(data) < 5:
            raise ProtocolError("payload", "display: too short")
        (item,) = struct.unpack_from("<I", data)
        text, at = _str(data, 4, 48, "text")
        if at != len(data):
            raise ProtocolError("payload", "display: trailing bytes")
        return cls(item, text)


@dataclasses.dataclass(frozen=True)
class Ack(_Message):
    """Either way: the frame numbered ``acked_seq`` was taken (for a sale: the agent accepted it)."""

    TYPE: ClassVar[int] = 0x40
    FIXED: ClassVar[struct.Struct] = struct.Struct("<I")
    acked_seq: int


@dataclasses.dataclass(frozen=True)
class Nack(_Message):
    """Either way: the frame numbered ``nacked_seq`` was not taken, and why (:class:`NackReason`)."""

    TYPE: ClassVar[int] = 0x41
    nacked_seq: int
    reason: int
    detail: str = ""

    def payload(self) -> bytes:
        return struct.pack("<IB", self.nacked_seq, self.reason) + _put_str(self.detail, 64, "detail")

    @classmethod
    def parse(cls, data: bytes) -> Nack:
        if len(data) < 6:
            raise ProtocolError("payload", "nack: too short")
        seq, reason = struct.unpack_from("<IB", data)
        detail, at = _str(data, 5, 64, "detail")
        if at != len(data):
            raise ProtocolError("payload", "nack: trailing bytes")
        return cls(seq, reason, detail)


MESSAGES: dict[int, type[_Message]] = {
    m.TYPE: m
    for m in (Hello, Heartbeat, TimeRequest, TimeSync, Sale, SensorReading, PredictRequest, PredictResponse, Display, Ack, Nack)
}


@dataclasses.dataclass(frozen=True)
class Frame:
    """A decoded frame: its sequence number and message."""

    seq: int
    message: Any
    version: int = VERSION


# -- frames -----------------------------------------------------------------------------------
def encode_body(message: _Message, seq: int, version: int = VERSION) -> bytes:
    """The unstuffed body (header, payload, CRC) of ``message``; ValueError if a field does not fit."""
    payload = message.payload()
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload is {len(payload)} bytes, at most {MAX_PAYLOAD}")
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"seq {seq} is not a u32")
    head = HEADER.pack(version, message.TYPE, seq, len(payload)) + payload
    return head + struct.pack("<H", crc16(head))


def encode(message: _Message, seq: int, version: int = VERSION) -> bytes:
    """The wire bytes of ``message``: COBS-stuffed body and the 0x00 delimiter."""
    return cobs_encode(encode_body(message, seq, version)) + b"\x00"


def decode_body(body: bytes) -> Frame:
    """Check and parse an unstuffed body; :class:`ProtocolError` says why it is unusable."""
    if len(body) < HEADER.size + 2:
        raise ProtocolError("short", f"{len(body)} bytes, a frame has at least {HEADER.size + 2}")
    version, type_, seq, length = HEADER.unpack_from(body)
    if len(body) != HEADER.size + length + 2:
        raise ProtocolError("length", f"length field {length} but {len(body) - HEADER.size - 2} payload bytes")
    (crc,) = struct.unpack_from("<H", body, len(body) - 2)
    if crc16(body[:-2]) != crc:
        raise ProtocolError("crc", f"CRC {crc:#06x} does not match {crc16(body[:-2]):#06x}")
    if version != VERSION:
        raise ProtocolError("version", f"version {version}, this side speaks {VERSION}", seq)
    cls = MESSAGES.get(type_)
    if cls is None:
        raise ProtocolError("type", f"unknown message type {type_:#04x}", seq, type_)
    try:
        message = cls.parse(body[HEADER.size : -2])
    except ProtocolError as exc:
        raise ProtocolError("payload", str(exc), seq, type_) from None
    except (struct.error, ValueError) as exc:
        raise ProtocolError("payload", f"{cls.__name__}: {exc}", seq, type_) from None
    return Frame(seq, message, version)


class Decoder:
    """Stream decoder: feed it any bytes, get the good frames; bad ones are dropped and counted.

    Never raises for input; never holds more than :data:`MAX_WIRE` bytes (longer runs are dropped
    as "oversize" up to the next delimiter, so a babbling device cannot stall the link)."""

    def __init__(self, on_error: Callable[[ProtocolError], None] | None = None) -> None:
        self._buf = bytearray()
        self._skipping = False
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self.on_error = on_error

    def _drop(self, exc: ProtocolError) -> None:
        self.errors[exc.reason] += 1
        if self.on_error is not None:
            self.on_error(exc)

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        start = 0
        while start <= len(data):
            end = data.find(b"\x00", start)
            chunk = data[start:] if end < 0 else data[start:end]
            if not self._skipping:
                self._buf += chunk
                if len(self._buf) > MAX_WIRE:
                    self._buf.clear()
                    self._skipping = True
                    self._drop(ProtocolError("oversize", f"no delimiter within {MAX_WIRE} bytes"))
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            elif self._buf:
                raw = bytes(self._buf)
                self._buf.clear()
                try:
                    out.append(decode_body(cobs_decode(raw)))
                    self.frames += 1
                except ProtocolError as exc:
                    self._drop(exc)
            start = end + 1
        return out

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect)."""
        self._buf.clear()
        self._skipping = False
