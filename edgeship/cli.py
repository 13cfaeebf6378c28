"""The ``edgeship`` command line.

    edgeship keys init --out DIR
    edgeship data synth --out DIR [--stores N] [--items N] [--days N] [--seed S]
    edgeship data validate DIR
    edgeship train --data DIR --out DIR --key KEYFILE
    edgeship publish BUNDLE --broker mqtt://HOST:PORT --key KEYFILE [--expires-in 7d]
    edgeship agent --broker URL --device-id ID --state-dir DIR --trust PUBKEY --http HOST:PORT
    edgeship agent rollback --state-dir DIR --trust PUBKEY [--to V]   (on the device, offline; see edge.versions)
    edgeship demo [--once] [--broker URL]
    edgeship keys init-root|sign|revoke|publish, serve-bundles, rollout start|status|abort,
    edgeship rollback --to V, fleet status, provision ca|cloud|device   (see edgeship.delivery_cli)

Heavy imports (TensorFlow, pandas, runtimes) happen inside the subcommand that needs them, so the
agent starts on a Raspberry Pi that has only the ``edge`` extra installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

from edgeship import delivery_cli

__all__ = ["main", "build_parser"]

logger = logging.getLogger("edgeship")


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _date(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {value!r}") from None


def _stores(value: str) -> list[int]:
    try:
        stores = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be store numbers separated by commas, got {value!r}") from None
    if not stores or min(stores) <= 0:
        raise argparse.ArgumentTypeError("store numbers must be positive")
    return stores


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeship", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    k_init = keys.add_parser("init", help="write DIR/signing.key and DIR/signing.pub (Ed25519)")
    k_init.add_argument("--out", required=True, type=Path)
    k_init.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    delivery_cli.add_key_parsers(keys)  # init-root, sign, revoke, publish (edgeship.delivery_cli)

    data = sub.add_parser("data", help="Favorita-format data").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write synthetic data in the Favorita format")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--stores", type=_positive, default=5)
    synth.add_argument("--items", type=_positive, default=50)
    synth.add_argument("--days", type=_positive, default=540)
    synth.add_argument("--seed", type=int, default=0)
    validate = data.add_parser("validate", help="check every file of a Favorita-format folder")
    validate.add_argument("data", type=Path)
    validate.add_argument("--start", type=_date)
    validate.add_argument("--end", type=_date)
    validate.add_argument("--stores", type=_stores)

    train = sub.add_parser("train", help="train, gate, export, check parity, sign a bundle")
    train.add_argument("--data", required=True, type=Path, help="folder with train.csv, items.csv, ...")
    train.add_argument("--out", required=True, type=Path, help="where the bundle and report.json go")
    train.add_argument("--key", required=True, type=Path, help="Ed25519 signing key (edgeship keys init)")
    train.add_argument("--start", type=_date, help="first day of train.csv to read (default: all)")
    train.add_argument("--end", type=_date, help="last day of train.csv to read (default: all)")
    train.add_argument("--stores", type=_stores, help="comma-separated store numbers (default: all)")
    train.add_argument("--version", type=_positive, help="model version (default: one more than in --out)")
    train.add_argument("--recipe", default="favorita_demand", help="recipe name or JSON path")
    train.add_argument("--no-progress", action="store_true")

    # publish, serve-bundles, rollout, rollback, fleet, provision (edgeship.delivery_cli)
    delivery_cli.add_parsers(sub)

    sub.add_parser("agent", help="run the edge agent (see `edgeship agent --help`)", add_help=False)

    demo = sub.add_parser("demo", help="the whole system on embedded defaults")
    demo.add_argument("--once", action="store_true", help="exit 0 after every agent served a prediction")
    demo.add_argument("--broker", help="use this broker (e.g. mqtt://127.0.0.1:1883) instead of the embedded one")
    demo.add_argument("--workdir", type=Path, help="keep data, keys and state here (default: a temp folder)")
    demo.add_argument("--agents", type=_positive, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The agent owns its flags; hand them over untouched.
    for i, arg in enumerate(argv):
        if arg == "agent":
            from edge.agent import main as agent_main

            return agent_main(argv[i + 1 :])
        if not arg.startswith("-") or arg in ("-h", "--help"):
            break
    args = build_parser().parse_args(argv)
    from edgeship.logs import setup_logging

    setup_logging(args.log_level, json_lines=False)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    handled = delivery_cli.run(args)  # keys init-root|sign|revoke|publish, publish, rollout, fleet, provision…
    if handled is not None:
        return handled
    if args.command == "keys":
        from models.signing import key_id, load_public_key, write_keypair

        try:
            key_path, pub_path = write_keypair(args.out, overwrite=args.force)
        except FileExistsError as exc:
            print(f"error: {exc} (use --force to replace it)", file=sys.stderr)
            return 2
        print(f"wrote {key_path} (keep it secret) and {pub_path} (key id {key_id(load_public_key(pub_path))})")
        return 0

    if args.command == "data" and args.data_command == "synth":
        from cloud.synth import generate

        summary = generate(args.out, stores=args.stores, items=args.items, days=args.days, seed=args.seed)
        print(summary)
        return 0

    if args.command == "data" and args.data_command == "validate":
        from cloud.data import load
        from cloud.validate import DataValidationError

        try:
            loaded = load(args.data, start=args.start, end=args.end, stores=args.stores)
        except (DataValidationError, FileNotFoundError) as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"valid": True, "version": loaded.version, "rows": len(loaded.train)}, indent=2))
        return 0

    if args.command == "train":
        from cloud.gates import GateError
        from cloud.pipeline import train
        from cloud.validate import DataValidationError
        from models.recipes import load_recipe

        try:
            result = train(
                args.data,
                args.out,
                args.key,
                recipe=load_recipe(args.recipe),
                start=args.start,
                end=args.end,
                stores=args.stores,
                version=args.version,
                progress=not args.no_progress,
            )
        except GateError as exc:
            print(f"gate failed, nothing shipped: {exc}\nsee {args.out / 'report.json'}", file=sys.stderr)
            return 3
        except (DataValidationError, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(_train_summary(result.report))
        return 0

    if args.command == "demo":
        from cloud.demo import run_demo

        return run_demo(once=args.once, broker=args.broker, workdir=args.workdir, agents=args.agents)
    raise AssertionError(args.command)


def _train_summary(report: dict) -> str:
    lines = [f"{'model':<16} {'NWRMSLE':>8} {'R2':>7}  verdict"]
    parity = report.get("gates", {}).get("parity", {})
    for name, m in report["metrics"].items():
        verdict = ""
        if name in parity:
            verdict = "shipped" if parity[name]["shipped"] else "not shipped: " + parity[name]["message"]
        lines.append(f"{name:<16} {m['nwrmsle']:>8.4f} {m['r2']:>7.3f}  {verdict}")
    lines.append(f"bundle: {report['bundle']}")
    return "\n".join(lines)
