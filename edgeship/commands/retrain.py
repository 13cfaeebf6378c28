"""``edgeship retrain``: base data + the actuals the fleet reported → new dataset version → train, gate, bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain", help="retrain on the base data plus the sales the fleet reported (lineage: both hashes)",
        formatter_class=EXAMPLES,
        epilog="example:\n  edgeship retrain --data data/ --from-fleet /var/lib/edgeship-fleet --out out/ --key keys/signing.key\n\n"
               "rule: fleet actuals replace train.csv unit_sales for their (date, store_nbr, item_nbr) and extend\n"
               "train.csv where it has no row; an actual of 0 removes the row; across devices the latest wins.",
    )  # fmt: skip
    p.add_argument("--data", required=True, type=Path, help="base Favorita folder (train.csv, items.csv, ...)")
    p.add_argument("--from-fleet", required=True, type=Path, metavar="STATE",
                   help="the fleet ingest's --state folder (edgeship fleet serve --state STATE): its actuals.jsonl")
    p.add_argument("--out", required=True, type=Path, help="where the dataset version, bundle and report.json go")
    p.add_argument("--key", required=True, type=Path, help="Ed25519 signing key (edgeship keys init)")
    p.add_argument("--fleet", help="only this fleet's actuals (default: every fleet in STATE)")
    p.add_argument("--version", type=positive, help="model version (default: above --out's and the fleet's)")
    p.add_argument("--recipe", default="favorita_demand", help="recipe name or JSON path")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_retrain)


def _retrain(args: argparse.Namespace) -> int:
    from cloud.data.validate import DataValidationError
    from cloud.training.gates import GateError
    from cloud.training.retrain import retrain
    from edgeship.commands.train import summary
    from models.recipes import load_recipe

    try:
        merged, result = retrain(
            args.data, args.from_fleet, args.out, args.key, version=args.version, fleet=args.fleet,
            progress=not args.no_progress, recipe=load_recipe(args.recipe),
        )  # fmt: skip
    except GateError as exc:
        print(f"gate failed, nothing shipped: {exc}\nsee {args.out / 'report.json'}", file=sys.stderr)
        return 3
    except (DataValidationError, FileNotFoundError, ValueError) as exc:
        return error(str(exc))
    print(f"dataset {merged.path}: base {merged.base_sha256[:12]} + fleet actuals {merged.actuals_sha256[:12]} "
          f"({merged.actuals_rows} rows: {merged.replaced} replaced, {merged.added} added, {merged.removed} removed)")
    print(summary(result.report))
    print(json.dumps({"version": result.report["version"], "lineage": result.report["lineage"]["dataset_source"]["fleet"]}))
    return 0
