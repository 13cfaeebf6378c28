"""``edgeship agent``: run the edge agent on this device; ``edgeship agent rollback`` goes back a version.

Only :mod:`edge` and :mod:`models` are imported here, so it runs with the ``edge`` extra alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error
from edgeship.logs import setup_logging
from edgeship.sdnotify import Notifier

logger = logging.getLogger("edge.agent")

EPILOG = """examples:
  edgeship agent --device-id store-1 --state-dir /var/lib/edgeship --trust signing.pub \\
      --broker mqtt://broker:1883 --http 127.0.0.1:8080
  edgeship agent --config /etc/edgeship/agent.toml            # settings file (deploy/agent.toml)
  EDGESHIP_HTTP=0.0.0.0:8080 edgeship agent --config agent.toml --device-id store-7 --print-config
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
    from edge.runtimes import REGISTRY

    def _option(text: str):
        from edge.config import parse_option  # here, not at parser build: every other command skips its import

        try:
            return parse_option(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML settings file (default: $EDGESHIP_CONFIG); EDGESHIP_* variables override it, flags "
                   "override both (see deploy/agent.toml)")  # fmt: skip
    p.add_argument("--print-config", action="store_true",
                   help="print the merged settings (file < environment < flags) as JSON and exit")  # fmt: skip
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




def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None):
    """An :class:`edge.config.AgentConfig` from the settings file (``--config`` or ``$EDGESHIP_CONFIG``),
    then ``EDGESHIP_*`` variables (``environ``, default: this process's), then the flags given
    (unset flags keep what the layers below say). Raises ``ValueError`` naming the setting and its source."""
    return settings_from_args(args, environ)[0]


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None):
    """``(AgentConfig, {setting: "file" | "env" | "flag"})``, see :func:`config_from_args`."""
    from edge.config import with_options
    from edge.settings import resolve

    skip = {"log_level", "install", "options", "func", "command", "agent_command", "config", "print_config"}
    flags = {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("rb_") and v is not None}
    flags = with_options(flags, getattr(args, "options", None) or [])
    return resolve(getattr(args, "config", None), os.environ if environ is None else environ, flags)


def _rollback(args: argparse.Namespace) -> int:
    return rollback_offline(args.rb_state_dir, trust=args.rb_trust, trust_root=args.rb_trust_root, to=args.rb_to)


def _run(args: argparse.Namespace) -> int:
    """``edgeship agent ...``: run until SIGINT/SIGTERM. Logs JSON lines to stderr; prints the HTTP URL.

    ``edgeship agent rollback`` (:func:`rollback_offline`) goes back one version instead."""
    from edge.agent import Agent

    setup_logging(args.log_level)  # one JSON object per line on stderr (journald keeps each as one entry)
    try:
        config, sources = settings_from_args(args)
    except ValueError as exc:
        if args.print_config:
            print(f"edgeship agent: {exc}", file=sys.stderr)
        else:
            logger.error("%s", exc)
        return 2
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True))
        print("sources: " + json.dumps(sources, sort_keys=True), file=sys.stderr)
        return 0
    stop, reload = threading.Event(), threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda _signum, _frame: (stop.set(), reload.set()))
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _signum, _frame: reload.set())
    notify = Notifier.from_env()  # systemd Type=notify + WatchdogSec; does nothing elsewhere
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
        notify.ready(f"serving as {config.device_id}")
        while not stop.is_set():
            notify.watchdog()  # the loop is alive: a hung main thread stops the pings and systemd restarts us
            # A timeout, not a bare wait: a signal the kernel hands to another thread (it does when the
            # main thread is ptrace-stopped, e.g. under strace) runs its handler only once the main
            # thread returns to the interpreter; a bare wait would sleep through SIGTERM.
            if reload.wait(0.5) and not stop.is_set():
                reload.clear()
                agent.reload()  # SIGHUP: serve what the store's pointer names (after `edgeship agent rollback`)
        logger.info("stopping")
        notify.stopping()
        agent.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rollback_offline(
    state_dir: Path, *, trust: Sequence[Path] = (), trust_root: Sequence[Path] = (), to: int | None = None
) -> int:
    """``edgeship agent rollback``: 0 rolled back, 1 nothing to go back to, 2 bad arguments.

    Runs on the device with the agent stopped (or followed by SIGHUP): an atomic repoint of the store's
    ``active.json`` to the previous activated version that still verifies against the trusted keys.
    """
    from edge.delivery.trust import TrustStore
    from edge.store.model_store import ModelStore
    from edge.store.versions import RollbackError, VersionHistory, recover, rollback

    state_dir = Path(state_dir)
    if not (state_dir / "models").is_dir():
        return error(f"{state_dir} holds no model store")
    try:
        keys = TrustStore(state_dir, pinned=list(trust), roots=list(trust_root)).keys
    except (OSError, ValueError) as exc:
        return error(f"cannot load --trust / --trust-root: {exc}")
    if not keys:
        return error("no trusted key: give --trust PUBKEY (or --trust-root with a stored key list)")
    store, history = ModelStore(state_dir, keys), VersionHistory(state_dir)
    try:
        if not history.exists:
            recover(store, history)  # a store from before history.json: record the active version
        old, new = rollback(store, history, to)
    except RollbackError as exc:
        return error(str(exc), 1)
    print(json.dumps({"rolled_back_from": old, "active": new, "state_dir": str(state_dir)}))
    return 0
