"""``edgeship keys init | init-root | sign | revoke | publish``: signing keys and the root-signed key list."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error, seconds

EPILOG = """examples:
  edgeship keys init --out keys/                       signing.key + signing.pub (Ed25519)
  edgeship keys init-root --out root/                  root.key (keep offline) + root.pub (devices)
  edgeship keys sign --root root/root.key --signing keys/signing.pub
  edgeship keys revoke 0123456789abcdef --root root/root.key --keylist keys/keylist.json
  edgeship keys publish --keylist keys/keylist.json --broker mqtt://127.0.0.1:1883"""


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="signing keys and the root-signed key list", formatter_class=EXAMPLES,
                          epilog=EPILOG).add_subparsers(dest="keys_command", required=True)  # fmt: skip
    p = keys.add_parser("init", help="write DIR/signing.key and DIR/signing.pub (Ed25519)", epilog=EPILOG,
                        formatter_class=EXAMPLES)  # fmt: skip
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    p.set_defaults(func=_init)
    p = keys.add_parser("init-root", help="write DIR/root.key (keep offline) and DIR/root.pub (give to devices)",
                        epilog=EPILOG, formatter_class=EXAMPLES)  # fmt: skip
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_keylist)
    p = keys.add_parser("sign", help="add a signing key to the root-signed key list (a new version)", epilog=EPILOG,
                        formatter_class=EXAMPLES)  # fmt: skip
    p.add_argument("--root", required=True, type=Path, help="root private key")
    p.add_argument("--signing", required=True, type=Path, help="signing PUBLIC key to trust")
    p.add_argument("--keylist", type=Path, help="key list file (default: keylist.json beside --signing)")
    p.add_argument("--name", help="who holds the key (shown in the list)")
    p.add_argument("--expires-in", type=seconds, help="the list expires after this (default 180d; devices refuse updates once it has)")
    p.set_defaults(func=_keylist)
    p = keys.add_parser("revoke", help="revoke a signing key (by key id or public key file)", epilog=EPILOG,
                        formatter_class=EXAMPLES)  # fmt: skip
    p.add_argument("key", help="16-hex key id or a public key file")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--keylist", required=True, type=Path)
    p.set_defaults(func=_keylist)
    p = keys.add_parser("publish", help="publish the key list retained to a fleet", epilog=EPILOG,
                        formatter_class=EXAMPLES)  # fmt: skip
    p.add_argument("--keylist", required=True, type=Path)
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", default="default")
    p.set_defaults(func=_keylist)


def _init(args: argparse.Namespace) -> int:
    from models.signing import key_id, load_public_key, write_keypair

    try:
        key_path, pub_path = write_keypair(args.out, overwrite=args.force)
    except FileExistsError as exc:
        return error(f"{exc} (use --force to replace it)")
    print(f"wrote {key_path} (keep it secret) and {pub_path} (key id {key_id(load_public_key(pub_path))})")
    return 0


def _keylist(args: argparse.Namespace) -> int:
    from cloud.fleet.root import add_signing_key, init_root, revoke_signing_key
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
            from cloud.fleet.publish import Publisher, load_keylist

            with Publisher(args.broker, fleet=args.fleet).connect() as pub:
                pub.publish_keylist(load_keylist(args.keylist))  # type: ignore[arg-type]
            print(f"published {args.keylist} to fleet {args.fleet}")
    except (FileExistsError, FileNotFoundError, KeyListError, ValueError, OSError) as exc:
        return error(str(exc))
    return 0
