"""The bridge facing a misbehaving device over a real pty (no agent needed): unknown message types and
versions, unparsable payloads and garbage are dropped and counted by reason in the bridge's metrics; the
device gets NACK ``unsupported`` / ``bad_payload`` for frames whose seq was readable; the link keeps going."""

from __future__ import annotations

import struct

from firmware_bridge import protocol as p
from firmware_bridge.bridge import Bridge
from firmware_bridge.sim import PtyTransport
from tests.conftest import free_port, wait_for


def raw_frame(version: int, type_: int, seq: int, payload: bytes) -> bytes:
    head = p.HEADER.pack(version, type_, seq, len(payload)) + payload
    return p.cobs_encode(head + struct.pack("<H", p.crc16(head))) + b"\x00"


def test_unknown_type_version_and_bad_payload_are_counted_and_nacked(tmp_path):
    dev = PtyTransport(tmp_path / "tty")
    bridge = Bridge([str(tmp_path / "tty")], f"http://127.0.0.1:{free_port()}", tmp_path / "bridge").start()
    got: list[p.Frame] = []
    dec = p.Decoder()

    def frames() -> list[p.Frame]:
        got.extend(dec.feed(dev.read(0.05)))
        return got

    try:
        wait_for(lambda: any(isinstance(f.message, p.Hello) for f in frames()), "the bridge's hello on link-up")
        dev.write(raw_frame(1, 0x7E, 11, b"\x01\x02"))  # a type from a newer firmware
        dev.write(raw_frame(2, p.Sale.TYPE, 12, p.Sale(1, 103520, 1000, 1).payload()))  # protocol version 2
        dev.write(raw_frame(1, p.Sale.TYPE, 13, b"\x01\x02\x03"))  # a sale payload of the wrong size
        dev.write(raw_frame(1, p.SensorReading.TYPE, 14, struct.pack("<BBBbiI", 1, 99, 1, 0, 5, 0)))  # unknown sensor kind
        dev.write(b"\x05\x01\x02\x00" + p.encode(p.Heartbeat(7), 15))  # garbage, then a good frame
        wait_for(lambda: bridge.devices[0].last_seen > 0, "the heartbeat after all that")

        def nacks() -> dict[int, p.Nack]:
            return {f.message.nacked_seq: f.message for f in frames() if isinstance(f.message, p.Nack)}

        wait_for(lambda: {11, 13, 14} <= set(nacks()), "nacks for the readable bad frames")
        n = nacks()
        assert n[11].reason == p.NackReason.UNSUPPORTED and "126" in n[11].detail
        assert n[13].reason == p.NackReason.BAD_PAYLOAD and n[14].reason == p.NackReason.BAD_PAYLOAD
        assert 12 not in n  # another protocol version: nothing we say would be understood; dropped, counted

        def dropped(reason: str) -> float:
            return bridge.metrics.registry.get_sample_value("edgeship_bridge_dropped_frames_total", {"reason": reason}) or 0

        assert dropped("type") == 1 and dropped("version") == 1 and dropped("payload") == 2
        assert dropped("cobs") + dropped("short") + dropped("crc") + dropped("length") == 1
        assert bridge.metrics.registry.get_sample_value("edgeship_bridge_frames_in_total", {"type": "Heartbeat"}) == 1
        assert bridge.devices[0].link.connects == 1  # never dropped the link over it
    finally:
        bridge.stop()
        dev.close()
