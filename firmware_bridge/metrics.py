"""The bridge's own Prometheus metrics (a registry per bridge; ``edgeship bridge --metrics-port``).

The agent counts what reaches it (``edgeship_sale_events_total{transport="serial"}``,
``edgeship_sensor_readings_total``, requests with ``transport="serial"``) in
:mod:`edge.monitoring.metrics`; these count what happens on the wire before that.

>>> m = BridgeMetrics()
>>> m.dropped.labels("crc").inc()
>>> b'edgeship_bridge_dropped_frames_total{reason="crc"} 1.0' in m.exposition()
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from firmware_bridge.protocol import ERROR_REASONS

__all__ = ["BridgeMetrics"]


class BridgeMetrics:
    """Frames in and out, drops by reason, reconnects, the sale queue and prediction round trips."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames_in = Counter("edgeship_bridge_frames_in", "Good frames received, by message type.", ["type"], registry=r)
        self.frames_out = Counter("edgeship_bridge_frames_out", "Frames sent to devices, by message type.", ["type"], registry=r)
        self.dropped = Counter(
            "edgeship_bridge_dropped_frames", "Frames dropped, by reason (cobs, short, length, crc, version, type, "
            "payload, oversize).", ["reason"], registry=r
        )
        for reason in ERROR_REASONS:
            self.dropped.labels(reason)
        self.connects = Counter("edgeship_bridge_link_connects", "Serial links opened (first open and reconnects).", registry=r)
        self.disconnects = Counter("edgeship_bridge_link_disconnects", "Serial links lost.", registry=r)
        self.sales = Counter(
            "edgeship_bridge_sales", "Sale events by outcome (accepted, duplicate, invalid, retry).", ["outcome"], registry=r
        )
        self.queue = Gauge("edgeship_bridge_sale_queue", "Sale events received but not yet accepted by the agent.", registry=r)
        self.predict_seconds = Histogram(
            "edgeship_bridge_predict_seconds", "Prediction request frame in to response frame out.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r,
        )
        self.agent_errors = Counter("edgeship_bridge_agent_errors", "Agent calls that failed (unreachable, 5xx).", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
