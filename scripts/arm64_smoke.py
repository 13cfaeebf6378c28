"""The host side of ``scripts/arm64-smoke.sh``: Mosquitto on loopback, an x86 agent, the arm64 agent
under qemu (chroot), one signed bundle published with ``edgeship publish``, the same rows to both.

    PYTHONPATH=. python scripts/arm64_smoke.py --root ~/.cache/edgeship/arm64-bookworm \\
        --work ROOT/tmp/smoke.X --arm-python /opt/edgeship/bin/python
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from tests.agent_process import PARITY_ROWS, AgentProcess, max_abs_diff, parity_bundle, publish
from tests.bundle_kit import SAMPLE_TOLERANCE
from tests.conftest import Mosquitto


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="the arm64 root")
    ap.add_argument("--work", type=Path, required=True, help="a folder inside the root")
    ap.add_argument("--arm-python", required=True, help="the venv's python, as seen inside the root")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds for each emulated step")
    args = ap.parse_args()
    inside = "/" + str(args.work.relative_to(args.root))  # the work folder as the chroot sees it

    def say(msg: str) -> None:
        print(f"[arm64-smoke] {msg}", flush=True)

    bundle, pub, key = parity_bundle(args.work)
    broker = Mosquitto(args.work, extra="").start()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "ORT_DISABLE_TELEMETRY": "1"}
    arm = AgentProcess(
        ["chroot", str(args.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), args.arm_python, "-m", "edgeship"],
        f"{inside}/arm-state", f"{inside}/keys/signing.pub", broker.url, "pi-arm64", log=args.work / "arm.log",
    )  # fmt: skip
    x86 = AgentProcess([sys.executable, "-m", "edgeship"], args.work / "x86-state", pub, broker.url, "pc-x86",
                       log=args.work / "x86.log")  # fmt: skip
    try:
        t0 = time.monotonic()
        arm.start(timeout=args.timeout)
        say(f"arm64 agent serving {arm.url} after {time.monotonic() - t0:.1f} s (under qemu)")
        x86.start()
        say(f"x86 agent serving {x86.url} on {platform.machine()}")
        out = publish(bundle, key, broker.url)
        say("published: " + out.strip().splitlines()[-1])
        t0 = time.monotonic()
        h_arm = arm.wait_model(1, timeout=args.timeout)
        say(f"arm64 /healthz after {time.monotonic() - t0:.1f} s: {json.dumps(h_arm)}")
        h_x86 = x86.wait_model(1)
        say(f"x86 /healthz: {json.dumps(h_x86)}")
        gate = [line for line in arm.log_tail(1_000_000).splitlines() if "gate_passed" in line]
        say(f"arm64 on-device gate: {gate[-1][:300] if gate else 'NOT SEEN'}")
        a = arm.predict(PARITY_ROWS, timeout=args.timeout)
        b = x86.predict(PARITY_ROWS)
        diff = max_abs_diff(a["predictions"], b["predictions"])
        tol = SAMPLE_TOLERANCE["max_p99_abs_diff"]
        say(f"arm64 predictions: {a['predictions']} ({a['model']['runtime']})")
        say(f"x86   predictions: {b['predictions']} ({b['model']['runtime']})")
        ok = bool(gate) and a["model"]["digest"] == b["model"]["digest"] and diff <= tol
        say(f"max |arm64 - x86| = {diff:.3g} (tolerance {tol}): {'PASS' if ok else 'FAIL'}")
    finally:
        rc_arm, rc_x86 = arm.stop(timeout=120), x86.stop()
        say(f"agents stopped (SIGTERM): arm64 exit {rc_arm}, x86 exit {rc_x86}")
        broker.stop()
    return 0 if ok and rc_arm == 0 and rc_x86 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
