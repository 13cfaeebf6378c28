"""firmware_bridge.link over loop:// and real pty pairs: frames through garbage, unplug/replug reconnects."""

from __future__ import annotations

import os
import threading

from firmware_bridge import protocol as p
from firmware_bridge.link import SerialLink
from firmware_bridge.metrics import BridgeMetrics
from firmware_bridge.sim import PtyTransport
from tests.conftest import wait_for


class Collect:
    def __init__(self) -> None:
        self.frames: list[p.Frame] = []
        self.lock = threading.Lock()

    def __call__(self, link, frame) -> None:
        with self.lock:
            self.frames.append(frame)


def test_loop_url_echoes_frames():
    got = Collect()
    link = SerialLink("loop://", on_frame=got).start()
    try:
        wait_for(link.connected.is_set, "loop:// open")
        assert link.send(p.Heartbeat(5)) and link.send(p.Sale(1, 103520, 1000, 1), seq=77)
        wait_for(lambda: len(got.frames) == 2, "two frames back")
        assert got.frames[1] == p.Frame(77, p.Sale(1, 103520, 1000, 1))
    finally:
        link.stop()


def test_pty_garbage_is_counted_and_never_stalls_the_link(tmp_path):
    dev = PtyTransport(tmp_path / "tty")
    got, metrics = Collect(), BridgeMetrics()
    link = SerialLink(str(tmp_path / "tty"), on_frame=got, metrics=metrics).start()
    try:
        wait_for(link.connected.is_set, "pty open")
        bad_crc = bytearray(p.encode(p.Ack(1), 1))
        bad_crc[-3] ^= 0x40
        unknown = p.cobs_encode(p.HEADER.pack(1, 0x7E, 4, 0) + p.crc16(p.HEADER.pack(1, 0x7E, 4, 0)).to_bytes(2, "little"))
        dev.write(os.urandom(3000) + b"\x00" + bytes(bad_crc) + p.encode(p.Ack(2), 2)[:6] + b"\x00"
                  + b"\x07" * 2000 + b"\x00" + unknown + b"\x00" + p.encode(p.Heartbeat(9), 3))  # fmt: skip
        wait_for(lambda: any(f.seq == 3 for f in got.frames), "the good frame after the garbage")
        dropped = {s.labels["reason"]: s.value for s in metrics.dropped.collect()[0].samples if s.name.endswith("_total")}
        assert dropped["oversize"] >= 1 and dropped["type"] == 1 and sum(dropped.values()) >= 4
    finally:
        link.stop()
        dev.close()


def test_unplug_and_replug_reconnects(tmp_path):
    dev = PtyTransport(tmp_path / "tty")
    got = Collect()
    link = SerialLink(str(tmp_path / "tty"), on_frame=got, max_backoff=0.2).start()
    try:
        wait_for(link.connected.is_set, "pty open")
        dev.write(p.encode(p.Heartbeat(1), 1))
        wait_for(lambda: len(got.frames) == 1, "frame before unplug")
        dev.close()  # unplugged: the bridge's reads fail
        wait_for(lambda: not link.connected.is_set(), "link noticed the unplug")
        assert not link.send(p.Ack(1))  # writes while away fail quietly
        dev.open()  # replugged (a new pty; the symlink follows, as a udev name would)
        wait_for(lambda: link.connects >= 2 and link.connected.is_set(), "link reopened")
        dev.write(p.encode(p.Heartbeat(2), 2))
        wait_for(lambda: len(got.frames) == 2, "frame after replug")
        assert link.send(p.Ack(2))
        dec = p.Decoder()
        out: list[p.Frame] = []
        wait_for(lambda: out.extend(dec.feed(dev.read(0.05))) or out, "the bridge's write reached the device")
        assert out[0].message == p.Ack(2)
    finally:
        link.stop()
        dev.close()
