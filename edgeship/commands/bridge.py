"""``edgeship bridge``: shop microcontrollers on serial ↔ the edge agent; ``edgeship firmware-sim``: a fake device.

The bridge imports only :mod:`firmware_bridge` (pyserial, the ``edge`` extra); the simulator takes
its demand profile from :data:`cloud.data.synth.DEMAND_PATTERNS` (the same weekday, month and payday
effects as the synthetic training data) and passes it in: :mod:`firmware_bridge` never imports ``cloud``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import threading
import time
from pathlib import Path

from edgeship.commands.args import EXAMPLES, error
from edgeship.logs import setup_logging

logger = logging.getLogger("firmware_bridge")

BRIDGE_EPILOG = """examples:
  edgeship bridge --serial /dev/ttyUSB0 --agent http://127.0.0.1:8080
  edgeship bridge --serial /dev/ttyACM0 --serial socket://10.0.0.7:7000 --agent http://127.0.0.1:8080 \\
      --baud 115200 --token-file /etc/edgeship/agent.token --state-dir /var/lib/edgeship-bridge"""

SIM_EPILOG = """examples:
  edgeship firmware-sim --items 5 --rate 2                  # prints the pty path to give the bridge
  edgeship firmware-sim --tcp 7000 --item-ids 103520,105574 --store 1
  edgeship firmware-sim --link /tmp/shelf --once 50          # stop after 50 acked sales, print a summary"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bridge", help="connect serial shop devices to the edge agent",
                       description="Bridge serial shop devices (sales, sensors, shelf labels) to the edge agent over "
                       "HTTP. One link per --serial URL; unplugged devices are reopened with backoff.",
                       formatter_class=EXAMPLES, epilog=BRIDGE_EPILOG)  # fmt: skip
    p.add_argument("--serial", action="append", required=True, metavar="URL",
                   help="device: /dev/ttyUSB0, a pty path, loop://, socket://HOST:PORT, rfc2217://HOST:PORT; repeatable")
    p.add_argument("--agent", required=True, metavar="URL", help="the agent's HTTP base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--baud", type=int, default=115200, help="baud rate of serial devices (default 115200)")
    p.add_argument("--token-file", type=Path, metavar="F", help="file holding a bearer token sent to the agent")
    p.add_argument("--state-dir", type=Path, default=Path("bridge-state"), metavar="DIR",
                   help="folder of the persisted sale queue (default ./bridge-state)")
    p.add_argument("--date", type=dt.date.fromisoformat, metavar="YYYY-MM-DD",
                   help="business day given to devices in time sync (default: today, local time)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve the bridge's Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_bridge)

    s = sub.add_parser("firmware-sim", help="simulate a serial shelf device (pty or TCP)",
                       description="Emulate a shelf device on a pseudo-terminal (prints its path) or a TCP port: "
                       "sale events from the synthetic data's demand patterns, prediction requests, heartbeats.",
                       formatter_class=EXAMPLES, epilog=SIM_EPILOG)  # fmt: skip
    s.add_argument("--items", type=int, default=3, metavar="N", help="how many items the shelf carries (default 3)")
    s.add_argument("--item-ids", metavar="ID,ID", help="item numbers (default: the first N of the sample items)")
    s.add_argument("--store", type=int, default=1, help="store number (default 1)")
    s.add_argument("--rate", type=float, default=2.0, metavar="R",
                   help="sale events per second on an ordinary day, scaled by the weekday, month and payday effects "
                   "of the synthetic data (default 2)")
    s.add_argument("--device-id", default="sim-shelf", help="the device id it says hello with")
    s.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of a pty (0: any)")
    s.add_argument("--link", type=Path, metavar="PATH", help="symlink to the pty (stable across replugs)")
    s.add_argument("--once", type=int, metavar="N", help="stop after N sales were acked; print a JSON summary")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_sim)


def _wait_for_signal() -> threading.Event:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    return done


def _bridge(args: argparse.Namespace) -> int:
    from firmware_bridge.bridge import Bridge, Clock

    setup_logging(args.log_level)
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            return error(f"--token-file: cannot read {args.token_file}: {exc.strerror}")
        if not token:
            return error(f"--token-file: {args.token_file} is empty")
    if args.baud <= 0:
        return error("--baud: must be a positive number of bits per second")
    try:
        bridge = Bridge(args.serial, args.agent, args.state_dir, baud=args.baud, token=token, clock=Clock(args.date))
    except ValueError as exc:
        return error(str(exc))
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=bridge.metrics.registry)
    done = _wait_for_signal()
    bridge.start()
    print(f"bridge: {len(args.serial)} device(s) → {args.agent}", flush=True)
    done.wait()
    bridge.stop()
    return 0


def _sim(args: argparse.Namespace) -> int:
    import json

    from firmware_bridge.sim import DEFAULT_ITEMS, DeviceSim, PtyTransport, TcpTransport

    setup_logging(args.log_level)
    if args.item_ids:
        try:
            items = [int(x) for x in args.item_ids.split(",") if x.strip()]
        except ValueError:
            return error(f"--item-ids: {args.item_ids!r} is not a comma-separated list of item numbers")
    else:
        items = list(DEFAULT_ITEMS)
    items = items[: args.items] if args.items > 0 else items
    if not items:
        return error("--items: at least one item is required")
    if args.rate < 0:
        return error("--rate: must be ≥ 0 sale events per second")
    transport = TcpTransport(args.tcp) if args.tcp is not None else PtyTransport(args.link)
    sim = DeviceSim(transport, items=items, store=args.store, rate=args.rate, device_id=args.device_id,
                    profile=synthetic_profile(), seed=args.seed, max_sales=args.once)  # fmt: skip
    print(f"firmware-sim: device {args.device_id} on {transport.url}", flush=True)
    done = _wait_for_signal()
    sim.start()
    while not done.wait(0.2):
        if args.once is not None and sim.stats.acked + sim.stats.refused >= args.once:
            break
    sim.stop()
    st = sim.stats
    summary = {"sent": st.sent, "acked": st.acked, "refused": st.refused, "retries": st.retries,
               "units": {f"{s}/{i}/{d}": u for (s, i, d), u in sorted(st.acked_units.items())},
               "last_forecasts": st.displays[-3:]}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return 0


def synthetic_profile():  # -> DemandProfile
    """The synthetic data's day effects (weekday, month, paydays) as the simulator's demand profile."""
    from cloud.data import synth
    from firmware_bridge.sim import DemandProfile

    p = synth.DEMAND_PATTERNS
    return DemandProfile(weekday=p.weekday, month=p.month, payday_lift=p.payday_lift, payday_after=p.payday_after)


def demo_shelf(agent_url: str, store: int, item: int, day: dt.date, work: Path, *, sales: int = 20):
    """``edgeship demo``: a simulated shelf (pty) and a bridge feeding ``agent_url``; returns a stop function.

    Sells ``sales`` times on ``day`` (the shop's business day), then asks over serial for tomorrow's
    forecast and prints how the sales moved it; keeps selling (2 per second) until stopped."""
    from firmware_bridge.bridge import Bridge, Clock
    from firmware_bridge.sim import DeviceSim, PtyTransport

    link = work / "shelf-tty"
    sim = DeviceSim(PtyTransport(link), items=[item], store=store, rate=0, device_id="demo-shelf",
                    profile=synthetic_profile())  # fmt: skip
    sim.start()
    bridge = Bridge([str(link)], agent_url, work / "bridge", clock=Clock(day)).start()

    def stop() -> None:
        bridge.stop()
        sim.stop()

    deadline = time.monotonic() + 30
    while not sim.synced and time.monotonic() < deadline:
        time.sleep(0.05)
    tomorrow = day + dt.timedelta(days=1)
    first = sim.wait_prediction(sim.request_prediction(item, tomorrow))
    for _ in range(sales):
        sim.sell(item, 1.0 + (sim.stats.sent % 3))
    while (sim.pending or sim.stats.acked < sales) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = sim.wait_prediction(sim.request_prediction(item, tomorrow))
    units = sum(sim.stats.acked_units.values())
    if first is None or after is None or first.status or after.status:
        print(f"[demo] shelf on {sim.transport.url}: no forecast over serial (see the agent's log)")
    else:
        print(f"[demo] shelf (firmware-sim on {sim.transport.url}) → bridge → {agent_url}: {sim.stats.acked} sales "
              f"({units:g} units of item {item} on {day}) acked; serial forecast for {tomorrow} "
              f"{first.value:.2f} → {after.value:.2f}; label shows {sim.stats.displays[-1]!r}")  # fmt: skip
    sim.rate = 2.0
    return stop
