"""``edgeship runs list | show | compare``: the training runs recorded by ``edgeship train``.

The runs folder is ``$EDGESHIP_RUNS_DIR``, else ``$EDGESHIP_STATE_DIR/runs``, else ``~/.edgeship/runs``
(``--runs-dir`` overrides); see :mod:`cloud.tracking.runs`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error

EPILOG = """examples:
  edgeship runs list
  edgeship runs show v3
  edgeship runs compare 20260101T120000Z-3fa9c1 20260102T090000Z-77b0e2
  edgeship runs compare v2 v3 --all        # runs by model version (MODEL@vN when several models)"""


def register(sub: argparse._SubParsersAction) -> None:
    runs = sub.add_parser("runs", help="recorded training runs: list, show, compare", epilog=EPILOG, formatter_class=EXAMPLES)
    cmds = runs.add_subparsers(dest="runs_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", type=Path, help="default $EDGESHIP_RUNS_DIR, else ~/.edgeship/runs")
    p = cmds.add_parser("list", help="one line per run, oldest first", parents=[common], epilog=EPILOG, formatter_class=EXAMPLES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
    p = cmds.add_parser("show", help="one run's record (JSON)", parents=[common], epilog=EPILOG, formatter_class=EXAMPLES)
    p.add_argument("run", help="run id, unique id prefix, vN or MODEL@vN")
    p.set_defaults(func=_show)
    p = cmds.add_parser("compare", help="what differs between two runs: params, data, code, metrics",
                        parents=[common], epilog=EPILOG, formatter_class=EXAMPLES)  # fmt: skip
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--all", action="store_true", help="list unchanged parameters too")
    p.set_defaults(func=_compare)


def _list(args: argparse.Namespace) -> int:
    from cloud.tracking.runs import RunStore, format_list

    store = RunStore(args.runs_dir)
    runs = store.list()
    if args.json:
        print(json.dumps([{k: r.get(k) for k in ("id", "status", "model", "version", "data", "code_revision")} for r in runs], indent=1))
    elif not runs:
        print(f"no runs in {store.root}")
    else:
        print(format_list(runs))
    return 0


def _show(args: argparse.Namespace) -> int:
    from cloud.tracking.runs import RunNotFound, RunStore

    try:
        print(json.dumps(RunStore(args.runs_dir).get(args.run), indent=1))
    except RunNotFound as exc:
        return error(str(exc), 1)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from cloud.tracking.runs import RunNotFound, RunStore, compare

    store = RunStore(args.runs_dir)
    try:
        a, b = store.get(args.a), store.get(args.b)
    except RunNotFound as exc:
        return error(str(exc), 1)
    print(compare(a, b, all_params=args.all))
    return 0
