"""The light edge install: size on disk, import time, the agent's RSS and start-to-serving time.

``pip install '.[edge]'`` into a clean venv (``.venv-edge``, shared with tests/integration/
test_edge_install.py), then the real agent started from it (``edgeship agent --install BUNDLE``,
a tiny real LiteRT model, on-device gate on), measured from process spawn to ``/healthz`` serving.
References measured in the same run: the full development venv (edge + cloud + dev) for size, a bare
``python -c pass`` for import time, and a raw LiteRT process (import, load, one invoke) for memory.

    python -m bench.edge_install              # measures and replaces its section in BENCHMARKS.md
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TITLE = "## Edge install: size, import time, agent memory and start-up"

#: Targets for a Raspberry Pi 4 class device (printed with met / not met).
TARGETS = {"size_mb": 400.0, "import_s": 3.0, "rss_mb": 150.0, "serving_s": 10.0}


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("EDGESHIP_")} | {
        "ORT_DISABLE_TELEMETRY": "1"
    }


def _wall(argv: list[str], cwd: Path, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, env=_env(), cwd=cwd, capture_output=True, timeout=300)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _import_time(py: Path, cwd: Path, runs: int = 5) -> float:
    """Seconds ``import edge.agent`` takes inside a fresh interpreter (median; start-up and exit excluded)."""
    code = "import time; t = time.perf_counter(); import edge.agent; print(time.perf_counter() - t)"
    return statistics.median(
        float(subprocess.run([str(py), "-c", code], check=True, env=_env(), cwd=cwd, capture_output=True,
                             text=True, timeout=300).stdout)  # fmt: skip
        for _ in range(runs)
    )


RAW_LITERT = r"""
import sys
from ai_edge_litert.interpreter import Interpreter
import numpy as np
i = Interpreter(model_path=sys.argv[1], num_threads=1); i.allocate_tensors()
for d in i.get_input_details():
    i.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
i.invoke()
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")))
"""


def run(work: Path) -> str:
    from tests.agent_process import HEAVY, PROBE, ensure_edge_venv, parity_bundle
    from tests.bundle_kit import tflite_linear
    from tests.conftest import free_port

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    py = ensure_edge_venv()
    install_s = time.perf_counter() - t0
    venv = py.parent.parent
    site = next((venv / "lib").glob("python3.*/site-packages"))
    size, site_size = _du(venv), _du(site)
    full_site = next((Path(sys.prefix) / "lib").glob("python3.*/site-packages"))
    full_size = _du(full_site)
    dists = json.loads(subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], capture_output=True,
                                      text=True, check=True, env=_env()).stdout)  # fmt: skip
    heavy = sorted({d["name"].lower() for d in dists} & set(HEAVY))

    bare = _wall([str(py), "-c", "pass"], work)
    imp = _import_time(py, work)
    cli = _wall([str(py.parent / "edgeship"), "agent", "--help"], work)

    model = work / "raw.tflite"
    model.write_bytes(tflite_linear())
    raw_wall = _wall([str(py), "-c", RAW_LITERT, str(model)], work, runs=3)
    raw_rss = int(subprocess.run([str(py), "-c", RAW_LITERT, str(model)], capture_output=True, text=True,
                                 check=True, env=_env(), cwd=work).stdout)  # fmt: skip

    bundle, pub, _ = parity_bundle(work)
    starts, rss = [], []
    for i in range(3):
        port, report = free_port(), work / f"probe-{i}.json"
        argv = ["agent", "--device-id", "bench-light", "--state-dir", str(work / f"state-{i}"), "--trust", str(pub),
                "--http", f"127.0.0.1:{port}", "--install", str(bundle), "--log-level", "WARNING"]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(py), "-c", PROBE, str(report), "1", f"http://127.0.0.1:{port}", *argv],
                                env=_env(), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while not report.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        proc.wait(60)
        seen = json.loads(report.read_text())
        starts.append(elapsed)
        rss.append(seen["rss_kib"])
        assert not [m for m in seen["modules"] if m.split(".")[0] == "cloud"]

    mb = 1024 * 1024
    figures = {"size_mb": size / mb, "import_s": imp, "rss_mb": statistics.median(rss) / 1024,
               "serving_s": statistics.median(starts)}  # fmt: skip

    def verdict(key: str) -> str:
        return "met" if figures[key] <= TARGETS[key] else "not met"

    lines = [
        TITLE,
        "",
        f"`pip install '.[edge]'` into a clean venv ({len(dists)} distributions; cloud/demo packages present: "
        f"{', '.join(heavy) or 'none'}). The agent: `edgeship agent --install BUNDLE --http …` from that venv, a tiny "
        "real LiteRT bundle, signature verification and the on-device gate on; start-to-serving is from process spawn "
        "until `/healthz` reports the model (median of 3); RSS is read in the agent process at that moment. "
        f"(Venv built or refreshed in {install_s:.0f} s in this run.)",
        "",
        "| figure | value | reference (same run) | ratio | target | |",
        "|---|---:|---:|---:|---:|---|",
        f"| edge venv on disk | {size / mb:.0f} MB (site-packages {site_size / mb:.0f} MB) | full dev venv site-packages "
        f"{full_size / mb:.0f} MB | {site_size / full_size:.2f}× | ≤ {TARGETS['size_mb']:.0f} MB | {verdict('size_mb')} |",
        f"| `import edge.agent` (in a fresh interpreter) | {imp:.2f} s | bare `python -c pass` {bare:.3f} s | {imp / bare:.0f}× | "
        f"≤ {TARGETS['import_s']:.0f} s | {verdict('import_s')} |",
        f"| `edgeship agent --help` | {cli:.2f} s | bare `python -c pass` {bare:.3f} s | {cli / bare:.0f}× | | |",
        f"| agent RSS, serving | {figures['rss_mb']:.0f} MB | raw LiteRT process (import, load, invoke) {raw_rss / 1024:.0f} MB | "
        f"{figures['rss_mb'] / (raw_rss / 1024):.1f}× | ≤ {TARGETS['rss_mb']:.0f} MB | {verdict('rss_mb')} |",
        f"| agent start-to-serving | {figures['serving_s']:.2f} s (runs: {', '.join(f'{s:.2f}' for s in starts)}) | "
        f"raw LiteRT process (start, import, load, invoke, exit) {raw_wall:.2f} s | {figures['serving_s'] / raw_wall:.1f}× | ≤ {TARGETS['serving_s']:.0f} s | "
        f"{verdict('serving_s')} |",
        "",
    ]
    return "\n".join(lines)


def _replace_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# edgeship benchmarks\n"
    start = text.find(TITLE)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(TITLE))
        text = text[:start] + section.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    path.write_text(text)


def main() -> int:
    section = run(Path(tempfile.mkdtemp(prefix="edge-install-")))
    _replace_section(ROOT / "BENCHMARKS.md", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
