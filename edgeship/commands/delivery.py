"""``edgeship publish | serve-bundles | rollout start|status|abort | rollback``: getting bundles to devices.

Credentials never go on the command line: ``EDGESHIP_MQTT_USERNAME`` / ``_PASSWORD``, and for
``mqtts://`` ``EDGESHIP_MQTT_CA`` / ``_CERT`` / ``_KEY`` (see :mod:`models.broker`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeship.commands.args import DEFAULT_STATE_DIR, EXAMPLES, error, pairs, seconds

EPILOG = """examples:
  edgeship publish out/favorita_demand-v2.bundle --broker mqtt://127.0.0.1:1883 --key keys/signing.key
  edgeship serve-bundles out/*.bundle --broker mqtt://127.0.0.1:1883
  edgeship rollout start out/favorita_demand-v3.bundle --broker mqtt://127.0.0.1:1883 --key keys/signing.key \\
      --canary 1 --waves 50%,100% --abort-if 'nwrmsle>0.6' --soak 10m
  edgeship rollout status;  edgeship rollout abort --reason 'bad canary'
  edgeship rollback --to 2 --broker mqtt://127.0.0.1:1883 --key keys/signing.key --device store-7"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="send a bundle to every device of a fleet now (signed targets)", epilog=EPILOG, formatter_class=EXAMPLES)
    p.add_argument("bundle", type=Path)
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--key", required=True, type=Path, help="model-signing key: signs the delivery metadata")
    p.add_argument("--fleet", default="default")
    p.add_argument("--expires-in", type=seconds, default=7 * 86400, help="devices refuse it after this (default 7d)")
    p.add_argument("--hardware", action="append", help="only for this hardware (machine or 'hardware' attribute); repeatable")
    p.add_argument("--select", action="append", metavar="KEY=VALUE", help="only devices reporting this attribute")
    p.add_argument("--keylist", type=Path, help="root-signed key list to ship (default: keylist.json beside --key)")
    p.add_argument("--chunk-size", type=int, default=64 * 1024)
    p.add_argument("--keep-retained", type=int, default=3, metavar="K",
                   help="versions of this model whose chunks stay retained on the broker; older ones are cleared (default 3)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rollback", action="store_true",
                   help="going back to an older version on purpose (else refused when the fleet announces a newer one)")
    p.set_defaults(func=_publish)

    p = sub.add_parser("serve-bundles", help="keep bundles' chunks retained and answer devices' chunk requests", epilog=EPILOG, formatter_class=EXAMPLES)
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", default="default")
    p.add_argument(
        "--chunk-size", type=int, default=None,
        help="default: as the retained (signed) announcement of the bundle declares; chunk requests name their own",
    )  # fmt: skip
    p.set_defaults(func=_serve)

    rollout = sub.add_parser("rollout", help="staged rollouts gated on device health", epilog=EPILOG, formatter_class=EXAMPLES).add_subparsers(
        dest="rollout_command", required=True
    )
    p = rollout.add_parser("start", help="roll a bundle out in waves; stays up until it ends", epilog=EPILOG, formatter_class=EXAMPLES)
    p.add_argument("bundle", type=Path)
    p.add_argument("--broker", required=True)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--fleet", default="default")
    p.add_argument("--canary", type=int, default=0, help="devices in the first wave")
    p.add_argument("--waves", default="100%", help="cumulative shares after the canary, e.g. 10%%,50%%,100%%")
    p.add_argument("--select", action="append", metavar="KEY=VALUE", help="only devices with this attribute")
    p.add_argument("--device", action="append", help="only these devices")
    p.add_argument("--abort-if", action="append", default=[], metavar="RULE",
                   help="e.g. nwrmsle>0.6, latency_p99_ms>1.5x, error_rate>0.01 (failed>0, gate_failed>0 always)")  # fmt: skip
    p.add_argument("--gate-timeout", type=seconds, default=600.0, help="per wave: success within this (default 600 s)")
    p.add_argument("--soak", type=seconds, default=0.0, help="healthy this long before the next wave")
    p.add_argument("--require-gate", action="store_true", help="a device succeeds only after its on-device gate passed")
    p.add_argument("--expires-in", type=seconds, default=7 * 86400)
    p.add_argument("--keylist", type=Path)
    p.add_argument("--no-promote", action="store_true", help="do not set the fleet announcement on success")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--discover", type=seconds, default=3.0, help="seconds to gather the fleet's retained state")
    p.add_argument("--rollback", action="store_true",
                   help="rolling out an older version on purpose (else refused when the fleet announces a newer one)")
    p.set_defaults(func=_rollout)
    p = rollout.add_parser("status", help="the current (or last) rollout")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_rollout)
    p = rollout.add_parser("abort", help="stop the rollout and roll its devices back")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--reason", default="rollout abort")
    p.add_argument("--broker", help="only needed when the controller is not running")
    p.add_argument("--key", type=Path, help="only needed when the controller is not running")
    p.set_defaults(func=_rollout)

    p = sub.add_parser("rollback", help="signed rollback command: devices go back to VERSION", epilog=EPILOG, formatter_class=EXAMPLES)
    p.add_argument("--to", required=True, type=int, metavar="VERSION")
    p.add_argument("--broker", required=True)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--fleet", default="default")
    p.add_argument("--device", action="append", help="only these devices (default: the whole fleet)")
    p.add_argument("--bundle", type=Path, help="the bundle of VERSION (default: from the rollout registry)")
    p.add_argument("--model", help="model name in the registry (default: the one that has VERSION)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--expires-in", type=seconds, default=7 * 86400)
    p.set_defaults(func=_rollback)


def _publish(args: argparse.Namespace) -> int:
    from cloud.fleet.publish import PublishError, publish

    try:
        select = pairs(args.select)
        ann = publish(
            args.bundle, args.broker, key=args.key, fleet=args.fleet, chunk_size=args.chunk_size,
            progress=not args.no_progress, expires_in=args.expires_in, hardware=args.hardware,
            attributes=select or None, keylist=args.keylist, keep_retained=args.keep_retained, rollback=args.rollback,
        )  # fmt: skip
    except (PublishError, ValueError, FileNotFoundError, argparse.ArgumentTypeError) as exc:
        return error(str(exc))
    print(
        f"published {ann.model} v{ann.version} ({ann.size} bytes, sha256 {ann.sha256[:16]}…) to fleet {args.fleet}, "
        f"signed, expires {ann.targets.signed['expires_at'] if ann.targets else '?'}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cloud.fleet.publish import PublishError, serve_bundles

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"serving {len(args.bundles)} bundle(s) on {args.broker}; Ctrl-C to stop", flush=True)
        serve_bundles(args.bundles, args.broker, fleet=args.fleet, chunk_size=args.chunk_size, stop=stop)
    except (PublishError, FileNotFoundError) as exc:
        return error(str(exc))
    except KeyboardInterrupt:
        pass
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from cloud.fleet.publish import PublishError
    from cloud.fleet.rollout import Rollout, RolloutError, abort, format_status, parse_waves, status

    try:
        if args.rollout_command == "start":
            r = Rollout(
                args.bundle, args.broker, key=args.key, state_dir=args.state_dir, fleet=args.fleet,
                canary=args.canary, waves=parse_waves(args.waves), select=pairs(args.select),
                abort_if=args.abort_if, gate_timeout=args.gate_timeout, soak=args.soak,
                require_gate=args.require_gate, expires_in=args.expires_in, keylist=args.keylist,
                promote=False if args.no_promote else None, discover_s=args.discover, devices=args.device,
                rollback=args.rollback,
            )  # fmt: skip
            print(f"rollout {r.id}: state in {args.state_dir / 'rollout.json'}", flush=True)
            state = r.run()
            print(format_status({**state, "controller_alive": False}))
            return {"succeeded": 0, "failed": 2}.get(state["phase"], 3)
        if args.rollout_command == "status":
            data = status(args.state_dir)
            if data is None:
                return error(f"no rollout in {args.state_dir}", 1)
            print(json.dumps(data, indent=1) if args.json else format_status(data))
            return 0
        if args.rollout_command == "abort":
            data = abort(args.state_dir, reason=args.reason, broker=args.broker, key=args.key)
            print(format_status(data))
            return 0
    except (RolloutError, PublishError, ConnectionError, FileNotFoundError, argparse.ArgumentTypeError) as exc:
        return error(str(exc))
    raise AssertionError(args.rollout_command)


def _rollback(args: argparse.Namespace) -> int:
    from cloud.fleet.publish import PublishError
    from cloud.fleet.rollout import RolloutError, rollback

    try:
        ann = rollback(
            args.broker, to=args.to, key=args.key, fleet=args.fleet, model=args.model, bundle=args.bundle,
            devices=args.device, state_dir=args.state_dir, expires_in=args.expires_in,
        )  # fmt: skip
    except (RolloutError, PublishError, FileNotFoundError) as exc:
        return error(str(exc))
    who = ", ".join(args.device) if args.device else f"every device of fleet {args.fleet}"
    print(f"signed rollback command to {ann.model} v{ann.version} sent to {who}")
    return 0
