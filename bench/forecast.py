"""Forecast quality benchmark (``make bench`` → BENCHMARKS.md): NWRMSLE of every model, variant and
baseline on the hard and easy synthetic profiles over several seeds, with the gap to the oracle
(the generator's expected log-demand), the slices, the horizon curve, and the scale figures.

    python -m bench.forecast [--seeds 1 2 3] [--profiles hard easy] [--stores 6 --items 60 --days 900]
                             [--scale]  # + 54 stores x 500 items x 3 years: peak RSS and time
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"baseline-rf": 0.10, "baseline-ma-dow": 0.10, "baseline-mean14": 0.03, "baseline-lightgbm": 0.0}

__all__ = ["run", "main"]


def _one(work: Path, profile: str, seed: int, stores: int, items: int, days: int) -> dict[str, Any]:
    from cloud.data.synth import generate
    from cloud.training.gates import GateError
    from cloud.training.pipeline import train
    from models.signing import write_keypair

    root = work / f"{profile}-s{seed}"
    generate(root / "data", stores=stores, items=items, days=days, seed=seed, difficulty=profile)
    write_keypair(root / "keys")
    t = time.perf_counter()
    try:
        train(root / "data", root / "out", root / "keys" / "signing.key", progress=False)
    except GateError as exc:
        print(f"{profile} seed {seed}: {exc}", file=sys.stderr)
    report = json.loads((root / "out" / "report.json").read_text())
    report["wall_seconds"] = time.perf_counter() - t
    return report


def _scale(work: Path) -> str:
    """54 stores x 500 items x 3 years: generate and train in a child, peak RSS and wall time."""
    code = (
        "import sys; from cloud.data.synth import generate; from cloud.training.pipeline import train;"
        "from models.signing import write_keypair; from pathlib import Path; r=Path(sys.argv[1]);"
        "generate(r/'data', stores=54, items=500, days=1095, seed=1, difficulty='hard', oracle=False);"
        "write_keypair(r/'keys'); train(r/'data', r/'out', r/'keys'/'signing.key', progress=False)"
    )
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(work / "scale")], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    ok = proc.returncode == 0
    met = lambda c: "met" if c else "not met"  # noqa: E731
    return (
        "\n### Scale: 54 stores x 500 items x 3 years (hard), generate + train on this machine\n\n"
        f"- peak RSS {rss_gb:.2f} GB (target 8 GB: {met(ok and rss_gb <= 8)}), wall {wall / 60:.1f} min "
        f"(target 20 min: {met(ok and wall <= 1200)}), exit {proc.returncode}\n"
    )


def run(work: Path, seeds: list[int], profiles: list[str], stores: int, items: int, days: int, scale: bool = False) -> str:
    """Measure and return the markdown section."""
    reports = {(p, s): _one(work, p, s, stores, items, days) for p in profiles for s in seeds}
    names: list[str] = []
    for r in reports.values():
        names += [k for k in r["metrics"] if k not in names]
    lines = [
        "## Forecast quality: every model against the oracle",
        "",
        f"Synthetic data, {stores} stores x {items} items x {days} days; validation = the last 16 days "
        "(the served horizon), scored with the true promotion flags of every row (oracle.csv). "
        "`oracle_gap` = (NWRMSLE − oracle) / oracle. `keras@imputed-flags` scores the same model with the "
        "flags the data gives (rows only on days with sales, the rest imputed from other stores): the "
        "residual promotion effect.",
        "",
        "| model | " + " | ".join(f"{p} s{s}" for p, s in reports) + " |",
        "|---|" + "---|" * len(reports),
    ]
    for n in names:
        cells = []
        for r in reports.values():
            m = r["metrics"].get(n)
            cells.append("–" if m is None else f"{m['nwrmsle']:.4f}" + (f" ({m['oracle_gap']:+.1%})" if "oracle_gap" in m else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    shipped = {k: (r.get("shipped_variants") or ["–"])[0] for k, r in reports.items()}
    lines.append("| **shipped first** (what a device runs) | " + " | ".join(shipped.values()) + " |")
    lines += [
        "",
        "`onnx-lightgbm` is the LightGBM baseline exported through onnxmltools; the trainer ships it first "
        "when it beats the Keras variant a device would run (tflite-int8) on validation and passes the "
        "store-type gate (report.json `model_choice`), otherwise not at all.",
        "",
        "Cold start: the fallback windows are scaled per level by what cold pairs went on to sell at 24 "
        "cuts in the training period (report.json `dataset.cold_start_calibration`): "
        + "; ".join(
            f"{p} s{s} " + ", ".join(
                f"{lv} {v['scale']:.3f}" for lv, v in r["dataset"].get("cold_start_calibration", {}).get("levels", {}).items()
                if v["cold_pairs_seen"]
            )
            for (p, s), r in reports.items()
        )
        + " (levels no cold pair reached take the pooled factor).",
        "",
        "### Targets (hard profile): the shipped model (and tflite-int8) better than each baseline by",
        "",
    ]
    for b, need in TARGETS.items():
        for (p, s), r in reports.items():
            if p != "hard" or b not in r["metrics"] or shipped[(p, s)] not in r["metrics"]:
                continue
            theirs = r["metrics"][b]["nwrmsle"]
            gain = (theirs - r["metrics"][shipped[(p, s)]]["nwrmsle"]) / theirs
            int8 = ""
            if shipped[(p, s)] != "tflite-int8" and "tflite-int8" in r["metrics"]:
                g8 = (theirs - r["metrics"]["tflite-int8"]["nwrmsle"]) / theirs
                int8 = f" (tflite-int8 {g8:+.1%}: {'met' if g8 >= need else 'not met'})"
            ceiling = ""
            if "oracle" in r["metrics"]:  # what a perfect model (the generator's expected demand) would gain
                best = (theirs - r["metrics"]["oracle"]["nwrmsle"]) / theirs
                ceiling = f"; the oracle itself: {best:+.1%}" + (" (target out of reach)" if best < need else "")
            lines.append(
                f"- seed {s}: {shipped[(p, s)]} vs {b} {gain:+.1%} (target ≥ {need:.0%}): "
                f"{'met' if gain >= need else 'not met'}{int8}{ceiling}"
            )
    first = next(iter(reports.values()))
    if "slices" in first:
        (p0, s0) = next(iter(reports))
        lines += ["", f"### Slices ({p0}, seed {s0}): NWRMSLE", ""]
        for sl, by_model in first["slices"].items():
            labels = sorted({lab for m in by_model.values() for lab in m})
            lines += [f"**{sl}**", "", "| model | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
            for model, vals in by_model.items():
                lines.append(f"| {model} | " + " | ".join(f"{vals[lab]:.4f}" if lab in vals else "–" for lab in labels) + " |")
            lines.append("")
    lines.append("Wall seconds per run: " + ", ".join(f"{p} s{s} {r['wall_seconds']:.0f}" for (p, s), r in reports.items()))
    text = "\n".join(lines) + "\n"
    if scale:
        text += _scale(work)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "forecast")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--profiles", nargs="+", default=["hard", "easy"])
    ap.add_argument("--stores", type=int, default=6)
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--days", type=int, default=900)
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--out", type=Path, help="write the section here (default: print it)")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    text = run(a.work, a.seeds, a.profiles, a.stores, a.items, a.days, a.scale)
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
