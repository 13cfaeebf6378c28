"""``edgeship data synth | validate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error, iso_date, positive, store_list


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="Favorita-format data: synthesise, validate").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "synth", help="write synthetic data in the Favorita format", formatter_class=EXAMPLES,
        epilog="example:\n  edgeship data synth --out data/ --stores 6 --items 60 --days 900 --seed 1 --difficulty hard",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="folder to write the seven CSV files into")
    p.add_argument("--stores", type=positive, default=5, help="number of stores (default 5)")
    p.add_argument("--items", type=positive, default=50, help="number of items (default 50)")
    p.add_argument("--days", type=positive, default=540, help="training days (default 540)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--end", type=iso_date, default="2017-08-15", help="last training day (default 2017-08-15)")
    p.add_argument(
        "--difficulty", "--profile", choices=("easy", "hard"), default="easy",
        help="easy: stationary demand (quick demos); hard: shifts, trends, openings, stock-outs, decaying promotions",
    )  # fmt: skip
    p.add_argument("--no-oracle", action="store_true", help="do not write oracle.csv (true flags, expected log-demand)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_synth)

    p = data.add_parser(
        "validate", help="check every file of a Favorita-format folder", formatter_class=EXAMPLES,
        epilog="example:\n  edgeship data validate data/ --start 2017-01-01 --stores 1,2,3",
    )  # fmt: skip
    p.add_argument("data", type=Path)
    p.add_argument("--start", type=iso_date)
    p.add_argument("--end", type=iso_date)
    p.add_argument("--stores", type=store_list)
    p.set_defaults(func=_validate)


def _synth(args: argparse.Namespace) -> int:
    from cloud.data.synth import generate

    try:
        summary = generate(
            args.out, stores=args.stores, items=args.items, days=args.days, seed=args.seed, end=args.end,
            difficulty=args.difficulty, oracle=not args.no_oracle,
        )  # fmt: skip
    except ValueError as exc:
        return error(str(exc))
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from cloud.data.loader import load
    from cloud.data.validate import DataValidationError

    try:
        loaded = load(args.data, start=args.start, end=args.end, stores=args.stores)
    except (DataValidationError, FileNotFoundError) as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"valid": True, "version": loaded.version, "rows": len(loaded.train)}, indent=2))
    return 0
