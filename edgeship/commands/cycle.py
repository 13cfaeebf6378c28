"""``edgeship cycle``: the whole CD4ML cycle on embedded defaults (see :mod:`edgeship.cycle`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error, positive, seconds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cycle", help="the whole CD4ML loop: data, train, publish, shop traffic, realised accuracy, retrain, canary, promote/abort",
        formatter_class=EXAMPLES,
        epilog="examples:\n  edgeship cycle --once --workdir /tmp/cycle\n"
               "  edgeship cycle --agents 3 --abort-if 'nwrmsle>0.8'      keeps the fleet up until Ctrl-C",
    )  # fmt: skip
    p.add_argument("--once", action="store_true", help="exit after one cycle (0: promoted or cleanly aborted)")
    p.add_argument("--workdir", type=Path, help="keep data, keys, bundles and state here (default: a temp folder)")
    p.add_argument("--broker", help="use this broker (e.g. mqtt://127.0.0.1:1883) instead of the embedded one")
    p.add_argument("--agents", type=positive, default=3, help="agent processes, one per store (default 3)")
    p.add_argument("--future-days", type=positive, default=7, help="days of shop traffic and sales (default 7)")
    p.add_argument("--abort-if", action="append", metavar="RULE",
                   help="rollout abort rule over gate figures and telemetry (default nwrmsle>1.0); repeatable")
    p.add_argument("--gate-timeout", type=seconds, default=180.0, help="per rollout wave (default 180 s)")
    p.set_defaults(func=_cycle)


def _cycle(args: argparse.Namespace) -> int:
    from edgeship.cycle import DEFAULT_ABORT_IF, run_cycle

    try:
        return run_cycle(
            once=args.once, workdir=args.workdir, broker=args.broker, agents=args.agents, future_days=args.future_days,
            abort_if=args.abort_if or DEFAULT_ABORT_IF, gate_timeout=args.gate_timeout,
        )  # fmt: skip
    except (ValueError, TimeoutError, RuntimeError) as exc:
        return error(str(exc), 1)
