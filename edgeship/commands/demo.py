"""``edgeship demo``: the whole system on embedded defaults (see :mod:`edgeship.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeship.commands.args import EXAMPLES, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole system on embedded defaults", formatter_class=EXAMPLES,
        epilog="examples:\n  edgeship demo                 runs until Ctrl-C\n"
               "  edgeship demo --once --workdir /tmp/demo --broker mqtt://127.0.0.1:1883",
    )  # fmt: skip
    p.add_argument("--once", action="store_true", help="exit 0 after every agent served a prediction")
    p.add_argument("--broker", help="use this broker (e.g. mqtt://127.0.0.1:1883) instead of the embedded one")
    p.add_argument("--workdir", type=Path, help="keep data, keys and state here (default: a temp folder)")
    p.add_argument("--agents", type=positive, default=2)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from edgeship.demo import run_demo

    return run_demo(once=args.once, broker=args.broker, workdir=args.workdir, agents=args.agents)
