"""The agent's Prometheus metrics, on a registry of its own (two agents may share a process).

>>> m = AgentMetrics()
>>> m.observe_request("http", "ok", 0.0003, rows=1, timings={"validate": 1e-5, "encode": 2e-5, "infer": 1e-5})
>>> b"edgeship_requests_total" in m.exposition()[0]
True
"""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from models.messages import ActiveModel

__all__ = ["AgentMetrics", "TRANSPORTS", "OUTCOMES"]

#: Bounded label values.
TRANSPORTS = ("http", "mqtt", "serial")
OUTCOMES = ("ok", "invalid", "unavailable", "error")
UPDATE_OUTCOMES = ("received", "verified", "gate_passed", "gate_failed", "active", "rolled_back", "refused", "failed")
GATE_RESULTS = ("passed", "failed", "skipped")
ROLLBACK_REASONS = ("manual", "damaged")

_REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_STAGE_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)


class AgentMetrics:
    """Every metric the agent exposes; ``exposition()`` renders them for ``GET /metrics``."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgeship_requests", "Prediction requests by transport and outcome.", ["transport", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "edgeship_request_duration_seconds",
            "Time from request received to response ready.",
            ["transport"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "edgeship_stage_duration_seconds",
            "Time per prediction stage (validate, encode, infer).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.predicted_rows = Counter("edgeship_predicted_rows", "Rows predicted.", registry=r)
        self.fallback_rows = Counter(
            "edgeship_fallback_rows",
            "Rows of pairs without sales history, forecast from a cold-start fallback window, by level "
            "(item, family_store, family_store_type, global).",
            ["level"],
            registry=r,
        )
        self.model_info = Gauge(
            "edgeship_model_info",
            "The active model (1); no series while none is active.",
            ["name", "version", "digest", "variant", "runtime", "providers"],
            registry=r,
        )
        self.model_updates = Counter(
            "edgeship_model_updates", "Model update steps by outcome.", ["outcome"], registry=r
        )
        self.gate_runs = Counter(
            "edgeship_gate_runs", "On-device holdout gate runs by result (passed, failed, skipped).", ["result"], registry=r
        )
        self.model_rollbacks = Counter(
            "edgeship_model_rollbacks",
            "Rollbacks to an earlier version: manual (CLI or API) or damaged (the active one failed at start-up).",
            ["reason"],
            registry=r,
        )
        self.model_swaps = Counter("edgeship_model_swaps", "Hot swaps of the served model.", registry=r)
        self.model_swap_seconds = Histogram(
            "edgeship_model_swap_seconds",
            "Time to load, warm up and gate a new model beside the old one, until it serves.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.bundle_bytes_received = Counter(
            "edgeship_bundle_received_bytes", "Bundle bytes received in good chunks.", registry=r
        )
        self.bad_chunks = Counter("edgeship_bad_chunks", "Bundle chunks rejected (hash, size or index).", registry=r)
        self.bad_messages = Counter("edgeship_bad_messages", "MQTT messages that could not be parsed.", registry=r)
        # device input (edge.serving.ingest_routes): the serial bridge's sale events and sensor readings
        self.sale_events = Counter(
            "edgeship_sale_events",
            "Sale events from devices by transport and outcome (accepted, duplicate, invalid).",
            ["transport", "outcome"],
            registry=r,
        )
        self.sensor_readings = Counter(
            "edgeship_sensor_readings", "Sensor readings from devices by transport and kind.", ["transport", "kind"], registry=r
        )
        self.sensor_value = Gauge(
            "edgeship_sensor_value", "Last reading of each device sensor.", ["device", "sensor", "kind", "unit"], registry=r
        )
        if process:
            ProcessCollector(registry=r)

    def observe_request(
        self,
        transport: str,
        outcome: str,
        seconds: float,
        *,
        rows: int = 0,
        timings: Mapping[str, float] | None = None,
    ) -> None:
        """Record one prediction request (and its stage timings when it reached them)."""
        self.requests.labels(transport, outcome).inc()
        self.request_duration.labels(transport).observe(seconds)
        if rows:
            self.predicted_rows.inc(rows)
        for stage, value in (timings or {}).items():
            self.stage_duration.labels(stage).observe(value)

    def observe_fallback(self, levels: Iterable[str | None]) -> None:
        """Count a request's cold-start rows per fallback level (None = a pair with history, not counted)."""
        counts = Counter_(level for level in levels if level is not None)
        for level, n in counts.items():
            self.fallback_rows.labels(level).inc(n)

    def set_model(self, info: ActiveModel | None) -> None:
        """Make ``info`` the only ``edgeship_model_info`` series (none when ``info`` is None)."""
        self.model_info.clear()
        if info is not None:
            self.model_info.labels(
                info.name, str(info.version), info.digest, info.variant, info.runtime, ",".join(info.providers)
            ).set(1)

    def summary(self) -> dict[str, Any]:
        """Cumulative counters and latency histograms as compact JSON, for telemetry to the fleet
        exporter (:mod:`cloud.fleet.exporter`), which re-exposes them per device::

            {"requests": {"http:ok": 12}, "latency": {"http": {"le": [...], "counts": [...], "sum": 0.01, "count": 12}},
             "gate_runs": {"passed": 1}, "updates": {"active": 1}, "rollbacks": {}, "bad_messages": 0}
        """
        out: dict[str, Any] = {"requests": {}, "latency": {}, "gate_runs": {}, "updates": {}, "rollbacks": {}}
        for key, metric, label in (
            ("requests", self.requests, None),
            ("gate_runs", self.gate_runs, "result"),
            ("updates", self.model_updates, "outcome"),
            ("rollbacks", self.model_rollbacks, "reason"),
        ):
            for family in metric.collect():
                for s in family.samples:
                    if s.name.endswith("_total"):
                        name = f"{s.labels['transport']}:{s.labels['outcome']}" if label is None else s.labels[label]
                        out[key][name] = s.value
        for family in self.request_duration.collect():
            for s in family.samples:
                h = out["latency"].setdefault(s.labels["transport"], {"le": [], "counts": [], "sum": 0.0, "count": 0})
                if s.name.endswith("_bucket") and s.labels["le"] != "+Inf":
                    h["le"].append(float(s.labels["le"]))
                    h["counts"].append(s.value)
                elif s.name.endswith("_sum"):
                    h["sum"] = s.value
                elif s.name.endswith("_count"):
                    h["count"] = s.value
        out["bad_messages"] = sum(s.value for f in self.bad_messages.collect() for s in f.samples if s.name.endswith("_total"))
        return out

    def exposition(self) -> tuple[bytes, str]:
        """Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
