"""``make bench``: measure the spine on the demo data and write BENCHMARKS.md.

Every speed is reported as a ratio against a reference measured in the same run on the same
machine (the raw LiteRT invoke of the same model), never as an absolute promise. Loops are bounded
in count and time; network traffic stays on 127.0.0.1.

    python -m bench.run [--out BENCHMARKS.md] [--work bench/.work] [--iterations 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent

from bench.common import http_post, measure, raw_litert  # noqa: E402


def _call(module: str, *args: object) -> str:
    """``module.run(*args)``: a section's markdown."""
    import importlib

    return importlib.import_module(module).run(*args)


def _section(out: Path, title: str, fn) -> None:
    """Append the section ``fn`` returns to ``out``; if it fails, say so under its title."""
    try:
        section = fn()
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        section = f"## {title}\n\nNot measured: {type(exc).__name__}: {exc}\n"
    with open(out, "a") as fh:
        fh.write("\n" + section)
    print(f"[bench] {title}: done", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per latency case at most")
    args = parser.parse_args(argv)

    from cloud.training.pipeline import train
    from cloud.data.synth import generate
    from edge.serving.predictor import Predictor
    from edge.runtimes import get_runtime
    from models.bundle import read_manifest
    from models.signing import load_public_key, write_keypair

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    data = args.work / "data"
    t = time.perf_counter()
    generate(data)
    synth_s = time.perf_counter() - t
    write_keypair(args.work / "keys")
    pub = args.work / "keys" / "signing.pub"
    t = time.perf_counter()
    result = train(data, args.work / "out", args.work / "keys" / "signing.key", progress=False)
    train_wall = time.perf_counter() - t
    report = result.report
    assert result.bundle is not None
    manifest = read_manifest(result.bundle, [load_public_key(pub)])
    day = np.datetime64(manifest.contract.state_end_date) + 1
    with open(data / "train.csv") as fh:
        fh.readline()
        first = fh.readline().split(",")
    row = {"date": str(day), "store_nbr": int(first[2]), "item_nbr": int(first[3]), "onpromotion": False}
    body = json.dumps({"instances": [row]}).encode()

    lat: dict[str, dict[str, float]] = {}
    budget, n = args.budget, args.iterations
    with Predictor.open(result.bundle, trust=[pub], variant="tflite-int8") as pred_lite, Predictor.open(
        result.bundle, trust=[pub], variant="onnx-fp32"
    ) as pred_onnx:
        feed = _encoded_row(pred_lite, row)
        # 1. the raw runtimes, straight through their own APIs
        lite_path = pred_lite.bundle.path(manifest.variant("tflite-int8").file)
        lat["raw LiteRT invoke (tflite-int8)"] = measure(raw_litert(lite_path, feed), n, budget)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(pred_onnx.bundle.path(manifest.variant("onnx-fp32").file)), opts, providers=["CPUExecutionProvider"])
        lat["raw ONNX Runtime run (onnx-fp32)"] = measure(lambda: sess.run(None, feed), n, budget)
        rt = get_runtime("litert")(lite_path, threads=1)
        rt.load()
        lat["LiteRT runtime plugin infer"] = measure(lambda: rt.infer(feed), n, budget)
        rt.close()
        # 2. the agent's predictor in-process: validate → encode → infer → units
        lat["Predictor.predict in-process (LiteRT int8)"] = measure(lambda: pred_lite.predict([row]), n, budget)
        lat["Predictor.predict in-process (ONNX fp32)"] = measure(lambda: pred_onnx.predict([row]), n, budget)

    # 3. over HTTP: a real agent (no broker) on loopback, keep-alive connection
    from edge.agent import Agent
    from edge.config import AgentConfig

    agent = Agent(AgentConfig(device_id="bench", state_dir=args.work / "agent", trust=[pub], http="127.0.0.1:0", variants=["tflite-int8"]))
    agent.start()
    try:
        agent.install_and_activate(result.bundle)
        over_http, close = http_post(agent.http_url, "/v1/predict", body)
        lat["HTTP POST /v1/predict (agent, LiteRT int8)"] = measure(over_http, n, budget)
        close()
    finally:
        agent.stop()

    # 4. the lecture's pattern: the Keras model called directly
    import keras

    model = keras.models.load_model(report["keras_model"])
    kfeed = {"cat": feed["cat"], "num": feed["num"]}
    lat["Keras model(x) (fp32)"] = measure(lambda: model(kfeed, training=False), min(n, 500), budget, warmup=20)

    ref = lat["raw LiteRT invoke (tflite-int8)"]["p50"]
    _write(args.out, report, manifest, lat, ref, train_wall, synth_s)
    # Each section runs in the same session; a failure is reported in its section, not fatal.
    sec = lambda title, fn: _section(args.out, title, fn)  # noqa: E731
    sec("Edge agent: memory, start-up and hot swap",
        lambda: _call("bench.agent_a", args.work / "agent-a", result.bundle, pub))
    sec("Delivery: publish to 50 agents, bytes per device, resuming",
        lambda: _call("bench.delivery", args.work, result.bundle, args.work / "keys" / "signing.key"))
    sec("Edge agent: serving latency and throughput",
        lambda: _call("bench.agent_b", args.work / "agent-b", result.bundle, pub))
    sec("Fleet ingest: 1,000 devices through Mosquitto, memory per device, scrape time",
        lambda: _call("bench.fleet", args.work))
    sec("Forecast quality: every model against the oracle",
        lambda: _call("bench.forecast", args.work / "forecast", [1, 2, 3], ["hard", "easy"], 6, 60, 900))
    sec("Serving targets (issue 9)",
        lambda: _call("bench.serving", args.work / "serving", result.bundle, pub))
    sec("Serial bridge: decoder and prediction round trip",
        lambda: _call("bench.bridge", args.work / "bridge", result.bundle, pub))
    sec("Edge install: size, import time, agent memory and start-up",
        lambda: _call("bench.edge_install", args.work / "edge-install"))
    sec("Validation app: memory and start time",
        lambda: _call("bench.validate_app", args.work, result.bundle, pub))
    # issue 14's full size (54 stores x 500 items x 3 years, a 10 M-row train.csv): ~8 min with the recipe's scale caps
    sec("Scale: training on a large world, reading a large train.csv by window",
        lambda: _call("bench.scale", args.work / "scale", 54, 500, 1095, 10_000_000))
    print(args.out.read_text())
    return 0


def _days(window: list[str] | tuple[str, str]) -> int:
    """Days in an inclusive ``(first, last)`` ISO date window."""
    import datetime as dt

    return (dt.date.fromisoformat(str(window[1])[:10]) - dt.date.fromisoformat(str(window[0])[:10])).days + 1


def _encoded_row(predictor, row: dict) -> dict[str, np.ndarray]:
    from models.features import encode

    p = predictor
    store, item = np.array([row["store_nbr"]]), np.array([row["item_nbr"]])
    pair = p._state.pair_index(store, item)
    enc = encode(
        p._tables,
        dates=np.array([row["date"]], "M8[D]"),
        store_nbr=store,
        item_nbr=item,
        onpromotion=np.array([row["onpromotion"]]),
        windows=p._state.window[pair],
        window_end=p._state.end_date,
    )
    return enc.as_feed()


def _write(out: Path, report: dict, manifest, lat: dict, ref: float, train_wall: float, synth_s: float) -> None:
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert import __version__ as litert_version

    ds = report["dataset"]
    lines = [
        "# edgeship benchmarks",
        "",
        f"Written by `make bench` (`python -m bench.run`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"ai-edge-litert {litert_version}, onnxruntime {onnxruntime.__version__}. "
        "Speeds are ratios against the raw LiteRT invoke of the same int8 model measured in the same run; "
        "absolute microseconds are shown for orientation only and vary by machine.",
        "",
        "## Single-row prediction latency",
        "",
        "One request row (`date`, `store_nbr`, `item_nbr`, `onpromotion`); 1 inference thread; loopback HTTP with a "
        "keep-alive connection. The in-process and HTTP paths include validation, the bundle-table look-ups and the "
        "feature encoding the raw invoke skips.",
        "",
        "| path | p50 µs | p99 µs | p50 ratio vs raw LiteRT | samples |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in lat.items():
        lines.append(f"| {name} | {s['p50']:.1f} | {s['p99']:.1f} | {s['p50'] / ref:.1f}× | {s['n']} |")
    lines += [
        "",
        f"## Model quality on the validation split (last {_days(ds['valid_window'])} days, NWRMSLE as Kaggle defines it)",
        "",
        f"Demo data: synthetic Favorita format, {ds['pairs']} store×item pairs, {ds['train_rows']:,} training rows "
        f"({ds['train_window'][0]} … {ds['train_window'][1]}), {ds['valid_rows']:,} validation rows "
        f"({ds['valid_window'][0]} … {ds['valid_window'][1]}). R² is in log1p space.",
        "",
        "| model | NWRMSLE | R² | vs Keras | parity p99 abs diff (log1p) | shipped |",
        "|---|---:|---:|---:|---:|---|",
    ]
    keras_n = report["metrics"]["keras"]["nwrmsle"]
    parity = report["gates"]["parity"]
    for name, m in report["metrics"].items():
        p = parity.get(name)
        shipped = "—" if p is None else ("yes" if p["shipped"] else "no: " + p["message"])
        p99 = "—" if p is None else f"{p['p99_abs_diff']:.2g}"
        lines.append(f"| {name} | {m['nwrmsle']:.4f} | {m['r2']:.3f} | {m['nwrmsle'] / keras_n - 1:+.2%} | {p99} | {shipped} |")
    lines += [
        "",
        "## Variant sizes",
        "",
        "| variant | bytes | vs tflite-fp32 |",
        "|---|---:|---:|",
    ]
    fp32 = parity["tflite-fp32"]["size_bytes"]
    for name, p in parity.items():
        lines.append(f"| {name} | {p['size_bytes']:,} | {p['size_bytes'] / fp32:.2f}× |")
    lines.append(f"| whole bundle (all shipped variants, tables, state, holdout) | {report['bundle_size_bytes']:,} | |")
    t = report["timings"]
    lines += [
        "",
        "## Training time on the demo data (2-core machine class)",
        "",
        "| step | seconds | share |",
        "|---|---:|---:|",
        f"| synthetic data generation | {synth_s:.1f} | |",
    ]
    for key in ("data_seconds", "baselines_seconds", "train_seconds", "export_seconds", "parity_seconds"):
        lines.append(f"| {key.removesuffix('_seconds')} | {t[key]:.1f} | {t[key] / t['total_seconds']:.0%} |")
    lines.append(f"| **total `edgeship train`** | **{train_wall:.1f}** | |")
    lines.append("")
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
