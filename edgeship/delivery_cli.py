"""Delivery commands of the ``edgeship`` CLI (wired in by :mod:`edgeship.cli`).

    edgeship keys init-root --out DIR                         root.key (offline) + root.pub (devices)
    edgeship keys sign --root ROOTKEY --signing PUB [--keylist FILE]     trust a signing key (rotation)
    edgeship keys revoke KEYID|PUB --root ROOTKEY [--keylist FILE]       never trust it again
    edgeship keys publish --keylist FILE --broker URL [--fleet F]
    edgeship publish BUNDLE --broker URL --key KEY [--expires-in S] [--hardware H…] [--select K=V…]
    edgeship serve-bundles BUNDLE… --broker URL [--fleet F]
    edgeship rollout start BUNDLE --broker URL --key KEY [--canary N] [--waves 10%,50%,100%]
                           [--select K=V…] [--abort-if RULE…] [--gate-timeout S] [--soak S]
    edgeship rollout status [--json]          edgeship rollout abort [--reason R]
    edgeship rollback --to VERSION --broker URL --key KEY [--device D…] [--bundle FILE]
    edgeship fleet status --broker URL [--fleet F] [--json]
    edgeship provision ca|cloud|device …

Credentials never go on the command line: ``EDGESHIP_MQTT_USERNAME`` / ``_PASSWORD``, and for
``mqtts://`` ``EDGESHIP_MQTT_CA`` / ``_CERT`` / ``_KEY`` (see :mod:`models.broker`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "add_key_parsers", "run"]

DEFAULT_STATE_DIR = Path(os.environ.get("EDGESHIP_STATE_DIR", Path.home() / ".edgeship"))


def _pairs(values: list[str] | None) -> dict[str, str]:
    out = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise argparse.ArgumentTypeError(f"{v!r} must be KEY=VALUE")
        out[k.strip()] = val.strip()
    return out


def _seconds(value: str) -> float:
    """``3600``, ``90s``, ``15m``, ``12h``, ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        n = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds (e.g. 3600, 15m, 12h, 7d), got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return n


def add_key_parsers(keys: Any) -> None:
    """``keys init-root | sign | revoke | publish`` (``keys`` is the ``keys`` sub-command group)."""
    p = keys.add_parser("init-root", help="write DIR/root.key (keep offline) and DIR/root.pub (give to devices)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--force", action="store_true")
    p = keys.add_parser("sign", help="add a signing key to the root-signed key list (a new version)")
    p.add_argument("--root", required=True, type=Path, help="root private key")
    p.add_argument("--signing", required=True, type=Path, help="signing PUBLIC key to trust")
    p.add_argument("--keylist", type=Path, help="key list file (default: keylist.json beside --signing)")
    p.add_argument("--name", help="who holds the key (shown in the list)")
    p.add_argument("--expires-in", type=_seconds, help="the list expires after this (default: never)")
    p = keys.add_parser("revoke", help="revoke a signing key (by key id or public key file)")
    p.add_argument("key", help="16-hex key id or a public key file")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--keylist", required=True, type=Path)
    p = keys.add_parser("publish", help="publish the key list retained to a fleet")
    p.add_argument("--keylist", required=True, type=Path)
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", default="default")


def add_parsers(sub: Any) -> None:
    """Every delivery command but ``keys``'s."""
    p = sub.add_parser("publish", help="send a bundle to every device of a fleet now (signed targets)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--key", required=True, type=Path, help="model-signing key: signs the delivery metadata")
    p.add_argument("--fleet", default="default")
    p.add_argument("--expires-in", type=_seconds, default=7 * 86400, help="devices refuse it after this (default 7d)")
    p.add_argument("--hardware", action="append", help="only for this hardware (machine or 'hardware' attribute); repeatable")
    p.add_argument("--select", action="append", metavar="KEY=VALUE", help="only devices reporting this attribute")
    p.add_argument("--keylist", type=Path, help="root-signed key list to ship (default: keylist.json beside --key)")
    p.add_argument("--chunk-size", type=int, default=64 * 1024)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("serve-bundles", help="keep bundles' chunks retained and answer devices' chunk requests")
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", default="default")
    p.add_argument("--chunk-size", type=int, default=64 * 1024, help="as the bundle was published with (default 64 KiB)")

    rollout = sub.add_parser("rollout", help="staged rollouts gated on device health").add_subparsers(
        dest="rollout_command", required=True
    )
    p = rollout.add_parser("start", help="roll a bundle out in waves; stays up until it ends")
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
    p.add_argument("--gate-timeout", type=_seconds, default=600.0, help="per wave: success within this (default 600 s)")
    p.add_argument("--soak", type=_seconds, default=0.0, help="healthy this long before the next wave")
    p.add_argument("--require-gate", action="store_true", help="a device succeeds only after its on-device gate passed")
    p.add_argument("--expires-in", type=_seconds, default=7 * 86400)
    p.add_argument("--keylist", type=Path)
    p.add_argument("--no-promote", action="store_true", help="do not set the fleet announcement on success")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--discover", type=_seconds, default=3.0, help="seconds to gather the fleet's retained state")
    p = rollout.add_parser("status", help="the current (or last) rollout")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--json", action="store_true")
    p = rollout.add_parser("abort", help="stop the rollout and roll its devices back")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--reason", default="rollout abort")
    p.add_argument("--broker", help="only needed when the controller is not running")
    p.add_argument("--key", type=Path, help="only needed when the controller is not running")

    p = sub.add_parser("rollback", help="signed rollback command: devices go back to VERSION")
    p.add_argument("--to", required=True, type=int, metavar="VERSION")
    p.add_argument("--broker", required=True)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--fleet", default="default")
    p.add_argument("--device", action="append", help="only these devices (default: the whole fleet)")
    p.add_argument("--bundle", type=Path, help="the bundle of VERSION (default: from the rollout registry)")
    p.add_argument("--model", help="model name in the registry (default: the one that has VERSION)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.add_argument("--expires-in", type=_seconds, default=7 * 86400)

    fleet = sub.add_parser("fleet", help="fleet inventory").add_subparsers(dest="fleet_command", required=True)
    p = fleet.add_parser("status", help="device, online, model version, last seen, gate result, hardware")
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", default="default")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", type=_seconds, default=3.0, help="seconds at most to gather retained state")

    prov = sub.add_parser("provision", help="broker identities: TLS, passwords, ACL").add_subparsers(
        dest="provision_command", required=True
    )
    p = prov.add_parser("ca", help="a fleet CA and the broker's server certificate")
    p.add_argument("--broker-dir", type=Path, default=Path("/etc/mosquitto/edgeship"))
    p.add_argument("--host", action="append", required=True, help="broker host name or IP (repeatable)")
    for name in ("cloud", "device"):
        p = prov.add_parser(name, help=f"credentials and ACL entries for the {name} identity")
        if name == "device":
            p.add_argument("device_id")
            p.add_argument("--fleet", required=True)
        p.add_argument("--out", required=True, type=Path, help="credentials go to OUT/<identity>/")
        p.add_argument("--broker-dir", type=Path, default=Path("/etc/mosquitto/edgeship"))
        p.add_argument("--client-cert", action="store_true", help="also a client certificate signed by the CA")
        p.add_argument("--ca-key", type=Path, help="CA key (default: BROKER_DIR/ca.key)")


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int | None:
    """Run a delivery command; None if ``args`` is not one."""
    cmd = args.command
    if cmd == "keys" and args.keys_command != "init":
        return _keys(args)
    if cmd == "publish":
        return _publish(args)
    if cmd == "serve-bundles":
        return _serve(args)
    if cmd == "rollout":
        return _rollout(args)
    if cmd == "rollback":
        return _rollback(args)
    if cmd == "fleet":
        return _fleet(args)
    if cmd == "provision":
        return _provision(args)
    return None


def _keys(args: argparse.Namespace) -> int:
    from cloud.root import add_signing_key, init_root, revoke_signing_key
    from models.keys import KeyListError

    try:
        if args.keys_command == "init-root":
            key, pub = init_root(args.out, overwrite=args.force)
            print(f"wrote {key} (keep it OFFLINE: it signs key lists only) and {pub} (devices: --trust-root {pub})")
        elif args.keys_command == "sign":
            path = args.keylist or args.signing.parent / "keylist.json"
            kl = add_signing_key(path, args.root, args.signing, name=args.name, expires_in=args.expires_in)
            print(f"{path}: key list v{kl.version} trusts {[k.keyid for k in kl.keys]}")
        elif args.keys_command == "revoke":
            kl = revoke_signing_key(args.keylist, args.root, args.key)
            print(f"{args.keylist}: key list v{kl.version} revoked {kl.revoked}; trusts {[k.keyid for k in kl.keys]}")
            print("publish it: edgeship keys publish --keylist … --broker … (it also rides along every publish/rollout)")
        elif args.keys_command == "publish":
            from cloud.publish import Publisher, load_keylist

            with Publisher(args.broker, fleet=args.fleet).connect() as pub:
                pub.publish_keylist(load_keylist(args.keylist))  # type: ignore[arg-type]
            print(f"published {args.keylist} to fleet {args.fleet}")
    except (FileExistsError, FileNotFoundError, KeyListError, ValueError, OSError) as exc:
        return _error(str(exc))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from cloud.publish import PublishError, publish

    try:
        select = _pairs(args.select)
        ann = publish(
            args.bundle, args.broker, key=args.key, fleet=args.fleet, chunk_size=args.chunk_size,
            progress=not args.no_progress, expires_in=args.expires_in, hardware=args.hardware,
            attributes=select or None, keylist=args.keylist,
        )  # fmt: skip
    except (PublishError, ValueError, FileNotFoundError, argparse.ArgumentTypeError) as exc:
        return _error(str(exc))
    print(
        f"published {ann.model} v{ann.version} ({ann.size} bytes, sha256 {ann.sha256[:16]}…) to fleet {args.fleet}, "
        f"signed, expires {ann.targets.signed['expires_at'] if ann.targets else '?'}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cloud.publish import PublishError, serve_bundles

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"serving {len(args.bundles)} bundle(s) on {args.broker}; Ctrl-C to stop", flush=True)
        serve_bundles(args.bundles, args.broker, fleet=args.fleet, chunk_size=args.chunk_size, stop=stop)
    except (PublishError, FileNotFoundError) as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        pass
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from cloud.publish import PublishError
    from cloud.rollout import Rollout, RolloutError, abort, format_status, parse_waves, status

    try:
        if args.rollout_command == "start":
            r = Rollout(
                args.bundle, args.broker, key=args.key, state_dir=args.state_dir, fleet=args.fleet,
                canary=args.canary, waves=parse_waves(args.waves), select=_pairs(args.select),
                abort_if=args.abort_if, gate_timeout=args.gate_timeout, soak=args.soak,
                require_gate=args.require_gate, expires_in=args.expires_in, keylist=args.keylist,
                promote=False if args.no_promote else None, discover_s=args.discover, devices=args.device,
            )  # fmt: skip
            print(f"rollout {r.id}: state in {args.state_dir / 'rollout.json'}", flush=True)
            state = r.run()
            print(format_status({**state, "controller_alive": False}))
            return {"succeeded": 0, "failed": 2}.get(state["phase"], 3)
        if args.rollout_command == "status":
            data = status(args.state_dir)
            if data is None:
                return _error(f"no rollout in {args.state_dir}", 1)
            print(json.dumps(data, indent=1) if args.json else format_status(data))
            return 0
        if args.rollout_command == "abort":
            data = abort(args.state_dir, reason=args.reason, broker=args.broker, key=args.key)
            print(format_status(data))
            return 0
    except (RolloutError, PublishError, ConnectionError, FileNotFoundError, argparse.ArgumentTypeError) as exc:
        return _error(str(exc))
    raise AssertionError(args.rollout_command)


def _rollback(args: argparse.Namespace) -> int:
    from cloud.publish import PublishError
    from cloud.rollout import RolloutError, rollback

    try:
        ann = rollback(
            args.broker, to=args.to, key=args.key, fleet=args.fleet, model=args.model, bundle=args.bundle,
            devices=args.device, state_dir=args.state_dir, expires_in=args.expires_in,
        )  # fmt: skip
    except (RolloutError, PublishError, FileNotFoundError) as exc:
        return _error(str(exc))
    who = ", ".join(args.device) if args.device else f"every device of fleet {args.fleet}"
    print(f"signed rollback command to {ann.model} v{ann.version} sent to {who}")
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from cloud.fleet import fleet_status, format_table

    try:
        rows = fleet_status(args.broker, args.fleet, wait=args.wait)
    except (ConnectionError, ValueError) as exc:
        return _error(str(exc))
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


def _provision(args: argparse.Namespace) -> int:
    from cloud import provision as p

    try:
        if args.provision_command == "ca":
            ca, ca_key = p.make_ca(args.broker_dir)
            crt, key = p.make_server_cert(ca, ca_key, args.broker_dir, args.host)
            print(f"wrote {ca}, {ca_key} (0600), {crt}, {key} (0600)")
            return 0
        if args.provision_command == "cloud":
            files = p.provision_cloud(args.broker_dir, args.out, client_cert=args.client_cert, ca_key=args.ca_key)
        else:
            files = p.provision_device(
                args.broker_dir, args.device_id, args.fleet, args.out, client_cert=args.client_cert, ca_key=args.ca_key
            )
    except (ValueError, FileNotFoundError, OSError) as exc:
        return _error(str(exc))
    print(f"credentials in {files['env']}; ACL and passwd updated in {args.broker_dir} (reload mosquitto: SIGHUP)")
    return 0
