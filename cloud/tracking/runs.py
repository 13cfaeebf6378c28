"""The local runs folder: one JSON file per ``edgeship train`` run, written atomically.

Where it lives: ``$EDGESHIP_RUNS_DIR`` if set, else ``$EDGESHIP_STATE_DIR/runs``, else
``~/.edgeship/runs`` (``edgeship train --runs-dir`` and ``edgeship runs --runs-dir`` override both).
A run file holds ``id``, ``status`` (``shipped``, ``gate_failed``, ``failed``), ``model``,
``version``, ``started_at``/``finished_at``, ``params`` (the recipe and the command's data
arguments), ``metrics`` (per model: nwrmsle, r2, oracle_gap…), ``slices``, ``gates``, ``data``
(``hash`` = the loader's dataset version, the folder), ``code_revision`` and ``artifacts`` (path,
sha256 and size of the report, the Keras model and the bundle).

>>> import tempfile
>>> store = RunStore(tempfile.mkdtemp())
>>> path = store.write({"id": "20260101T000000Z-abc123", "status": "shipped", "version": 3,
...                     "params": {"training": {"epochs": 8}}, "metrics": {"keras": {"nwrmsle": 0.5}}})
>>> [r["id"] for r in store.list()]
['20260101T000000Z-abc123']
>>> flatten({"training": {"epochs": 8}, "serving": {"horizon_days": 16}})
{'training.epochs': 8, 'serving.horizon_days': 16}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.fsutil import atomic_write_bytes

__all__ = ["RunStore", "default_runs_dir", "new_run_id", "flatten", "compare", "format_list", "RunNotFound"]

logger = logging.getLogger(__name__)


class RunNotFound(LookupError):
    """No run (or more than one) matches the id or prefix given."""


def default_runs_dir() -> Path:
    """``$EDGESHIP_RUNS_DIR``, else ``$EDGESHIP_STATE_DIR/runs``, else ``~/.edgeship/runs`` (read at call time)."""
    if os.environ.get("EDGESHIP_RUNS_DIR"):
        return Path(os.environ["EDGESHIP_RUNS_DIR"])
    return Path(os.environ.get("EDGESHIP_STATE_DIR") or Path.home() / ".edgeship") / "runs"


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable by time, unique: ``20260101T120000Z-3fa9c1``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``a.b.c`` keys; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class RunStore:
    """The runs folder (created on first write)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    def path(self, run_id: str) -> Path:
        return self.root / f"{run_id}.json"

    def write(self, run: Mapping[str, Any]) -> Path:
        """Write (or replace) the run's file atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(run["id"])
        atomic_write_bytes(path, json.dumps(run, indent=1, default=str, sort_keys=False).encode(), mode=0o644)
        return path

    def list(self) -> list[dict[str, Any]]:
        """Every readable run, oldest first (unreadable files are skipped with a warning)."""
        runs = []
        for p in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                runs.append(json.loads(p.read_text()))
            except (OSError, ValueError) as exc:
                logger.warning("skipping unreadable run file %s: %s", p, exc)
        return runs

    def get(self, ref: str) -> dict[str, Any]:
        """A run by id, unique id prefix, or ``MODEL@vN`` / ``vN`` (its model version)."""
        runs = self.list()
        if ref.startswith("v") and ref[1:].isdigit() or "@v" in ref:
            model, _, v = ref.rpartition("@")
            hits = [r for r in runs if str(r.get("version")) == v[1:] and (not model or r.get("model") == model)]
        else:
            hits = [r for r in runs if r.get("id") == ref] or [r for r in runs if str(r.get("id", "")).startswith(ref)]
        if len(hits) != 1:
            what = "no run" if not hits else f"{len(hits)} runs"
            raise RunNotFound(f"{what} in {self.root} match {ref!r} (edgeship runs list)")
        return hits[0]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _metric(run: Mapping[str, Any], model: str = "keras") -> str:
    m = (run.get("metrics") or {}).get(model) or {}
    return f"{m['nwrmsle']:.4f}" if "nwrmsle" in m else "–"


def format_list(runs: list[dict[str, Any]]) -> str:
    """One line per run: id, status, model and version, data hash, code revision, keras and shipped NWRMSLE."""
    lines = [f"{'run':<24} {'status':<11} {'model@version':<22} {'data':<12} {'code':<12} {'keras':>7} {'shipped':>14}"]
    for r in runs:
        shipped = (r.get("shipped_variants") or [None])[0]
        lines.append(
            f"{r.get('id', '?'):<24} {r.get('status', '?'):<11} {str(r.get('model')) + '@v' + str(r.get('version')):<22} "
            f"{str((r.get('data') or {}).get('hash'))[:12]:<12} {str(r.get('code_revision'))[:12]:<12} {_metric(r):>7} "
            f"{(shipped + ' ' + _metric(r, shipped)) if shipped else '–':>14}"
        )
    return "\n".join(lines)


def compare(a: Mapping[str, Any], b: Mapping[str, Any], *, all_params: bool = False) -> str:
    """A readable diff of two runs: what differs in params, data and code, then every metric side by
    side with the relative change (``all_params`` lists unchanged parameters too)."""
    out = [f"A = {a.get('id')} ({a.get('model')} v{a.get('version')}, {a.get('status')})",
           f"B = {b.get('id')} ({b.get('model')} v{b.get('version')}, {b.get('status')})", ""]  # fmt: skip
    pa, pb = flatten(a.get("params") or {}), flatten(b.get("params") or {})
    for key, va, vb in (
        ("data.hash", (a.get("data") or {}).get("hash"), (b.get("data") or {}).get("hash")),
        ("code_revision", a.get("code_revision"), b.get("code_revision")),
    ):
        pa[key], pb[key] = va, vb
    keys = sorted(set(pa) | set(pb))
    changed = [k for k in keys if pa.get(k) != pb.get(k)]
    out.append(f"params: {len(changed)} of {len(keys)} differ")
    for k in keys if all_params else changed:
        mark = "≠" if k in changed else " "
        out.append(f"  {mark} {k}: {_fmt(pa.get(k, '–'))} → {_fmt(pb.get(k, '–'))}")
    ma, mb = flatten(a.get("metrics") or {}), flatten(b.get("metrics") or {})
    out += ["", f"{'metric':<36} {'A':>10} {'B':>10} {'B vs A':>9}"]
    for k in sorted(set(ma) | set(mb)):
        va, vb = ma.get(k), mb.get(k)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va:
            rel = f"{(vb - va) / abs(va):+.2%}"
        else:
            rel = ""
        out.append(f"{k:<36} {_fmt(va) if va is not None else '–':>10} {_fmt(vb) if vb is not None else '–':>10} {rel:>9}")
    ga, gb = a.get("gates") or {}, b.get("gates") or {}
    verdicts = [(g, (ga.get(g) or {}).get("passed"), (gb.get(g) or {}).get("passed")) for g in sorted(set(ga) | set(gb))]
    verdicts = [(g, x, y) for g, x, y in verdicts if x is not None or y is not None]
    if verdicts:
        out += ["", "gates: " + ", ".join(f"{g} {x}→{y}" for g, x, y in verdicts)]
    return "\n".join(out)
