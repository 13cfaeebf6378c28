"""Prometheus exporter for the whole fleet, built at scrape time from :class:`cloud.fleet.ingest.FleetState`.

Every per-device series carries ``fleet, device, store, model_version, variant``. Served metrics
(``edgeship fleet serve --metrics HOST:PORT``, ``GET /metrics``)::

    edgeship_fleet_device_up                       1 online / 0 offline (retained availability, last will)
    edgeship_fleet_device_last_seen_timestamp_seconds, edgeship_fleet_device_last_seen_age_seconds (staleness)
    edgeship_fleet_device_info{model,runtime,status}
    edgeship_fleet_seq_received_total{kind}        unique telemetry / events messages (duplicates dropped)
    edgeship_fleet_seq_highest, edgeship_fleet_seq_first
    edgeship_fleet_seq_duplicates_total, edgeship_fleet_telemetry_gaps_total,
    edgeship_fleet_telemetry_gap_messages_total, edgeship_fleet_telemetry_missing,
    edgeship_fleet_device_spool_dropped_total      the device's own spool drops (explains a gap)
    edgeship_fleet_requests_total{transport,outcome}
    edgeship_fleet_request_duration_seconds{transport}   histogram (device's cumulative buckets)
    edgeship_fleet_latency_budget_seconds          the p99 budget the alert compares with
    edgeship_fleet_drift_psi{feature}
    edgeship_fleet_gate_runs_total{result}, edgeship_fleet_model_updates_total{outcome},
    edgeship_fleet_model_rollbacks_total{reason}, edgeship_fleet_events_total{kind}
    edgeship_fleet_delivery_pending, edgeship_fleet_delivery_progress   rollout in progress on the device
    edgeship_fleet_realised_nwrmsle{store_nbr, model_version=forecasts' version}, edgeship_fleet_realised_rows,
    edgeship_fleet_offline_nwrmsle
    edgeship_fleet_devices{fleet,status}, edgeship_fleet_bad_messages_total{fleet,reason},
    edgeship_fleet_ingest_messages_total{leaf}, edgeship_fleet_devices_expired_total, edgeship_fleet_ingest_shared,
    edgeship_fleet_actuals_rows (sales rows stored for retraining, :mod:`cloud.fleet.actuals`)

::

    state = FleetState()
    server = serve_metrics(state, "127.0.0.1", 9108, latency_budget_s=0.05)   # GET /metrics
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from cloud.fleet.ingest import FleetState

__all__ = ["FleetCollector", "fleet_registry", "serve_metrics", "BASE_LABELS"]

logger = logging.getLogger(__name__)

BASE_LABELS = ["fleet", "device", "store", "model_version", "variant"]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class FleetCollector:
    """A prometheus_client collector over a :class:`FleetState` (expires vanished devices on scrape)."""

    def __init__(self, state: FleetState, *, latency_budget_s: float = 0.05, shared: Any = None) -> None:
        self.state = state
        self.latency_budget_s = latency_budget_s
        self.shared = shared  # callable -> bool (the ingest uses shared subscriptions)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:  # noqa: C901 - one family after another
        now = time.time()
        self.state.expire(now)
        devices = self.state.snapshot()
        B = BASE_LABELS

        def g(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=B + (extra or []))

        def c(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=B + (extra or []))

        up = g("edgeship_fleet_device_up", "1 while the device is online (retained availability), 0 offline.")
        seen = g("edgeship_fleet_device_last_seen_timestamp_seconds", "When the device was last heard from.")
        age = g("edgeship_fleet_device_last_seen_age_seconds", "Seconds since the device was last heard from (staleness).")
        info = g("edgeship_fleet_device_info", "The device's active model and status (1).", ["model", "runtime", "status"])
        received = c("edgeship_fleet_seq_received", "Unique sequenced messages taken (duplicates dropped).", ["kind"])
        highest = g("edgeship_fleet_seq_highest", "Highest per-device sequence number seen.")
        first = g("edgeship_fleet_seq_first", "First per-device sequence number seen (since the last reset).")
        dups = c("edgeship_fleet_seq_duplicates", "Messages dropped as duplicates of a sequence number seen before.")
        gaps = c("edgeship_fleet_telemetry_gaps", "Jumps in the per-device sequence (messages missing).")
        gap_msgs = c("edgeship_fleet_telemetry_gap_messages", "Sequence numbers skipped at jumps.")
        missing = g("edgeship_fleet_telemetry_missing", "Sequence numbers still missing (within the last 10,000).")
        spool = c("edgeship_fleet_device_spool_dropped", "Messages the device dropped from its full spool.")
        requests = c("edgeship_fleet_requests", "Prediction requests by transport and outcome.", ["transport", "outcome"])
        latency = HistogramMetricFamily(
            "edgeship_fleet_request_duration_seconds", "Device request latency (the agent's histogram).", labels=B + ["transport"]
        )
        budget = g("edgeship_fleet_latency_budget_seconds", "The p99 request latency budget of the device's model.")
        psi = g("edgeship_fleet_drift_psi", "Population Stability Index of one model input over the drift window.", ["feature"])
        gate = c("edgeship_fleet_gate_runs", "On-device gate runs by result.", ["result"])
        updates = c("edgeship_fleet_model_updates", "Model update steps by outcome.", ["outcome"])
        rollbacks = c("edgeship_fleet_model_rollbacks", "Rollbacks by reason.", ["reason"])
        events = c("edgeship_fleet_events", "Device events by kind.", ["kind"])
        pending = g("edgeship_fleet_delivery_pending", "1 while a model delivery to the device is unfinished.")
        progress = g("edgeship_fleet_delivery_progress", "Share of the pending bundle's chunks the device has (0-1).")
        realised = GaugeMetricFamily(
            "edgeship_fleet_realised_nwrmsle",
            "Realised NWRMSLE of the device's forecasts against reported sales, per store and forecasting model version.",
            labels=B + ["store_nbr"],
        )
        realised_rows = GaugeMetricFamily(
            "edgeship_fleet_realised_rows", "Sales rows joined to forecasts, per store and model version.", labels=B + ["store_nbr"]
        )
        offline = GaugeMetricFamily(
            "edgeship_fleet_offline_nwrmsle", "Validation NWRMSLE in the model's manifest.", labels=B + ["store_nbr"]
        )
        counts: dict[tuple[str, str], int] = {}
        for d in devices:
            L = list(d.labels())
            online = d.online if d.online is not None else bool(d.last_seen)
            up.add_metric(L, 1.0 if online else 0.0)
            counts[(d.fleet, "online" if online else "offline")] = counts.get((d.fleet, "online" if online else "offline"), 0) + 1
            seen.add_metric(L, d.last_seen)
            age.add_metric(L, max(0.0, now - d.last_seen))
            info.add_metric(L + [d.model, d.runtime, d.status], 1.0)
            for kind in ("telemetry", "events"):
                received.add_metric(L + [kind], float(d.received.get(kind, 0)))
            highest.add_metric(L, float(d.highest))
            first.add_metric(L, float(d.first_seq))
            dups.add_metric(L, float(d.duplicates))
            gaps.add_metric(L, float(d.gaps))
            gap_msgs.add_metric(L, float(d.gap_messages))
            missing.add_metric(L, float(len(d.missing)))
            t = d.telemetry
            spool.add_metric(L, _num(t.get("dropped_total")) or 0.0)
            budget.add_metric(L, _num(t.get("latency_budget_s")) or self.latency_budget_s)
            m = t.get("metrics") if isinstance(t.get("metrics"), dict) else {}
            for key, value in (m.get("requests") or {}).items():
                transport, _, outcome = str(key).partition(":")
                if _num(value) is not None and outcome:
                    requests.add_metric(L + [transport, outcome], float(value))
            for transport, h in (m.get("latency") or {}).items():
                try:
                    buckets = [(repr(float(le)), float(n)) for le, n in zip(h["le"], h["counts"], strict=True)]
                    buckets.append(("+Inf", float(h["count"])))
                    latency.add_metric(L + [str(transport)], buckets, float(h["sum"]))
                except (KeyError, TypeError, ValueError):
                    continue
            for metric, key in ((gate, "gate_runs"), (updates, "updates"), (rollbacks, "rollbacks")):
                for label, value in (m.get(key) or {}).items():
                    if _num(value) is not None:
                        metric.add_metric(L + [str(label)], float(value))
            for feature, value in (t.get("drift_psi") or {}).items():
                if _num(value) is not None:
                    psi.add_metric(L + [str(feature)], float(value))
            for kind, n in d.events.items():
                events.add_metric(L + [kind], float(n))
            dl = d.delivery or {}
            is_pending = bool(dl) and dl.get("state") not in (None, "idle", "done", "active") and str(dl.get("version")) != d.version
            pending.add_metric(L, 1.0 if is_pending else 0.0)
            total = _num(dl.get("total"))
            progress.add_metric(L, (_num(dl.get("have")) or 0.0) / total if is_pending and total else (0.0 if is_pending else 1.0))
            for r in t.get("realised") or []:
                try:
                    RL = [d.fleet, d.device, d.store, str(int(r["version"])), d.variant, str(int(r["store_nbr"]))]
                    realised.add_metric(RL, float(r["nwrmsle"]))
                    realised_rows.add_metric(RL, float(r["rows"]))
                    if _num(r.get("offline_nwrmsle")) is not None:
                        offline.add_metric(RL, float(r["offline_nwrmsle"]))
                except (KeyError, TypeError, ValueError):
                    continue
        yield from (up, seen, age, info, received, highest, first, dups, gaps, gap_msgs, missing, spool, requests, latency)
        yield from (budget, psi, gate, updates, rollbacks, events, pending, progress, realised, realised_rows, offline)
        fleet_devices = GaugeMetricFamily("edgeship_fleet_devices", "Devices known, by status.", labels=["fleet", "status"])
        for (fleet, status), n in sorted(counts.items()):
            fleet_devices.add_metric([fleet, status], float(n))
        yield fleet_devices
        bad = CounterMetricFamily("edgeship_fleet_bad_messages", "Messages dropped as unreadable, by reason.", labels=["fleet", "reason"])
        with self.state.lock:
            bad_items = sorted(self.state.bad.items())
            leaves = sorted(self.state.messages.items())
            expired = self.state.expired
        for (fleet, reason), n in bad_items:
            bad.add_metric([fleet, reason], float(n))
        yield bad
        msgs = CounterMetricFamily("edgeship_fleet_ingest_messages", "MQTT messages the ingest took, by topic leaf.", labels=["leaf"])
        for leaf, n in leaves:
            if leaf in ("telemetry", "events", "state", "availability"):
                msgs.add_metric([leaf], float(n))
        yield msgs
        yield CounterMetricFamily("edgeship_fleet_devices_expired", "Devices forgotten after expire_after.", value=float(expired))
        actuals = self.state.actuals
        yield GaugeMetricFamily(
            "edgeship_fleet_actuals_rows", "Sales rows stored for retraining (deduplicated by device, date, store, item).",
            value=float(actuals.rows if actuals is not None else 0),
        )
        shared = bool(self.shared()) if callable(self.shared) else False
        yield GaugeMetricFamily("edgeship_fleet_ingest_shared", "1 when MQTT 5 shared subscriptions are used.", value=1.0 if shared else 0.0)


def fleet_registry(state: FleetState, **kw: Any) -> CollectorRegistry:
    """A registry holding only the fleet collector (no process metrics: ``promtool check metrics`` clean)."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(state, **kw))
    return registry


def serve_metrics(state: FleetState, host: str, port: int, **kw: Any) -> Any:
    """Serve ``GET /metrics`` on ``host:port`` from a daemon thread; returns the server (``.shutdown()``)."""
    server, _thread = start_http_server(port, addr=host, registry=fleet_registry(state, **kw))
    logger.info("fleet metrics on http://%s:%d/metrics", host, server.server_port)
    return server
