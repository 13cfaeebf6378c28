"""Every Prometheus metric of the agent process: names, help, labels and buckets are defined here only.

:class:`AgentMetrics` owns the registry (two agents may share a process) and the request, update and model
metrics; the groups below it (:class:`TelemetryMetrics`, :class:`SalesMetrics`, :class:`BatchMetrics`,
:class:`ArmMetrics`, :class:`PredLogMetrics`, :class:`RealisedMetrics`, the drift and realised-accuracy
collectors) are created by the module that updates them, on the agent's registry.

>>> m = AgentMetrics()
>>> m.observe_request("http", "ok", 0.0003, rows=1, timings={"validate": 1e-5, "encode": 2e-5, "infer": 1e-5})
>>> b"edgeship_requests_total" in m.exposition()[0]
True
"""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Mapping
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
from prometheus_client.core import GaugeMetricFamily

from models.messages import ActiveModel

__all__ = [
    "AgentMetrics", "DriftCollector", "TRANSPORTS", "OUTCOMES", "ARMS", "ArmMetrics", "BatchMetrics", "BatcherMetrics", "PredLogMetrics",
    "RealisedCollector", "RealisedMetrics", "SalesMetrics", "TelemetryMetrics",
]

#: Bounded label values.
TRANSPORTS = ("http", "mqtt", "serial")
OUTCOMES = ("ok", "invalid", "unavailable", "error")

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


# -- the metrics of the agent's other parts: defined here, created by their owner -------------
ARMS = ("live", "candidate")
_ARM_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
_SHADOW_DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
_ARM_VALUE_BUCKETS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0)


class TelemetryMetrics:
    """``edgeship_telemetry_*``: the spool and delivery of telemetry and events (:mod:`edge.monitoring.telemetry`)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.spooled = Counter(
            "edgeship_telemetry_spooled", "Telemetry and event messages stored for delivery.", ["kind"], registry=registry
        )
        self.delivered = Counter(
            "edgeship_telemetry_delivered", "Spooled messages the broker acknowledged.", registry=registry
        )
        self.dropped = Counter(
            "edgeship_telemetry_dropped", "Undelivered messages dropped because the spool was full.", registry=registry
        )
        self.pending = Gauge("edgeship_telemetry_pending", "Spooled messages not yet delivered.", registry=registry)
        self.spool_bytes = Gauge("edgeship_telemetry_spool_bytes", "Bytes the spool holds on disk.", registry=registry)
        self.unspooled = Counter(
            "edgeship_telemetry_unspooled",
            "Messages kept in memory because the spool could not be written (disk full, read-only, I/O error).",
            registry=registry,
        )
        self.in_memory = Gauge(
            "edgeship_telemetry_in_memory", "Undelivered messages held in memory only (spool not writable).", registry=registry
        )
        self.lost_at_restart = Counter(
            "edgeship_telemetry_lost_at_restart",
            "Messages held in memory (spool not writable) that the last shutdown lost; from the loss marker.",
            registry=registry,
        )
        self.spool_ok = Gauge(
            "edgeship_telemetry_spool_writable", "1 when the last message could be spooled to disk, else 0.", registry=registry
        )


class SalesMetrics:
    """``edgeship_sales_*`` and ``edgeship_lag_state_*``: reported sales and the online lag state (:mod:`edge.serving.online_state`)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.reports = Counter(
            "edgeship_sales_reports", "Sales reports by transport and outcome.", ["transport", "outcome"], registry=registry
        )
        self.rows = Counter("edgeship_sales_rows", "Reported sales rows applied to the lag state.", registry=registry)
        self.end = Gauge(
            "edgeship_lag_state_end_timestamp_seconds",
            "Last day of known sales in the live model's lag windows (unix time of its midnight UTC).",
            registry=registry,
        )
        self.saves = Counter("edgeship_lag_state_saves", "Lag state writes to disk by outcome.", ["outcome"], registry=registry)


class BatcherMetrics:
    __slots__ = ("rows", "requests", "queued", "rejected")

    def __init__(self, rows: Any, requests: Any, queued: Any, rejected: Any) -> None:
        self.rows, self.requests, self.queued, self.rejected = rows, requests, queued, rejected


class BatchMetrics:
    """``edgeship_batch_*``: rows and requests per batch, queueing time, refusals; one label per batcher.

    >>> m = BatchMetrics(CollectorRegistry())
    >>> live, shadow = m.child("live"), m.child("shadow")
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._rows = Histogram(
            "edgeship_batch_rows",
            "Rows per executed batch.",
            ["batcher"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=registry,
        )
        self._requests = Histogram(
            "edgeship_batch_requests",
            "Requests per executed batch.",
            ["batcher"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self._queued = Histogram(
            "edgeship_batch_queue_seconds",
            "Time a request waited before its batch started.",
            ["batcher"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
            registry=registry,
        )
        self._rejected = Counter(
            "edgeship_batch_rejected", "Requests refused because the queue was full.", ["batcher"], registry=registry
        )

    def child(self, batcher: str) -> BatcherMetrics:
        return BatcherMetrics(
            self._rows.labels(batcher),
            self._requests.labels(batcher),
            self._queued.labels(batcher),
            self._rejected.labels(batcher),
        )


class ArmMetrics:
    """Metrics per arm and of the shadow comparison (defined once, bounded labels)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.requests = Counter(
            "edgeship_arm_requests",
            "Requests answered (live, candidate in A/B) or mirrored (candidate in shadow) per arm, by outcome.",
            ["arm", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeship_arm_latency_seconds",
            "Per arm: time from queueing a request's rows until its predictions are ready.",
            ["arm"],
            buckets=_ARM_LATENCY_BUCKETS,
            registry=r,
        )
        self.prediction = Histogram(
            "edgeship_arm_prediction_log1p",
            "Per arm: predicted log1p(unit sales) of each row.",
            ["arm"],
            buckets=_ARM_VALUE_BUCKETS,
            registry=r,
        )
        self.abs_diff = Histogram(
            "edgeship_shadow_abs_diff",
            "Shadow: |candidate - live| per row in log1p space.",
            buckets=_SHADOW_DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_rows = Counter(
            "edgeship_shadow_rows", "Shadow rows compared, by agreement within tolerance.", ["agree"], registry=r
        )
        self.skipped = Counter(
            "edgeship_shadow_skipped", "Requests not mirrored because the shadow queue was full.", registry=r
        )
        self.fallbacks = Counter(
            "edgeship_candidate_fallbacks",
            "A/B requests routed to the candidate that it could not answer (answered by live).",
            registry=r,
        )
        self.info = Gauge(
            "edgeship_candidate_info",
            "The candidate model (1); no series while none is loaded.",
            ["name", "version", "digest", "variant", "runtime", "mode", "share"],
            registry=r,
        )
        for arm in ARMS:  # series exist from the start: rate() works from the first request
            self.latency.labels(arm)
            self.prediction.labels(arm)


class PredLogMetrics:
    """``edgeship_predlog_*``: the sampled prediction log on bounded disk (:mod:`edge.monitoring.predlog`)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.rows = Counter("edgeship_predlog_rows", "Rows written to the prediction log.", registry=registry)
        self.errors = Counter("edgeship_predlog_errors", "Prediction log writes that failed.", registry=registry)
        self.deleted = Counter(
            "edgeship_predlog_deleted_files", "Old prediction log files deleted to stay under max_bytes.", registry=registry
        )
        self.disk = Gauge("edgeship_predlog_bytes", "Bytes the prediction log holds on disk.", registry=registry)


class RealisedMetrics:
    """``edgeship_realised_*`` counters of the sales ↔ forecast join (:mod:`edge.monitoring.realised`)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.joined_rows = Counter(
            "edgeship_realised_joined_rows", "Reported sales rows joined to a logged forecast.", registry=registry
        )
        self.unmatched_rows = Counter(
            "edgeship_realised_unmatched_rows", "Reported sales rows with no logged forecast to join.", registry=registry
        )


class RealisedCollector:
    """``edgeship_realised_nwrmsle`` / ``edgeship_realised_rows`` from the running sums, at scrape time."""

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot  # edge.monitoring.realised.RealisedAccuracy.snapshot

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        err = GaugeMetricFamily(
            "edgeship_realised_nwrmsle", "Realised NWRMSLE of logged forecasts against reported sales.",
            labels=["store_nbr", "model", "version"],
        )
        rows = GaugeMetricFamily(
            "edgeship_realised_rows", "Reported sales rows joined per store and model version.",
            labels=["store_nbr", "model", "version"],
        )
        for r in self.snapshot():
            labels = [str(r["store_nbr"]), r["model"], str(r["version"])]
            err.add_metric(labels, r["nwrmsle"])
            rows.add_metric(labels, r["rows"])
        yield err
        yield rows


class DriftCollector:
    """Prometheus collector: ``edgeship_feature_drift_psi{feature}`` and ``edgeship_drift_window_rows``
    of whichever monitor ``current()`` returns at scrape time (the live model's
    :class:`edge.monitoring.drift.DriftMonitor`, or None)."""

    def __init__(self, current: Callable[[], Any], registry: CollectorRegistry | None = None) -> None:
        self._current = current
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families appear only once there is something to say

    def collect(self) -> Iterable[GaugeMetricFamily]:
        monitor = self._current()
        if monitor is None:
            return
        rows = GaugeMetricFamily("edgeship_drift_window_rows", "Served rows in the drift window.")
        rows.add_metric([], monitor.rows)
        yield rows
        values = monitor.psi()
        if values:
            fam = GaugeMetricFamily(
                "edgeship_feature_drift_psi",
                "Population Stability Index of a model input over the recent window vs the bundle's reference.",
                labels=["feature"],
            )
            for name, value in values.items():
                fam.add_metric([name], value)
            yield fam
