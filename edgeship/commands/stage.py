"""``edgeship stage split | export | bundle``: the thin steps ``dvc.yaml`` runs around ``edgeship train``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error

EPILOG = """examples (normally run by `dvc repro`, see dvc.yaml):
  edgeship stage split --data data/ --out split/
  edgeship stage export --model model/ --trust keys/signing.pub --out export/
  edgeship stage bundle --model model/ --trust keys/signing.pub --out dist/"""


def register(sub: argparse._SubParsersAction) -> None:
    stage = sub.add_parser("stage", help="pipeline stages for dvc.yaml (split, export, bundle)", epilog=EPILOG,
                           formatter_class=EXAMPLES).add_subparsers(dest="stage_command", required=True)  # fmt: skip
    p = stage.add_parser("split", help="the days edgeship train uses, as a Favorita folder", epilog=EPILOG, formatter_class=EXAMPLES)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--recipe", default="favorita_demand")
    p.set_defaults(func=_split)
    for name, text in (("export", "the shipped variants out of the verified bundle"), ("bundle", "the verified bundle to a dist folder")):
        p = stage.add_parser(name, help=text, epilog=EPILOG, formatter_class=EXAMPLES)
        p.add_argument("--model", required=True, type=Path, help="edgeship train's --out (report.json names the bundle)")
        p.add_argument("--trust", required=True, type=Path, action="append", help="public key(s) the bundle must be signed by")
        p.add_argument("--out", required=True, type=Path)
        p.set_defaults(func=_export if name == "export" else _bundle)


def _split(args: argparse.Namespace) -> int:
    from cloud.data.validate import DataValidationError
    from cloud.training.stages import split
    from models.recipes import load_recipe

    try:
        print(json.dumps(split(args.data, args.out, recipe=load_recipe(args.recipe)), indent=1, default=str))
    except (DataValidationError, FileNotFoundError, ValueError) as exc:
        return error(str(exc))
    return 0


def _keys(paths: list[Path]) -> list:
    from models.signing import load_public_key

    return [load_public_key(p) for p in paths]


def _export(args: argparse.Namespace) -> int:
    from cloud.training.stages import export
    from models.bundle import BundleError

    try:
        info = export(args.model, args.out, _keys(args.trust))
    except (BundleError, FileNotFoundError, ValueError) as exc:
        return error(str(exc))
    print(f"{info['model']} v{info['version']}: {', '.join(info['variants'])} -> {args.out}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from cloud.training.stages import bundle
    from models.bundle import BundleError

    try:
        print(bundle(args.model, args.out, _keys(args.trust)))
    except (BundleError, FileNotFoundError, ValueError) as exc:
        return error(str(exc))
    return 0
