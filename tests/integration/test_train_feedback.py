"""`edgeship train --feedback DIR` end to end with the real trainer (Keras, export, parity, signing) on
small synthetic data: feedback records in the collector's store format (``FeedbackSet``, what
`edgeship feedback collect` writes) become labelled rows by the documented rules, and the manifest's
lineage names the feedback set's content hash.

The rules (README "How feedback gets from the shop floor into the next model", cloud/feedback/training.py):
only records with actual units; the latest record per store×item×day wins; a day train.csv already
has for that store×item keeps train.csv's value; an added row is an ordinary data row (weight 1,
1.25 if perishable, like every train.csv row). The signed bundle's lag state (state.npz) shows each
rule: the filled day holds the latest actual, the train.csv day keeps the till's value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloud.feedback.store import FILE, FeedbackSet
from models.contract import LAG_WINDOW_DAYS
from models.features import SalesState
from models.feedback import FeedbackRecord

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = {"name": "favorita-demand", "version": 1, "digest": "cd" * 32, "variant": "tflite-int8", "runtime": "litert"}


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "edgeship", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _record(n: int, key: tuple[str, int, int], actual: float | None, minute: int) -> FeedbackRecord:
    day, store, item = key
    return FeedbackRecord(
        id=f"{n:032x}", device_id=f"store-{store}", seq=n, validator="ana", verdict="wrong", actual_units=actual,
        request={"date": day, "store_nbr": store, "item_nbr": item}, forecast=3.0, model=MODEL,
        at=dt.datetime(2017, 8, 16, 9, minute, tzinfo=dt.timezone.utc),
    )  # fmt: skip


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        fh = tar.extractfile(name)
        assert fh is not None, name
        return fh.read()


def _independent_hash(path: Path) -> str:
    """The documented content hash, recomputed from the file: canonical JSON of each record, sorted by id."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    unique = {r["id"]: r for r in recs}
    h = hashlib.sha256()
    for rid in sorted(unique):
        h.update(json.dumps(unique[rid], sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def test_train_takes_feedback_actuals_and_names_the_set_in_lineage(tmp_path: Path) -> None:
    data, keys, out, fb = tmp_path / "data", tmp_path / "keys", tmp_path / "out", tmp_path / "feedback"
    # the spine's data size and seed (tests/integration/test_spine.py): large enough for the baseline gate to pass
    _cli("data", "synth", "--out", str(data), "--stores", "3", "--items", "24", "--days", "400", "--seed", "7")
    _cli("keys", "init", "--out", str(keys))

    # pick days in the lag window (the bundle's state.npz shows them) before the validation days
    train = pd.read_csv(data / "train.csv", dtype={"date": str})
    end = dt.date.fromisoformat(train["date"].max())
    window = {(end - dt.timedelta(days=k)).isoformat() for k in range(16, LAG_WINDOW_DAYS)}
    have = {(d, int(s), int(i)): float(u) for d, s, i, u in train[["date", "store_nbr", "item_nbr", "unit_sales"]].itertuples(index=False)}
    pairs = sorted({(s, i) for _, s, i in have})
    missing = sorted((d, s, i) for d in window for s, i in pairs if (d, s, i) not in have)
    present = sorted(k for k in have if k[0] in window and have[k] > 0)
    assert len(missing) >= 2 and present, "the synthetic data should have both zero-sale and sale days in the window"
    filled, no_actuals, conflict = missing[0], missing[1], present[0]

    # the collector's store: a duplicate delivery (same id) is not appended twice
    store = FeedbackSet(fb)
    assert store.add(_record(1, filled, 37.0, minute=1))
    assert store.add(_record(2, filled, 41.0, minute=5))  # later: wins over record 1
    assert store.add(_record(3, conflict, 999.0, minute=2))  # train.csv has this day: train.csv wins
    assert store.add(_record(4, no_actuals, None, minute=3))  # a verdict without units: not a row
    assert not store.add(_record(2, filled, 41.0, minute=5))  # QoS 1 redelivery
    assert len((fb / FILE).read_text().splitlines()) == 4

    _cli("train", "--data", str(data), "--out", str(out), "--key", str(keys / "signing.key"), "--feedback", str(fb), "--no-progress")
    report = json.loads((out / "report.json").read_text())
    bundle = Path(report["bundle"])
    manifest = json.loads(_member(bundle, "manifest.json"))

    # lineage: the feedback set's content hash and what was taken in
    lineage = manifest["lineage"]["dataset_source"]["feedback"]
    assert lineage["sha256"] == _independent_hash(fb / FILE) == FeedbackSet(fb).content_hash()
    assert lineage == report["feedback"]
    assert (lineage["records"], lineage["with_actuals"], lineage["superseded"]) == (4, 3, 1)
    assert (lineage["rows_added"], lineage["dropped_duplicates"], lineage["dropped_unknown"]) == (1, 1, 0)
    assert lineage["weighting"] == "as a train.csv row"

    # the rules, as the trained bundle's lag state shows them
    state = SalesState.from_bytes(_member(bundle, "state.npz"))
    assert str(state.end_date) == end.isoformat()  # feedback inside the data's days does not move its end

    def cell(key: tuple[str, int, int]) -> float:
        day, s, i = key
        row = int(state.pair_index(np.array([s]), np.array([i]))[0])
        assert row >= 0, key
        col = LAG_WINDOW_DAYS - 1 - (end - dt.date.fromisoformat(day)).days
        return float(np.expm1(state.window[row, col]))

    assert cell(filled) == pytest.approx(41.0, rel=1e-4)  # filled by feedback, the latest record
    assert cell(conflict) == pytest.approx(max(have[conflict], 0.0), rel=1e-4)  # train.csv kept
    assert cell(no_actuals) == 0.0  # no units entered: the day stays a zero-sale day

    # the same rules are written down where users read them
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("How feedback gets from the shop floor into the next model") :][:3000]
    for phrase in ("--feedback", "latest", "`train.csv`", "wins", "weighs like a `train.csv` row", "content hash"):
        assert phrase in section, phrase
