"""``edgeship fleet status``: the fleet inventory from devices' retained state."""

from __future__ import annotations

import argparse
import json

from edgeship.commands.args import EXAMPLES, error, seconds


def register(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="fleet inventory").add_subparsers(dest="fleet_command", required=True)
    p = fleet.add_parser("status", help="device, online, model version, last seen, gate result, hardware", formatter_class=EXAMPLES,
                      epilog="example:\n  edgeship fleet status --broker mqtt://127.0.0.1:1883 --json")
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", default="default")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", type=seconds, default=3.0, help="seconds at most to gather retained state")
    p.set_defaults(func=_fleet)


def _fleet(args: argparse.Namespace) -> int:
    from cloud.fleet.view import fleet_status, format_table

    try:
        rows = fleet_status(args.broker, args.fleet, wait=args.wait)
    except (ConnectionError, ValueError) as exc:
        return error(str(exc))
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0
