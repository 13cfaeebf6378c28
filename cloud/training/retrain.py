"""Retrain on the base data plus the actuals the fleet reported: ``edgeship retrain --from-fleet``.

:func:`build_dataset` writes a new dataset version (a Favorita folder) under ``<out>/datasets/``:

- every file of the base folder is copied unchanged except ``train.csv``;
- ``train.csv`` = the base rows, with the fleet's actuals merged in by ``(date, store_nbr, item_nbr)``:
  **an actual replaces the base row's ``unit_sales`` for its key, and extends train.csv where the
  base has no row** (its ``onpromotion`` then comes from ``test.csv`` when that names the key, else
  empty = unknown). An actual of exactly 0 removes the key's row, as Favorita lists only non-zero
  sales (a missing row means nothing sold); returns (negative sales) stay rows, as in Favorita.
  Rows stay in date order (the loader relies on it); new rows get ids after the base's highest.
- the fleet's value per key is the most recently received one across devices
  (:func:`cloud.fleet.actuals.fleet_table`).
- a store of the base data that no device reported for on the days past the base's end would look
  closed on those days (no rows = no sales): such stores are logged as a warning and listed in the
  lineage (``uncovered_stores``); deploy a device per store, or train with ``--stores``.

The folder is named after its content (``<base hash>-<actuals hash>``, first 12 digits each) and is
written to a temporary folder renamed into place, so a crash leaves no half-written version.
:func:`retrain` then runs the ordinary pipeline (:func:`cloud.training.pipeline.train`: gates,
export, parity, signed bundle) on it; the manifest's ``lineage.dataset_source.fleet`` records the
base data's hash and the fleet actuals' hash (and row counts), next to ``dataset_version`` (the
loader's hash of the merged data). The version is one more than the highest of ``--out`` and of
what the fleet reports running (:file:`ingest.json`), so it always supersedes the deployed one.

::

    result = retrain("data/", "/var/lib/edgeship-fleet", "out/", "keys/signing.key")
    result.report["lineage"]["dataset_source"]["fleet"]
    # {"base_sha256": "…", "actuals_sha256": "…", "actuals_rows": 480, "replaced": 350, "added": 130, …}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from cloud.fleet.actuals import fleet_table, table_hash
from cloud.data.loader import OPTIONAL_FILES, REQUIRED_FILES

__all__ = ["MergedDataset", "build_dataset", "base_hash", "fleet_versions", "retrain", "MERGE_RULE"]

logger = logging.getLogger(__name__)

MERGE_RULE = (
    "fleet actuals replace train.csv unit_sales for their (date, store_nbr, item_nbr) and extend it where "
    "the base has no row; an actual of 0 removes the row; across devices the latest received value wins"
)
_CHUNK = 1_000_000


@dataclasses.dataclass(frozen=True)
class MergedDataset:
    path: Path
    base_sha256: str
    actuals_sha256: str
    actuals_rows: int
    replaced: int
    added: int
    removed: int
    uncovered_stores: tuple[int, ...] = ()

    def lineage(self, base_dir: Path, state_dir: Path) -> dict[str, Any]:
        return {
            "base_data": str(Path(base_dir).resolve()),
            "base_sha256": self.base_sha256,
            "fleet_state": str(Path(state_dir).resolve()),
            "actuals_sha256": self.actuals_sha256,
            "actuals_rows": self.actuals_rows,
            "replaced": self.replaced,
            "added": self.added,
            "removed": self.removed,
            "uncovered_stores": list(self.uncovered_stores),
            "rule": MERGE_RULE,
        }


def base_hash(data_dir: str | os.PathLike[str]) -> str:
    """sha256 over the Favorita files of ``data_dir`` (name and content of each, sorted by name)."""
    root = Path(data_dir)
    h = hashlib.sha256()
    for name in sorted(REQUIRED_FILES + OPTIONAL_FILES):
        path = root / name
        if not path.is_file():
            continue
        f = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                f.update(block)
        h.update(f"{name}\t{f.hexdigest()}\n".encode())
    return h.hexdigest()


def _promotions(data_dir: Path) -> dict[tuple[str, int, int], str]:
    path = data_dir / "test.csv"
    if not path.is_file():
        return {}
    test = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["date", "store_nbr", "item_nbr", "onpromotion"])
    return {(d, int(s), int(i)): p for d, s, i, p in test.itertuples(index=False, name=None)}


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def build_dataset(
    data_dir: str | os.PathLike[str], state_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, fleet: str | None = None
) -> MergedDataset:
    """Write base data + fleet actuals as a new dataset folder under ``out_dir/datasets``; see the module doc."""
    base = Path(data_dir)
    missing = [f for f in REQUIRED_FILES if not (base / f).is_file()]
    if missing:
        raise FileNotFoundError(f"--data {base}: missing {', '.join(missing)}")
    actuals = fleet_table(state_dir, fleet=fleet)
    if not actuals:
        raise ValueError(f"--from-fleet {state_dir}: the fleet has reported no sales yet (actuals.jsonl is empty)")
    b_hash, a_hash = base_hash(base), table_hash(actuals)
    target = Path(out_dir) / "datasets" / f"{b_hash[:12]}-{a_hash[:12]}"
    pending = {(d, s, i): v for d, s, i, v in actuals}
    counts = {"replaced": 0, "added": 0, "removed": 0}
    if not (target / "train.csv").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for name in REQUIRED_FILES + OPTIONAL_FILES:
                if name != "train.csv" and (base / name).is_file():
                    shutil.copy2(base / name, tmp / name)
            counts = _merge_train(base / "train.csv", tmp / "train.csv", pending, _promotions(base))
            (tmp / "fleet_merge.json").write_text(json.dumps({**counts, "rule": MERGE_RULE}, indent=1))
            with open(tmp / "train.csv", "rb") as fh:
                os.fsync(fh.fileno())
            try:
                os.rename(tmp, target)
            except OSError:  # a concurrent run made the same version: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        counts = json.loads((target / "fleet_merge.json").read_text())
    uncovered = _uncovered_stores(base, actuals)
    if uncovered:
        logger.warning("no fleet actuals from stores %s on the days past the base data: they look closed on those days", uncovered)
    return MergedDataset(
        target, b_hash, a_hash, len(actuals), counts["replaced"], counts["added"], counts["removed"], tuple(uncovered)
    )


def _uncovered_stores(base: Path, actuals: list[tuple[str, int, int, float]]) -> list[int]:
    """Stores of the base data without any actual on the days after the base's last day."""
    stores = pd.read_csv(base / "stores.csv", usecols=["store_nbr"])["store_nbr"].astype(int).tolist()
    with open(base / "train.csv", "rb") as fh:  # the last line's date (train.csv is in date order)
        fh.seek(max(fh.seek(0, 2) - 4096, 0))
        tail = fh.read().splitlines()
    last = tail[-1].split(b",")[1].decode() if len(tail) > 1 else ""
    covered = {s for d, s, _i, _v in actuals if d > last}
    if not any(d > last for d, *_ in actuals):
        return []
    return sorted(set(stores) - covered)


def _merge_train(src: Path, dst: Path, actuals: dict[tuple[str, int, int], float], promo: dict[tuple[str, int, int], str]) -> dict[str, int]:
    """Stream ``src`` in date order, applying ``actuals`` (consumed); new keys are inserted by date."""
    replaced = removed = 0
    new_keys = sorted(actuals)  # by date first
    emitted: set[tuple[str, int, int]] = set()
    next_id = 0
    header = True

    def new_rows(upto: str | None) -> list[list[str]]:
        out = []
        nonlocal next_id
        for key in new_keys:
            if upto is not None and key[0] >= upto:
                break
            if key in emitted or key not in actuals:
                continue
            emitted.add(key)
            v = actuals.pop(key)
            if v == 0:
                continue
            out.append([key[0], str(key[1]), str(key[2]), _fmt(v), promo.get(key, "")])
        return out

    added = 0
    with open(dst, "w", newline="") as fh:
        for chunk in pd.read_csv(src, dtype=str, keep_default_na=False, chunksize=_CHUNK):
            cols = list(chunk.columns)
            keys = list(zip(chunk["date"], chunk["store_nbr"].astype(int), chunk["item_nbr"].astype(int), strict=True))
            sales = chunk["unit_sales"].tolist()
            keep = [True] * len(keys)
            for n, key in enumerate(keys):
                if key in actuals:
                    v = actuals.pop(key)
                    emitted.add(key)
                    if v == 0:
                        keep[n] = False
                        removed += 1
                    else:
                        sales[n] = _fmt(v)
                        replaced += 1
            chunk = chunk.assign(unit_sales=sales)[keep]
            if len(chunk):
                next_id = max(next_id, int(pd.to_numeric(chunk["id"]).max()) + 1)
            extra = new_rows(upto=str(chunk["date"].iloc[-1]) if len(chunk) else None)
            if extra:
                add = pd.DataFrame([[""] + r for r in extra], columns=["id", "date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"])
                chunk = pd.concat([chunk, add[cols]], ignore_index=True).sort_values("date", kind="stable")
                added += len(extra)
            chunk.to_csv(fh, index=False, header=header, lineterminator="\n")
            header = False
        extra = new_rows(upto=None)
        if extra or header:
            add = pd.DataFrame([[""] + r for r in extra], columns=["id", "date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"])
            add.to_csv(fh, index=False, header=header, lineterminator="\n")
            added += len(extra)
    if added:
        _number_new_rows(dst, next_id)
    return {"replaced": replaced, "added": added, "removed": removed}


def _number_new_rows(path: Path, first_id: int) -> None:
    """Give the appended rows (empty id) ids after the base's highest, in file order."""
    tmp = path.with_suffix(".ids")
    n = first_id
    with open(path) as src, open(tmp, "w") as out:
        out.write(src.readline())
        for line in src:
            if line.startswith(","):
                line = f"{n}{line}"
                n += 1
            out.write(line)
    os.replace(tmp, path)


def fleet_versions(state_dir: str | os.PathLike[str]) -> int:
    """The highest model version any device reported to the ingest (0 if none)."""
    path = Path(state_dir) / "ingest.json"
    try:
        devices = json.loads(path.read_text()).get("devices", [])
    except (OSError, ValueError):
        return 0
    best = 0
    for d in devices:
        try:
            best = max(best, int(d.get("version") or 0))
        except (TypeError, ValueError):
            continue
    return best


def retrain(
    data_dir: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    version: int | None = None,
    fleet: str | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> tuple[MergedDataset, Any]:
    """Build the merged dataset and train, gate and bundle on it; returns ``(dataset, TrainResult)``."""
    from cloud.training.pipeline import next_version, train
    from models.recipes import load_recipe

    recipe = train_kwargs.pop("recipe", None) or load_recipe()
    merged = build_dataset(data_dir, state_dir, out_dir, fleet=fleet)
    logger.info("dataset %s: base %s + fleet actuals %s (%d rows)", merged.path, merged.base_sha256[:12], merged.actuals_sha256[:12], merged.actuals_rows)
    if version is None:
        version = max(next_version(Path(out_dir), recipe.name), fleet_versions(state_dir) + 1)
    result = train(
        merged.path, out_dir, key_path, recipe=recipe, version=version, progress=progress,
        lineage={"fleet": merged.lineage(Path(data_dir), Path(state_dir))}, **train_kwargs,
    )  # fmt: skip
    return merged, result
