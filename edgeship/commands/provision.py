"""``edgeship provision ca | cloud | device``: broker identities (TLS, passwords, ACL)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error

EPILOG = """examples:
  edgeship provision ca --broker-dir /etc/mosquitto/edgeship --host broker.example.org
  edgeship provision cloud --out creds/ --broker-dir /etc/mosquitto/edgeship
  edgeship provision device store-7 --fleet default --out creds/ --client-cert"""


def register(sub: argparse._SubParsersAction) -> None:
    prov = sub.add_parser("provision", help="broker identities: TLS, passwords, ACL").add_subparsers(
        dest="provision_command", required=True
    )
    p = prov.add_parser("ca", help="a fleet CA and the broker's server certificate", formatter_class=EXAMPLES, epilog=EPILOG)
    p.set_defaults(func=_provision)
    p.add_argument("--broker-dir", type=Path, default=Path("/etc/mosquitto/edgeship"))
    p.add_argument("--host", action="append", required=True, help="broker host name or IP (repeatable)")
    p.add_argument("--ca-key-dir", type=Path, default=Path("edgeship-ca"),
                   help="where the CA key goes: NOT the broker's folder (default ./edgeship-ca; keep it offline)")  # fmt: skip
    for name in ("cloud", "device"):
        p = prov.add_parser(name, help=f"credentials and ACL entries for the {name} identity", formatter_class=EXAMPLES, epilog=EPILOG)
        p.set_defaults(func=_provision)
        if name == "device":
            p.add_argument("device_id")
            p.add_argument("--fleet", required=True)
        p.add_argument("--out", required=True, type=Path, help="credentials go to OUT/<identity>/")
        p.add_argument("--broker-dir", type=Path, default=Path("/etc/mosquitto/edgeship"))
        p.add_argument("--client-cert", action="store_true", help="also a client certificate signed by the CA")
        p.add_argument("--ca-key", type=Path, help="CA key for --client-cert (as written by provision ca --ca-key-dir)")


def _provision(args: argparse.Namespace) -> int:
    from cloud.fleet import provision as p

    try:
        if args.provision_command == "ca":
            if args.ca_key_dir.resolve() == args.broker_dir.resolve():
                return error("--ca-key-dir must not be the broker's folder: the broker never needs the CA key")
            ca, ca_key = p.make_ca(args.broker_dir, key_dir=args.ca_key_dir)
            crt, key = p.make_server_cert(ca, ca_key, args.broker_dir, args.host)
            print(f"wrote {ca}, {crt}, {key} (0600); the CA key {ca_key} (0600) is NOT in the broker's folder: keep it offline")
            return 0
        if args.provision_command == "cloud":
            files = p.provision_cloud(args.broker_dir, args.out, client_cert=args.client_cert, ca_key=args.ca_key)
        else:
            files = p.provision_device(
                args.broker_dir, args.device_id, args.fleet, args.out, client_cert=args.client_cert, ca_key=args.ca_key
            )
    except (ValueError, FileNotFoundError, OSError) as exc:
        return error(str(exc))
    print(f"credentials in {files['env']}; ACL and passwd updated in {args.broker_dir} (reload mosquitto: SIGHUP)")
    return 0
