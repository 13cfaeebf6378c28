"""The ``edgeship`` command line: one parser tree, one module per command group.

    data synth|validate      train, retrain            keys init|init-root|sign|revoke|publish
    publish, serve-bundles   rollout start|status|abort, rollback
    fleet status|serve|report                          provision ca|cloud|device
    agent [rollback]         bridge, firmware-sim      validate, feedback collect|report
    demo                     cycle

``edgeship COMMAND --help`` shows each command's flags and an example. Every group lives in
:mod:`edgeship.commands` (``register(sub)`` + ``set_defaults(func=...)``); heavy imports happen inside
the handler that needs them, so the agent starts on a device with only the ``edge`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from edgeship import __version__
from edgeship.commands import MODULES

__all__ = ["main", "build_parser"]

logger = logging.getLogger("edgeship")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeship", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgeship {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The COMMAND word of an ``edgeship`` command line (skipping ``--log-level LEVEL``), or None."""
    it = iter(argv)
    for word in it:
        if word == "--log-level":
            next(it, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    if argv is None and _command(sys.argv[1:]) == "agent":  # this process is the agent: before numpy loads
        from edge.memory import tune_process

        tune_process()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command != "agent":  # the agent sets up its own JSON-lines logging
        from edgeship.logs import setup_logging

        setup_logging(args.log_level, json_lines=False)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
