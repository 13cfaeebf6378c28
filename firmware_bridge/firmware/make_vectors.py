"""Write ``vectors.json``, the golden vectors both the Python and the C tests read.

Run once when the protocol changes (``python -m firmware_bridge.firmware.make_vectors``); the
tests check that this module's output equals the checked-in file, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from firmware_bridge import protocol as p

__all__ = ["vectors", "PATH"]

PATH = Path(__file__).with_name("vectors.json")

_FRAMES: list[tuple[str, Any, int]] = [
    ("hello", p.Hello("shelf-7", "1.0.0", 0xC0FFEE01, 0x000F), 1),
    ("heartbeat", p.Heartbeat(123456), 2),
    ("time_request", p.TimeRequest(500), 3),
    ("time_sync", p.TimeSync(1502883000), 4),
    ("sale", p.Sale(1, 103520, 2000, 1502883000), 5),
    ("sale_return", p.Sale(2, 105574, -1500, 1502890000), 6),
    ("sensor_weight", p.SensorReading(1, 1, 1, 0, 4200, 1502883000), 7),
    ("sensor_temperature", p.SensorReading(2, 2, 2, -2, 412, 1502883060), 8),
    ("predict_request", p.PredictRequest(1, 103520, 17395, 0), 9),
    ("predict_response", p.PredictResponse(9, 0, 4.25, 3), 10),
    ("display", p.Display(103520, "fcst 4.2"), 11),
    ("ack", p.Ack(5), 12),
    ("nack", p.Nack(6, p.NackReason.INVALID, "unknown item"), 13),
    ("zero_seq_long", p.Heartbeat(0), 0x01000000),
]


def _fields(message: Any) -> dict[str, Any]:
    return dataclasses.asdict(message)


def vectors() -> dict[str, Any]:
    frames = []
    for name, message, seq in _FRAMES:
        frames.append(
            {
                "name": name,
                "type": message.TYPE,
                "seq": seq,
                "fields": _fields(message),
                "payload": message.payload().hex(),
                "wire": p.encode(message, seq).hex(),
            }
        )
    good = p.encode_body(p.Sale(1, 103520, 2000, 1502883000), 5)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0x01
    unknown_type = bytearray(p.HEADER.pack(1, 0x7E, 21, 0))
    unknown_type += crc_bytes(unknown_type)
    bad_version = bytearray(p.HEADER.pack(9, p.Ack.TYPE, 22, 4)) + bytes(4)
    bad_version += crc_bytes(bad_version)
    bad_payload = bytearray(p.HEADER.pack(1, p.Ack.TYPE, 23, 3)) + bytes(3)
    bad_payload += crc_bytes(bad_payload)
    bad = [
        {"name": "bad_crc", "wire": (p.cobs_encode(bytes(bad_crc)) + b"\0").hex(), "reason": "crc"},
        {"name": "truncated", "wire": (p.cobs_encode(good[:-3]) + b"\0").hex(), "reason": "length"},
        {"name": "short", "wire": (p.cobs_encode(good[:5]) + b"\0").hex(), "reason": "short"},
        {"name": "unknown_type", "wire": (p.cobs_encode(bytes(unknown_type)) + b"\0").hex(), "reason": "type"},
        {"name": "unknown_version", "wire": (p.cobs_encode(bytes(bad_version)) + b"\0").hex(), "reason": "version"},
        {"name": "bad_payload", "wire": (p.cobs_encode(bytes(bad_payload)) + b"\0").hex(), "reason": "payload"},
        {"name": "bad_cobs", "wire": "0511220300", "reason": "cobs"},
    ]
    return {
        "protocol_version": p.VERSION,
        "max_payload": p.MAX_PAYLOAD,
        "max_wire": p.MAX_WIRE,
        "crc16": [
            {"input": b"123456789".hex(), "crc": 0x29B1},
            {"input": "", "crc": 0xFFFF},
            {"input": "00", "crc": p.crc16(b"\0")},
        ],
        "cobs": [
            {"raw": raw.hex(), "encoded": p.cobs_encode(raw).hex()}
            for raw in (b"", b"\0", b"\0\0", b"\x11\x22\0\x33", bytes(range(1, 255)), bytes(range(1, 256)), bytes(300))
        ],
        "frames": frames,
        "bad": bad,
    }


def crc_bytes(data: bytes | bytearray) -> bytes:
    return p.crc16(bytes(data)).to_bytes(2, "little")


if __name__ == "__main__":
    PATH.write_text(json.dumps(vectors(), indent=1) + "\n")
    print(f"wrote {PATH}")
