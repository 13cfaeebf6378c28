"""``edgeship train``: data → model → gates → variants → parity → signed bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error, iso_date, positive, store_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train, gate, export, check parity, sign a bundle", formatter_class=EXAMPLES,
        epilog="example:\n  edgeship train --data data/ --out out/ --key keys/signing.key",
    )  # fmt: skip
    p.add_argument("--data", required=True, type=Path, help="folder with train.csv, items.csv, ...")
    p.add_argument("--out", required=True, type=Path, help="where the bundle and report.json go")
    p.add_argument("--key", required=True, type=Path, help="Ed25519 signing key (edgeship keys init)")
    p.add_argument("--start", type=iso_date, help="first day of train.csv to read (default: all)")
    p.add_argument("--end", type=iso_date, help="last day of train.csv to read (default: all)")
    p.add_argument("--stores", type=store_list, help="comma-separated store numbers (default: all)")
    p.add_argument("--version", type=positive, help="model version (default: the next free one in the registry)")
    p.add_argument("--recipe", default="favorita_demand", help="recipe name or JSON path")
    p.add_argument("--feedback", type=Path, help="feedback store (edgeship feedback collect --out): actuals as extra rows")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--runs-dir", type=Path, help="where the run record goes (default $EDGESHIP_RUNS_DIR or ~/.edgeship/runs)")
    p.add_argument("--registry", type=Path,
                   help="local version registry file (default: MLflow's when MLFLOW_TRACKING_URI is set, else "
                        "$EDGESHIP_REGISTRY or ~/.edgeship/versions.json)")  # fmt: skip
    p.add_argument("--no-track", action="store_true", help="record nothing; version = one more than the bundles in --out")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from cloud.data.validate import DataValidationError
    from cloud.training.gates import GateError
    from cloud.training.pipeline import train
    from models.recipes import load_recipe

    try:
        result = train(
            args.data, args.out, args.key, recipe=load_recipe(args.recipe), start=args.start, end=args.end,
            stores=args.stores, version=args.version, progress=not args.no_progress, feedback=args.feedback,
            track=not args.no_track, runs_dir=args.runs_dir, registry=args.registry,
        )  # fmt: skip
    except GateError as exc:
        print(f"gate failed, nothing shipped: {exc}\nsee {args.out / 'report.json'}", file=sys.stderr)
        return 3
    except (DataValidationError, FileNotFoundError, ValueError) as exc:
        return error(str(exc))
    print(summary(result.report))
    return 0


def summary(report: dict) -> str:
    lines = [f"{'model':<16} {'NWRMSLE':>8} {'R2':>7}  verdict"]
    parity = report.get("gates", {}).get("parity", {})
    for name, m in report["metrics"].items():
        verdict = ""
        if name in parity:
            verdict = "shipped" if parity[name]["shipped"] else "not shipped: " + parity[name]["message"]
        lines.append(f"{name:<16} {m['nwrmsle']:>8.4f} {m['r2']:>7.3f}  {verdict}")
    choice = report.get("model_choice")
    if choice and report.get("shipped_variants"):
        lines.append(f"shipped first: {report['shipped_variants'][0]} ({choice['shipped_model']}: {choice['reason']})")
    lines.append(f"bundle: {report['bundle']}")
    if report.get("run_id"):
        lines.append(f"run: {report['run_id']} (edgeship runs show {report['run_id']})")
    return "\n".join(lines)
