"""``edgeship cycle``: the whole CD4ML loop on embedded defaults, in one command, printing each step.

1. **data**: synthetic Favorita data; the last ``future_days`` days are held back as "the future"
   the shops will live through (base data = everything before them; their ``test.csv`` lists them).
2. **train** v1 on the base data (gates, export, parity, signed bundle).
3. **publish** to a small fleet: an embedded MQTT broker and ``agents`` agent processes, one per store.
4. **ingest**: the fleet telemetry ingest and Prometheus exporter (``edgeship fleet serve``) in-process,
   keeping its state (and the fleet's actuals) in ``<workdir>/fleet``.
5. **shop traffic**: each day of the future, every shop asks its agent for forecasts for all its items,
   then reports what really sold (the synthetic generator's values for that day).
6. **realised accuracy** per store and version, as the ingest received it from the devices' telemetry.
7. **retrain** with the fleet's actuals (:mod:`cloud.training.retrain`): lineage records both hashes.
8. **canary rollout** of the new version with abort rules (:class:`cloud.fleet.rollout.Rollout`: a
   canary device first, then the rest; abort on install or gate failure or a breached rule).
9. **promote or abort**: on success every agent serves the new version; on abort the reason is printed
   and the devices are rolled back to the version they ran: one line per agent with what its
   ``/healthz`` says (the canary rolled back, the others never got the new version).

With a ``workdir`` that already holds ``keys/`` and ``out/`` with only the first bundle and its
``cycle-first.json`` (written by an earlier cycle), step 2 reuses that model instead of training it
again, provided the regenerated base data hashes the same.

With ``once`` the command exits after one cycle; without it, it keeps the fleet up until Ctrl-C or
SIGTERM. Exit code: 0 when it promoted, or aborted and every agent serves the previous version again
(a clean abort); 1 otherwise (rollback incomplete, a step failed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeship.demo import (
    EmbeddedBroker, _AgentProc, _start_agent, _wait_for_version, _workdir, free_port, http_json, stop_agents,
)

__all__ = ["run_cycle", "split_future", "remember_first", "reuse_first"]

DEFAULT_ABORT_IF = ("nwrmsle>1.0",)
#: In ``<workdir>/out``: the first model a cycle trained there (see :func:`reuse_first`).
FIRST_RECORD = "cycle-first.json"


def say(step: str, text: str) -> None:
    print(f"[cycle] {step}: {text}", flush=True)


def split_future(truth: Path, base: Path, future_days: int) -> tuple[str, list[str]]:
    """Copy ``truth`` to ``base`` without its last ``future_days`` days; ``test.csv`` = every store×item of
    those days (promotions from the truth). Returns the base's last day and the future days."""
    import pandas as pd

    base.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(truth / "train.csv", dtype=str, keep_default_na=False)
    days = sorted(train["date"].unique())
    future, end = days[-future_days:], days[-future_days - 1]
    train[train["date"] <= end].to_csv(base / "train.csv", index=False, lineterminator="\n")
    for name in ("items.csv", "stores.csv", "holidays_events.csv", "oil.csv"):
        shutil.copy2(truth / name, base / name)
    tx = pd.read_csv(truth / "transactions.csv", dtype=str, keep_default_na=False)
    tx[tx["date"] <= end].to_csv(base / "transactions.csv", index=False, lineterminator="\n")
    stores = pd.read_csv(truth / "stores.csv")["store_nbr"].tolist()
    items = pd.read_csv(truth / "items.csv")["item_nbr"].tolist()
    promo = {(d, int(s), int(i)): p for d, s, i, p in train[train["date"] > end][["date", "store_nbr", "item_nbr", "onpromotion"]].itertuples(index=False, name=None)}
    rows = [(d, s, i, promo.get((d, s, i), "False")) for d in future for s in stores for i in items]
    first_id = len(train)
    test = pd.DataFrame(rows, columns=["date", "store_nbr", "item_nbr", "onpromotion"])
    test.insert(0, "id", range(first_id, first_id + len(test)))
    test.to_csv(base / "test.csv", index=False, lineterminator="\n")
    return end, future


def _truth_sales(truth: Path, days: Sequence[str]) -> dict[tuple[str, int, int], float]:
    import pandas as pd

    train = pd.read_csv(truth / "train.csv", dtype={"date": str})
    train = train[train["date"].isin(list(days))]
    return {(d, int(s), int(i)): float(u) for d, s, i, u in train[["date", "store_nbr", "item_nbr", "unit_sales"]].itertuples(index=False, name=None)}


def _promotions(base: Path) -> dict[tuple[str, int, int], bool]:
    import pandas as pd

    test = pd.read_csv(base / "test.csv", dtype={"date": str, "onpromotion": str}, keep_default_na=False)
    return {(d, int(s), int(i)): p == "True" for d, s, i, p in test[["date", "store_nbr", "item_nbr", "onpromotion"]].itertuples(index=False, name=None)}


def _shop_day(agent: _AgentProc, store: int, day: str, items: list[int], promo: dict, truth: dict) -> tuple[int, int]:
    """One shop day: forecasts for every item, then the day's actual sales. Returns (forecasts, sales rows)."""
    instances = [{"date": day, "store_nbr": store, "item_nbr": i, "onpromotion": promo.get((day, store, i), False)} for i in items]
    status, answer = http_json(f"{agent.http}/v1/predict", {"instances": instances}, timeout=30)
    for _ in range(len(items)):  # pairs the model has no history for (never sold in the base data): the shop skips them
        unknown = _unknown_pairs(status, answer)
        if not unknown:
            break
        keep = [n for n in range(len(items)) if n not in unknown]
        items[:] = [items[n] for n in keep]
        instances = [instances[n] for n in keep]
        status, answer = http_json(f"{agent.http}/v1/predict", {"instances": instances}, timeout=30)
    if status != 200:
        raise RuntimeError(f"{agent.device_id}: predict for {day} answered {status}: {answer}")
    sales = [{"date": day, "store_nbr": store, "item_nbr": i, "unit_sales": truth.get((day, store, i), 0.0)} for i in items]
    status, answer = http_json(f"{agent.http}/v1/sales", {"sales": sales}, timeout=30)
    if status != 200:
        raise RuntimeError(f"{agent.device_id}: sales for {day} answered {status}: {answer}")
    return len(instances), len(sales)


def _unknown_pairs(status: int, answer: Any) -> set[int]:
    if status != 422 or not isinstance(answer, dict):
        return set()
    out = set()
    for d in (answer.get("error") or {}).get("details") or []:
        if d.get("rule") == "known_pair" and str(d.get("field", "")).startswith("instances["):
            out.add(int(d["field"][len("instances[") : -1]))
    return out


def remember_first(out: Path, base: Path, first: Any) -> None:
    """Record the first model trained in ``out`` (its report, bundle hash, the base data's hash), so a
    later cycle in a workdir prepared with ``keys/`` and that bundle skips training it again."""
    from cloud.training.retrain import base_hash
    from models.bundle import sha256_file
    from models.fsutil import atomic_write_bytes

    if first.bundle is None:
        return
    record = {"report": first.report, "bundle": first.bundle.name, "bundle_sha256": sha256_file(first.bundle),
              "base_sha256": base_hash(base)}  # fmt: skip
    atomic_write_bytes(out / FIRST_RECORD, (json.dumps(record, indent=1, default=str) + "\n").encode())


def reuse_first(out: Path, base: Path, keys: Path) -> Any:
    """The first model recorded by :func:`remember_first` when it still fits: the same base data, its
    bundle unchanged, the signing key at hand and no other bundle in ``out`` (so the retrained model
    is the next version). None otherwise: train it.

    >>> import tempfile; reuse_first(Path(tempfile.mkdtemp()), Path("data"), Path("keys")) is None
    True
    """
    from cloud.training.pipeline import TrainResult
    from cloud.training.retrain import base_hash
    from models.bundle import sha256_file

    try:
        record = json.loads((out / FIRST_RECORD).read_text())
        bundle = out / record["bundle"]
        fits = (
            (keys / "signing.key").is_file()
            and sorted(out.glob("*.bundle.tar")) == [bundle]
            and sha256_file(bundle) == record["bundle_sha256"]
            and base_hash(base) == record["base_sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TrainResult(out / FIRST_RECORD, record["report"], bundle) if fits else None


def _after_abort(procs: Sequence[_AgentProc], result: dict[str, Any], v1: int, v2: int) -> bool:
    """After an abort, what each agent's ``/healthz`` says: devices the rollout reached run ``v1`` again,
    the others never left it. Prints one line per device; False when one does not."""
    ok = True
    for agent in procs:
        status = ((result.get("devices") or {}).get(agent.device_id) or {}).get("status", "not planned")
        try:
            health = _wait_for_version(agent, v1, timeout=60)
            print(f"    {agent.device_id}: {'rolled back' if status not in ('pending', 'not planned') else f'never got v{v2} ({status})'}, "
                  f"/healthz: v{health['model']['version']}", flush=True)  # fmt: skip
        except TimeoutError as exc:
            print(f"    {agent.device_id}: NOT back on v{v1} ({status}): {exc}", flush=True)
            ok = False
    return ok


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(0.2)


def run_cycle(
    *,
    once: bool = False,
    workdir: Path | None = None,
    broker: str | None = None,
    agents: int = 3,
    future_days: int = 7,
    stores: int | None = None,
    items: int = 50,
    days: int = 540,
    abort_if: Sequence[str] = DEFAULT_ABORT_IF,
    gate_timeout: float = 180.0,
) -> int:
    """Run one CD4ML cycle (and keep the fleet up unless ``once``); 0 when it promoted or cleanly aborted."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # one device per store: a store no device reports for would look closed on the new days
    # (Favorita lists only non-zero sales), see cloud.training.retrain
    stores = agents if stores is None else stores
    if agents > stores:
        raise ValueError(f"--agents {agents}: at most one agent per store ({stores} stores)")
    from cloud.data.synth import generate
    from cloud.fleet.exporter import serve_metrics
    from cloud.fleet.ingest import FleetState, Ingest
    from cloud.fleet.publish import publish
    from cloud.fleet.report import format_report, realised_report
    from cloud.fleet.rollout import Rollout
    from cloud.training.pipeline import train
    from cloud.training.retrain import retrain
    from models.signing import write_keypair

    t0 = time.perf_counter()
    with _workdir(workdir) as work:
        say("0 workdir", str(work))
        truth, base, out, keys = work / "truth", work / "data", work / "out", work / "keys"
        end_day = (dt.date(2017, 8, 15)).isoformat()
        summary = generate(truth, stores=stores, items=items, days=days + future_days, seed=0, end=end_day)
        base_end, future = split_future(truth, base, future_days)
        say("1 data", f"synthetic Favorita {summary.stores} stores x {summary.items} items, base data to {base_end}; "
                      f"the shops will live through {future[0]} .. {future[-1]} ({len(future)} days)")  # fmt: skip
        if not (keys / "signing.key").exists():
            write_keypair(keys)
        own = {"registry": work / "registry.json", "runs_dir": work / "runs"}  # the cycle's own, not ~/.edgeship
        first = reuse_first(out, base, keys)
        if first is None:
            first = train(base, out, keys / "signing.key", progress=False, **own)
            remember_first(out, base, first)
        rep = first.report
        v1 = int(rep["version"])
        say("2 train", f"{rep['model']} v{v1}: validation NWRMSLE keras {rep['metrics']['keras']['nwrmsle']:.4f}, "
                       f"shipped {', '.join(rep['shipped_variants'])}; dataset {rep['dataset']['version'][:12]}"
                       + (f" (reused {first.bundle.name} from {first.report_path.name}: same base data and key)"
                          if first.report_path.name == FIRST_RECORD else ""))  # fmt: skip

        embedded = None
        if broker is None:
            embedded = EmbeddedBroker().start()
            broker = embedded.url
        fleet_dir = work / "fleet"
        state = FleetState(expire_after_s=86400.0, state_dir=fleet_dir)
        procs: list[_AgentProc] = []
        ingest = server = None
        stop = threading.Event()
        old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            ingest = Ingest(broker, state, fleet="default", shared="auto").start()
            mport = free_port()
            server = serve_metrics(state, "127.0.0.1", mport, shared=lambda: ingest.shared)
            say("3 ingest", f"fleet ingest on {broker} ({'MQTT 5 shared' if ingest.shared else 'MQTT 3.1.1'}), "
                            f"state {fleet_dir}, metrics http://127.0.0.1:{mport}/metrics")  # fmt: skip
            shops = list(range(1, agents + 1))
            for n in shops:
                procs.append(_start_agent(f"store-{n}", broker, work, keys / "signing.pub", extra=[
                    "--attr", f"store_nbr={n}", "--option", "predlog.sample_rate=1.0", "--option", "telemetry.interval_s=1",
                ]))  # fmt: skip
            ann = publish(first.bundle, broker, key=keys / "signing.key", progress=False)
            for agent in procs:
                _wait_for_version(agent, v1, timeout=120)
            say("4 publish", f"v{ann.version} announced on {broker}; serving on {', '.join(a.device_id for a in procs)}")
            for agent in procs:
                print(f"    {agent.device_id}: {agent.http}/healthz", flush=True)

            import pandas as pd

            item_ids = pd.read_csv(base / "items.csv")["item_nbr"].astype(int).tolist()
            promo, sales = _promotions(base), _truth_sales(truth, future)
            forecasts = reported = 0
            assortment = {store: list(item_ids) for store in shops}  # narrowed to what each store's model knows
            for day in future:
                for store, agent in zip(shops, procs, strict=True):
                    f, r = _shop_day(agent, store, day, assortment[store], promo, sales)
                    forecasts, reported = forecasts + f, reported + r
            say("5 traffic", f"{len(procs)} shops x {len(future)} days: {forecasts} forecasts asked, {reported} sales rows reported")

            def realised_all() -> list[dict[str, Any]] | None:
                rows = realised_report(state.snapshot())
                got = {r["store_nbr"] for r in rows if r["version"] == v1}
                return rows if got >= set(shops) and state.actuals is not None and len(state.actuals) >= reported else None

            rows = _wait("the fleet's realised accuracy and every sales row reaching the ingest", realised_all, 120)
            state.save()
            say("6 realised", f"per store and version (ingest received {len(state.actuals or [])} actual rows):")
            print(format_report(rows), flush=True)

            merged, second = retrain(base, fleet_dir, out, keys / "signing.key", progress=False, **own)
            rep2 = second.report
            v2 = int(rep2["version"])
            fleet_lineage = rep2["lineage"]["dataset_source"]["fleet"]
            say("7 retrain", f"v{v2} on {merged.path.name}: base data {fleet_lineage['base_sha256'][:12]} + fleet actuals "
                             f"{fleet_lineage['actuals_sha256'][:12]} ({merged.actuals_rows} rows: {merged.replaced} replaced, "
                             f"{merged.added} added); validation NWRMSLE keras {rep2['metrics']['keras']['nwrmsle']:.4f}")  # fmt: skip
            print(json.dumps({"lineage": {"dataset_version": rep2["lineage"]["dataset_version"], **fleet_lineage}}), flush=True)

            rules = list(abort_if)
            say("8 rollout", f"canary 1 device, then the rest; abort if {', '.join(['failed>0', 'gate_failed>0', *rules])}")
            result = Rollout(
                second.bundle, broker, key=keys / "signing.key", state_dir=work / "rollout", canary=1, waves=(1.0,),
                abort_if=rules, gate_timeout=gate_timeout, require_gate=True, discover_s=2.0,
            ).run()  # fmt: skip
            for line in result.get("log", []):
                print(f"    {line}", flush=True)
            if result.get("phase") == "succeeded":
                for agent in procs:
                    _wait_for_version(agent, v2, timeout=60)
                say("9 promote", f"v{v2} promoted: serving on {', '.join(a.device_id for a in procs)}")
                code = 0
            else:
                say("9 abort", f"v{v2} not promoted ({result.get('phase')}): {result.get('reason')}")
                code = 0 if result.get("phase") == "rolled_back" and _after_abort(procs, result, v1, v2) else 1
            say("done", f"one cycle in {time.perf_counter() - t0:.1f} s")
            if once:
                return code
            say("serving", "Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.is_set() and all(a.proc.poll() is None for a in procs):
                    stop.wait(0.5)
            return code
        finally:
            stop_agents(procs)
            if server is not None:
                server.shutdown()
            if ingest is not None:
                ingest.stop()
            state.save()
            if embedded is not None:
                embedded.stop()
            signal.signal(signal.SIGTERM, old_term)
