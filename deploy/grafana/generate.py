"""Writes deploy/grafana/dashboards/*.json (run from the repository root: python deploy/grafana/generate.py).

Every panel's PromQL is checked against a real Prometheus, and every metric it uses against the fleet
exporter's output, by tests/integration/test_fleet_prometheus.py.
"""
import json
from pathlib import Path

OUT = Path("deploy/grafana/dashboards")
SEL = 'fleet=~"$fleet", device=~"$device"'

def var(name, query):
    return {"name": name, "type": "query", "datasource": {"type": "prometheus", "uid": "edgeship-prometheus"},
            "query": {"query": query, "refId": name}, "definition": query, "includeAll": True, "multi": True,
            "current": {"text": "All", "value": "$__all"}, "refresh": 2}

def panel(i, title, exprs, kind="timeseries", unit=None, w=12, h=8):
    p = {"id": i, "type": kind, "title": title,
         "datasource": {"type": "prometheus", "uid": "edgeship-prometheus"},
         "gridPos": {"x": (i - 1) % 2 * 12 if w == 12 else 0, "y": (i - 1) // 2 * 8, "w": w, "h": h},
         "targets": [{"refId": chr(65 + k), "expr": e, "legendFormat": lf} for k, (e, lf) in enumerate(exprs)],
         "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []}, "options": {}}
    return p

def dash(uid, title, panels):
    return {"uid": uid, "title": title, "tags": ["edgeship"], "schemaVersion": 39, "version": 1, "editable": True,
            "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
            "templating": {"list": [var("fleet", "label_values(edgeship_fleet_device_up, fleet)"),
                                     var("device", 'label_values(edgeship_fleet_device_up{fleet=~"$fleet"}, device)')]},
            "panels": [panel(i + 1, *p) for i, p in enumerate(panels)]}

dashboards = {
 "fleet-overview": dash("edgeship-fleet-overview", "edgeship / Fleet overview", [
    ("Devices online / offline", [('sum by (status) (edgeship_fleet_devices{fleet=~"$fleet"})', "{{status}}")], "stat"),
    ("Last seen (age)", [(f'max by (device) (edgeship_fleet_device_last_seen_age_seconds{{{SEL}}})', "{{device}}")], "bargauge", "s"),
    ("Requests per second by outcome", [(f'sum by (outcome) (rate(edgeship_fleet_requests_total{{{SEL}}}[$__rate_interval]))', "{{outcome}}")], "timeseries", "reqps"),
    ("Model versions in the fleet", [(f'count by (model_version, variant) (edgeship_fleet_device_info{{{SEL}}})', "v{{model_version}} {{variant}}")], "piechart"),
    ("Telemetry messages missing", [(f'max by (fleet, device) (edgeship_fleet_seq_highest{{{SEL}}}) - min by (fleet, device) (edgeship_fleet_seq_first{{{SEL}}}) + 1 - sum by (fleet, device) (edgeship_fleet_seq_received_total{{{SEL}}})', "{{device}}")]),
    ("Bad messages dropped", [('sum by (reason) (rate(edgeship_fleet_bad_messages_total[$__rate_interval]))', "{{reason}}")]),
    ("Duplicates dropped and spool drops", [(f'sum by (device) (rate(edgeship_fleet_seq_duplicates_total{{{SEL}}}[$__rate_interval]))', "dup {{device}}"),
                                            (f'sum by (device) (edgeship_fleet_device_spool_dropped_total{{{SEL}}})', "spool {{device}}")]),
    ("Ingest", [('sum by (leaf) (rate(edgeship_fleet_ingest_messages_total[$__rate_interval]))', "{{leaf}}"),
                ('max(edgeship_fleet_ingest_shared)', "shared subscriptions"), ('sum(edgeship_fleet_devices_expired_total)', "expired")]),
 ]),
 "device-latency-errors": dash("edgeship-device-latency", "edgeship / Device latency and errors", [
    ("p50 / p99 latency", [(f'histogram_quantile(0.5, sum by (device, le) (rate(edgeship_fleet_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p50 {{device}}"),
                           (f'histogram_quantile(0.99, sum by (device, le) (rate(edgeship_fleet_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99 {{device}}"),
                           (f'max by (device) (edgeship_fleet_latency_budget_seconds{{{SEL}}})', "budget {{device}}")], "timeseries", "s"),
    ("Error ratio", [(f'sum by (device) (rate(edgeship_fleet_requests_total{{{SEL}, outcome!="ok"}}[$__rate_interval])) / sum by (device) (rate(edgeship_fleet_requests_total{{{SEL}}}[$__rate_interval]))', "{{device}}")], "timeseries", "percentunit"),
    ("Requests by transport", [(f'sum by (device, transport) (rate(edgeship_fleet_requests_total{{{SEL}}}[$__rate_interval]))', "{{device}} {{transport}}")], "timeseries", "reqps"),
    ("Online", [(f'max by (device) (edgeship_fleet_device_up{{{SEL}}})', "{{device}}")], "state-timeline"),
 ]),
 "drift": dash("edgeship-drift", "edgeship / Input drift", [
    ("PSI per feature", [(f'max by (device, feature) (edgeship_fleet_drift_psi{{{SEL}}})', "{{device}} {{feature}}")]),
    ("Features over 0.2", [(f'count by (device) (edgeship_fleet_drift_psi{{{SEL}}} > 0.2)', "{{device}}")], "bargauge"),
 ]),
 "realised-accuracy": dash("edgeship-realised", "edgeship / Realised accuracy", [
    ("Realised NWRMSLE per store and version", [(f'max by (store_nbr, model_version) (edgeship_fleet_realised_nwrmsle{{{SEL}}})', "store {{store_nbr}} v{{model_version}}")]),
    ("Offline (validation) NWRMSLE", [(f'max by (model_version) (edgeship_fleet_offline_nwrmsle{{{SEL}}})', "v{{model_version}}")]),
    ("Realised minus offline", [(f'max by (store_nbr, model_version) (edgeship_fleet_realised_nwrmsle{{{SEL}}}) - on (store_nbr, model_version) max by (store_nbr, model_version) (edgeship_fleet_offline_nwrmsle{{{SEL}}})', "store {{store_nbr}} v{{model_version}}")]),
    ("Rows joined", [(f'sum by (store_nbr, model_version) (edgeship_fleet_realised_rows{{{SEL}}})', "store {{store_nbr}} v{{model_version}}")], "bargauge"),
 ]),
 "rollout": dash("edgeship-rollout", "edgeship / Rollout progress", [
    ("Devices per model version", [(f'count by (model_version) (edgeship_fleet_device_info{{{SEL}}})', "v{{model_version}}")]),
    ("Deliveries pending and progress", [(f'sum(edgeship_fleet_delivery_pending{{{SEL}}})', "pending"),
                                         (f'min by (device) (edgeship_fleet_delivery_progress{{{SEL}}})', "{{device}}")], "timeseries", "percentunit"),
    ("Update outcomes", [(f'sum by (outcome) (increase(edgeship_fleet_model_updates_total{{{SEL}}}[1h]))', "{{outcome}}")], "bargauge"),
    ("Gate results and rollbacks", [(f'sum by (result) (increase(edgeship_fleet_gate_runs_total{{{SEL}}}[1h]))', "gate {{result}}"),
                                    (f'sum by (reason) (increase(edgeship_fleet_model_rollbacks_total{{{SEL}}}[1h]))', "rollback {{reason}}")]),
    ("Update events", [(f'sum by (kind) (increase(edgeship_fleet_events_total{{{SEL}}}[1h]))', "{{kind}}")]),
 ]),
}
for name, d in dashboards.items():
    (OUT / f"{name}.json").write_text(json.dumps(d, indent=1) + "\n")
