"""``edgeship fleet status | serve | report``: inventory, telemetry ingest + Prometheus exporter, realised accuracy."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from edgeship.commands.args import EXAMPLES, error, seconds


def register(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="fleet inventory, telemetry ingest and exporter, realised accuracy").add_subparsers(
        dest="fleet_command", required=True
    )
    p = fleet.add_parser("status", help="device, online, model version, last seen, gate result, hardware", formatter_class=EXAMPLES,
                      epilog="example:\n  edgeship fleet status --broker mqtt://127.0.0.1:1883 --json")
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", default="default")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", type=seconds, default=3.0, help="seconds at most to gather retained state")
    p.set_defaults(func=_fleet)

    p = fleet.add_parser(
        "serve",
        help="ingest every device's telemetry/events/state over MQTT and serve Prometheus /metrics",
        formatter_class=EXAMPLES,
        epilog="example:\n  edgeship fleet serve --broker mqtt://127.0.0.1:1883 --metrics 127.0.0.1:9108 --state /var/lib/edgeship-fleet",
    )
    p.add_argument("--broker", required=True)
    p.add_argument("--metrics", required=True, metavar="HOST:PORT", help="where to serve GET /metrics")
    p.add_argument("--state", default=None, metavar="DIR", help="save and restore trackers here (restarts invent no gaps)")
    p.add_argument("--fleet", default="+", help="one fleet id, or + for every fleet (default)")
    p.add_argument("--shared", choices=["auto", "on", "off"], default="auto",
                   help="MQTT 5 shared subscriptions: auto falls back to MQTT 3.1.1 (one worker) when refused")
    p.add_argument("--group", default="edgeship-ingest", help="shared subscription group")
    p.add_argument("--expire-after", type=seconds, default=86400.0, help="forget devices silent this long (default 1d)")
    p.add_argument("--latency-budget", type=seconds, default=0.05, help="p99 latency budget in seconds (default 0.05)")
    p.add_argument("--save-interval", type=seconds, default=10.0, help="seconds between state saves")
    p.set_defaults(func=_serve)

    p = fleet.add_parser(
        "report",
        help="realised NWRMSLE per store and model version next to the manifest's offline NWRMSLE",
        formatter_class=EXAMPLES,
        epilog="example:\n  edgeship fleet report --state /var/lib/edgeship-fleet --manifest out/manifest.json",
    )
    p.add_argument("--state", required=True, metavar="DIR", help="the fleet ingest's --state folder")
    p.add_argument("--manifest", action="append", default=[], help="manifest.json giving offline NWRMSLE (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_report)


def _fleet(args: argparse.Namespace) -> int:
    from cloud.fleet.view import fleet_status, format_table

    try:
        rows = fleet_status(args.broker, args.fleet, wait=args.wait)
    except (ConnectionError, ValueError) as exc:
        return error(str(exc))
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics {value!r} must be HOST:PORT (port 0-65535)")
    return host.strip("[]"), int(port)


def _serve(args: argparse.Namespace) -> int:
    from cloud.fleet.exporter import serve_metrics
    from cloud.fleet.ingest import FleetState, Ingest

    try:
        host, port = host_port(args.metrics)
        state = FleetState(expire_after_s=args.expire_after, state_dir=args.state)
        ingest = Ingest(args.broker, state, fleet=args.fleet, shared=args.shared, group=args.group)
        ingest.start()
    except (ConnectionError, ValueError) as exc:
        return error(str(exc))
    try:
        server = serve_metrics(state, host, port, latency_budget_s=args.latency_budget, shared=lambda: ingest.shared)
    except OSError as exc:
        ingest.stop()
        return error(f"--metrics {args.metrics}: {exc}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    mode = "MQTT 5 shared subscriptions" if ingest.shared else "MQTT 3.1.1 (single worker)"
    print(f"fleet ingest on {args.broker} ({mode}); metrics on http://{host}:{server.server_port}/metrics", flush=True)
    try:
        while not stop.wait(args.save_interval):
            state.save()
    finally:
        ingest.stop()
        server.shutdown()
        state.save()
    return 0


def _report(args: argparse.Namespace) -> int:
    from cloud.fleet.report import format_report, load_state, offline_from_manifests, realised_report

    try:
        state = load_state(args.state)
        offline = offline_from_manifests(args.manifest)
    except (OSError, ValueError) as exc:
        return error(str(exc))
    rows = realised_report(state.snapshot(), offline)
    print(json.dumps(rows, indent=1) if args.json else format_report(rows))
    return 0
