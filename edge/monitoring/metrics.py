"""The agent's Prometheus metrics, on a registry of its own (two agents may share a process).

>>> m = AgentMetrics()
>>> m.observe_request("http", "ok", 0.0003, rows=1, timings={"validate": 1e-5, "encode": 2e-5, "infer": 1e-5})
>>> b"edgeship_requests_total" in m.exposition()[0]
True
"""

from __future__ import annotations

from collections.abc import Mapping

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
        # security (issue 7)
        self.mqtt_loop_restarts = Counter(
            "edgeship_mqtt_loop_restarts", "MQTT network loops found dead and restarted by the watchdog.", registry=r
        )
        self.refused_documents = Counter(
            "edgeship_refused_documents", "Signed documents or commands refused, by reason.", ["reason"], registry=r
        )
        self.keylist_stale = Gauge(
            "edgeship_keylist_stale", "1 while the held root-signed key list has expired (updates refused).", registry=r
        )
        self.revoked_model_actions = Counter(
            "edgeship_revoked_model_actions",
            "Served or fallback models found signed by a revoked key, by what the agent did (switched, stopped).",
            ["action"],
            registry=r,
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

    def set_model(self, info: ActiveModel | None) -> None:
        """Make ``info`` the only ``edgeship_model_info`` series (none when ``info`` is None)."""
        self.model_info.clear()
        if info is not None:
            self.model_info.labels(
                info.name, str(info.version), info.digest, info.variant, info.runtime, ",".join(info.providers)
            ).set(1)

    def exposition(self) -> tuple[bytes, str]:
        """Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
