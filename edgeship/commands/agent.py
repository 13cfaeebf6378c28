"""``edgeship agent``: run the edge agent on this device; ``edgeship agent rollback`` goes back a version.

Only :mod:`edge` and :mod:`models` are imported here, so it runs with the ``edge`` extra alone.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from pydantic import ValidationError

from edgeship.commands.args import EXAMPLES, error
from edgeship.logs import setup_logging

logger = logging.getLogger("edge.agent")

EPILOG = """examples:
  edgeship agent --device-id store-1 --state-dir /var/lib/edgeship --trust signing.pub \\
      --broker mqtt://broker:1883 --http 127.0.0.1:8080
  edgeship agent rollback --state-dir /var/lib/edgeship --trust signing.pub"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the edge agent on this device", description="Run the edgeship edge agent "
                       "on this device.", formatter_class=EXAMPLES, epilog=EPILOG)  # fmt: skip
    add_agent_arguments(p)
    p.set_defaults(func=_run)
    rb = p.add_subparsers(dest="agent_command", required=False, metavar="{rollback}")
    r = rb.add_parser("rollback", help="go back one model version on this device's store (offline)",
                      description="Go back one model version on this device's store (offline: atomic repoint of "
                      "active.json to the previous activated version that still verifies). A running agent serves it "
                      "after SIGHUP or a restart.", formatter_class=EXAMPLES, epilog=EPILOG)  # fmt: skip
    r.add_argument("--state-dir", dest="rb_state_dir", required=True, type=Path, metavar="DIR", help="the agent's state folder")
    r.add_argument("--trust", dest="rb_trust", action="append", type=Path, default=[], metavar="PUBKEY",
                   help="trusted (pinned) signing public key (PEM); repeatable")  # fmt: skip
    r.add_argument("--trust-root", dest="rb_trust_root", action="append", type=Path, default=[], metavar="PUBKEY",
                   help="root public key (PEM): the signing keys of the stored root-signed key list are trusted too")
    r.add_argument("--to", dest="rb_to", type=int, metavar="VERSION", help="this version instead of the previous one")
    r.set_defaults(func=_rollback)


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    from edge.config import parse_option
    from edge.runtimes import REGISTRY

    def _option(text: str):
        try:
            return parse_option(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p.add_argument("--device-id", help="this device's id, [a-z0-9_-]{1,64}")
    p.add_argument("--state-dir", type=Path, help="folder for model versions and downloads")
    p.add_argument(
        "--trust",
        action="append",
        type=Path,
        metavar="PUBKEY",
        help="trusted (pinned) signing public key (PEM); repeatable; --trust or --trust-root is required",
    )
    p.add_argument(
        "--trust-root",
        action="append",
        type=Path,
        metavar="ROOTPUB",
        help="root public key (PEM): trust the signing keys its signed key list names (rotation, revocation)",
    )
    p.add_argument(
        "--attr",
        dest="attributes",
        action="append",
        metavar="KEY=VALUE",
        help="attribute reported for rollout selection, e.g. store_type=A, cluster=13, hardware=rpi4; repeatable",
    )
    p.add_argument("--transfer-window", type=int, help="bundle chunks requested at once (default 8)")
    p.add_argument("--max-transfer-rate", dest="transfer_max_bps", type=int, metavar="BYTES_PER_S",
                   help="cap on bundle download speed (default: none)")  # fmt: skip
    p.add_argument("--broker", help="MQTT broker, mqtt://HOST:PORT (credentials: EDGESHIP_MQTT_USERNAME/_PASSWORD)")
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve HTTP here; a bare PORT listens on loopback only (127.0.0.1); [::1]:8080 for IPv6; "
                   "0.0.0.0:8080 for the shop network (then give --http-token-file); port 0 = any free port")  # fmt: skip
    p.add_argument("--http-token-file", type=Path, metavar="FILE",
                   help="bearer token (first line) that HTTP writes such as POST /v1/sales need "
                   "(else $EDGESHIP_HTTP_TOKEN; with neither, writes only from loopback)")  # fmt: skip
    p.add_argument("--http-auth-reads", action="store_true", default=None,
                   help="require the token for /v1/predict, /healthz and /metrics too")  # fmt: skip
    p.add_argument("--fleet", help="fleet id (default: default)")
    p.add_argument("--model", help="accept only this model name's announcements")
    p.add_argument(
        "--variant",
        dest="variants",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="variant preference order, e.g. tflite-int8 onnx-fp32",
    )
    p.add_argument("--runtime", choices=sorted(REGISTRY), help="force one runtime plugin (fake: tests and demos)")
    p.add_argument("--threads", type=int, help="threads per inference runtime (default 1)")
    p.add_argument(
        "--providers",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="ONNX Runtime execution providers in order, e.g. tensorrt cuda cpu (default: those available of these)",
    )
    p.add_argument(
        "--gate",
        choices=["require", "if_present", "off"],
        help="on-device holdout gate before activation (default require)",
    )
    p.add_argument("--gate-margin", type=float, help="allowed relative NWRMSLE increase in the gate (default 0.02)")
    p.add_argument(
        "--install",
        action="append",
        type=Path,
        metavar="BUNDLE",
        help="install and activate this bundle file after start-up (side-loading; verified and gated like any update)",
    )
    p.add_argument("--keep-versions", type=int, help="installed versions kept on disk (default 3)")
    p.add_argument(
        "--option",
        dest="options",
        action="append",
        type=_option,
        metavar="SECTION.FIELD=VALUE",
        help="a nested setting, repeatable: batching.max_wait_ms=2, candidate.version=3, candidate.mode=ab, "
        "candidate.share=0.1, predlog.sample_rate=0.2, telemetry.interval_s=30, drift.window_rows=5000 …",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)




def config_from_args(args: argparse.Namespace):
    """An :class:`edge.config.AgentConfig` from parsed arguments (unset options keep the config's defaults)."""
    from edge.config import AgentConfig, with_options

    skip = {"log_level", "install", "options", "func", "command", "agent_command"}
    fields = {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("rb_") and v is not None}
    return AgentConfig(**with_options(fields, getattr(args, "options", None) or []))


def _rollback(args: argparse.Namespace) -> int:
    from edge.store.versions import rollback_cli

    return rollback_cli(args.rb_state_dir, trust=args.rb_trust, trust_root=args.rb_trust_root, to=args.rb_to)


def _run(args: argparse.Namespace) -> int:
    """``edgeship agent ...``: run until SIGINT/SIGTERM. Logs JSON lines to stderr; prints the HTTP URL.

    ``edgeship agent rollback --state-dir DIR --trust PUBKEY`` goes back one model version instead
    (offline, on the store; see :mod:`edge.store.versions`)."""
    from edge.agent import Agent

    missing = [f"--{n.replace('_', '-')}" for n in ("device_id", "state_dir") if getattr(args, n) is None]
    if missing:
        return error(f"{' and '.join(missing)} required to run the agent")
    setup_logging(args.log_level)  # one JSON object per line on stderr
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            logger.error("invalid option --%s: %s", ".".join(map(str, err["loc"])).replace("_", "-"), err["msg"])
        return 2
    stop, reload = threading.Event(), threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: (stop.set(), reload.set()))
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda signum, _frame: reload.set())
    try:
        try:
            agent = Agent(config).start()
        except Exception as exc:
            logger.error("agent could not start: %s", exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            return 1
        if agent.http_url:
            print(agent.http_url, flush=True)
        for bundle in args.install or ():  # side-loaded (USB stick, provisioning): the same checks as MQTT
            agent.install_and_activate(bundle)
        while not stop.is_set():
            # A timeout, not a bare wait: a signal the kernel hands to another thread (it does when the
            # main thread is ptrace-stopped, e.g. under strace) runs its handler only once the main
            # thread returns to the interpreter; a bare wait would sleep through SIGTERM.
            if reload.wait(0.5) and not stop.is_set():
                reload.clear()
                agent.reload()  # SIGHUP: serve what the store's pointer names (after `edgeship agent rollback`)
        logger.info("stopping")
        agent.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
