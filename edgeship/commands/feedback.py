"""``edgeship feedback collect`` / ``report``: staff feedback from the devices into the cloud."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error, seconds


def register(sub: argparse._SubParsersAction) -> None:
    fb = sub.add_parser("feedback", help="collect and report staff feedback").add_subparsers(dest="feedback_command", required=True)
    p = fb.add_parser("collect", help="follow every device's feedback topic into an append-only, deduplicated store",
                      formatter_class=EXAMPLES,
                      epilog="example:\n  edgeship feedback collect --broker mqtt://127.0.0.1:1883 --out feedback/")  # fmt: skip
    p.add_argument("--broker", required=True, help="broker URL, mqtt://host:port or mqtts://…")
    p.add_argument("--out", required=True, type=Path, help="folder of the store (feedback.jsonl)")
    p.add_argument("--fleet", default="default")
    p.add_argument("--client-id", default="edgeship-feedback", help="MQTT client id of the persistent session")
    p.add_argument("--duration", type=seconds, help="stop after this many seconds (default: run until stopped)")
    p.set_defaults(func=_collect)
    p = fb.add_parser("report", help="per site and model version: count, agreement, NWRMSLE, worst items",
                      formatter_class=EXAMPLES,
                      epilog="example:\n  edgeship feedback report --in feedback/ --format csv > feedback.csv")  # fmt: skip
    p.add_argument("--in", dest="folder", required=True, type=Path, help="folder of the store")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--worst", type=int, default=3, help="worst items listed per group")
    p.set_defaults(func=_report)


def _collect(args: argparse.Namespace) -> int:
    from cloud.feedback.collect import Collector

    try:
        collector = Collector(args.broker, args.out, fleet=args.fleet, client_id=args.client_id).start()
    except (ValueError, OSError) as exc:
        return error(str(exc))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"collecting feedback from {args.broker} into {args.out}", flush=True)
    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    collector.stop()
    gaps = collector.gaps()
    print(f"stored {len(collector.store)} records" + (f"; sequence gaps {gaps}" if any(gaps.values()) else ""), flush=True)
    return 0


def _report(args: argparse.Namespace) -> int:
    from cloud.feedback.report import report, write_csv
    from cloud.feedback.store import FeedbackSet

    if not args.folder.is_dir():
        return error(f"--in {args.folder}: no such folder")
    rows = report(FeedbackSet(args.folder).records(), worst=args.worst)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    else:
        write_csv(rows, sys.stdout)
    return 0
