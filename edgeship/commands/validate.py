"""``edgeship validate``: the field-validation app (Gradio) in front of a running agent."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="staff validation app: forecasts, explanations, feedback (talks to an agent over HTTP)",
        formatter_class=EXAMPLES,
        epilog="example:\n  edgeship validate --agent http://127.0.0.1:8080 --listen 0.0.0.0:7860 --auth-file staff.txt",
    )  # fmt: skip
    p.add_argument("--agent", required=True, help="the agent's HTTP URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--listen", default="127.0.0.1:7860", help="HOST:PORT the app listens on (port 0: any free one)")
    p.add_argument("--token-file", type=Path, help="file holding the agent's write credential (sent as a Bearer token)")
    p.add_argument("--auth-file", type=Path, help="file of 'user:password' lines: staff must log in")
    p.add_argument("--validator", default="", help="default validator name shown in the form")
    p.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        from edge.validate_app.app import launch, parse_listen, read_auth, read_token
    except ImportError as exc:
        return error(f"the validation app needs the 'validate' extra (pip install 'edgeship[validate]'): {exc}")
    try:
        host, port = parse_listen(args.listen)
        token = read_token(args.token_file) if args.token_file else None
        auth = read_auth(args.auth_file) if args.auth_file else None
    except ValueError as exc:
        return error(str(exc))
    launch(args.agent, host=host, port=port, token=token, auth=auth, validator=args.validator, block=True)
    return 0
