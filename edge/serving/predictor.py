"""The embedded model: a verified bundle you can call from any Python program, agent or not.

``predict`` runs validate → check against the bundle's tables and state → encode (the same
:func:`models.features.encode` the trainer used) → infer → back to units::

    from edge.serving.predictor import Predictor

    with Predictor.open("favorita-demand-v3.bundle.tar", trust=["signing.pub"]) as model:
        model.predict([{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}])
        # -> [4.1234]  (unit sales)

Bad rows raise :class:`edge.serving.errors.RequestError` naming the field and the rule. The runtime is
called under a lock (runtimes are not thread-safe), everything else runs unlocked, so ``predict``
may be called from several threads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.serving.errors import ErrorDetail, InferenceError, RequestError, detail
from edge.runtimes import Runtime, available_runtimes, get_runtime, runtime_for_variant
from edge.runtimes.base import RuntimeLoadError, RuntimeUnavailable
from models.bundle import BundleError, VerifiedBundle, unpack_bundle, verify_unpacked
from models.contract import PredictRequest
from edge.serving.request import ParsedRequest, row_models
from edge.serving.request import parse as parse_request
from models.coldstart import Fallback
from models.features import _KEY_SHIFT, Encoded, SalesState, Tables, _contains, lag_features, target_inverse
from models.manifest import Manifest, Variant
from models.messages import ActiveModel
from models.signing import load_public_key

__all__ = [
    "Predictor",
    "Prepared",
    "ParsedRequest",
    "TrustSpec",
    "load_trusted_keys",
    "RequestError",
    "InferenceError",
    "STAGES",
    "to_units",
    "units_list",
]

logger = logging.getLogger(__name__)

#: Stages ``predict`` times (seconds), for ``edgeship_stage_duration_seconds``.
STAGES = ("validate", "encode", "infer")
#: Predictions are rounded to this many decimals (unit sales; 1e-4 is far below model error).
DECIMALS = 4

TrustSpec = Iterable[str | os.PathLike[str] | Ed25519PublicKey] | str | os.PathLike[str] | Ed25519PublicKey


def load_trusted_keys(trust: TrustSpec) -> list[Ed25519PublicKey]:
    """Public keys from PEM file paths and/or key objects; at least one is required."""
    if isinstance(trust, (str, os.PathLike, Ed25519PublicKey)):
        trust = [trust]
    keys = [k if isinstance(k, Ed25519PublicKey) else load_public_key(k) for k in trust]
    if not keys:
        raise ValueError("at least one trusted public key is required")
    return keys


def _candidates(manifest: Manifest, variant: str | Sequence[str] | None) -> list[Variant]:
    """Variants to try, in order: one named variant, a preference list then the rest, or manifest order."""
    if isinstance(variant, str):
        try:
            return [manifest.variant(variant)]
        except KeyError as exc:
            raise BundleError("no_variant", str(exc.args[0])) from None
    names = [v.name for v in manifest.variants]
    order = [n for n in (variant or ()) if n in names] + names
    return [manifest.variant(n) for n in dict.fromkeys(order)]


def _load_runtime(
    bundle: VerifiedBundle,
    variant: str | Sequence[str] | None,
    runtime: str | None,
    threads: int,
    providers: Sequence[str] | None = None,
) -> tuple[Variant, Runtime]:
    """Load the first candidate variant that a usable runtime loads and warms up (``providers``:
    execution providers for runtimes that take them, e.g. ONNX Runtime's; see :mod:`edge.runtimes.hardware`)."""
    avail = available_runtimes()
    problems: list[str] = []
    for v in _candidates(bundle.manifest, variant):
        name = runtime or runtime_for_variant(v.name, avail)
        if name is None or avail.get(name, "unknown runtime") != "ok":
            problems.append(f"{v.name}: no runtime available ({avail.get(name, 'none') if name else 'none'})")
            continue
        cls = get_runtime(name)
        if not cls.accepts(v.file):
            problems.append(f"{v.name}: runtime {name} does not load {Path(v.file).suffix} files")
            continue
        options = {"providers": list(providers)} if providers and cls.accepts_providers else {}
        rt = cls(bundle.path(v.file), threads=threads, **options)
        try:
            rt.load()
        except (RuntimeLoadError, RuntimeUnavailable) as exc:
            problems.append(f"{v.name}: {exc}")
            logger.warning("variant %s did not load with %s: %s", v.name, name, exc)
            continue
        return v, rt
    raise BundleError("no_runtime", "no variant of the bundle could be loaded here: " + "; ".join(problems))


def _load_fallback(bundle: VerifiedBundle) -> Fallback | None:
    """The cold-start windows (:mod:`models.coldstart`), when the bundle ships them."""
    manifest = bundle.manifest
    if manifest.fallback is None:
        return None
    if manifest.fallback not in manifest.files:
        raise BundleError("bad_fallback", f"manifest names fallback {manifest.fallback!r} but does not list it in files")
    try:
        fallback = Fallback.from_bytes(bundle.path(manifest.fallback).read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError("bad_fallback", f"{manifest.fallback} cannot be read: {exc}") from exc
    if str(fallback.end_date) != manifest.contract.state_end_date:
        raise BundleError(
            "bad_fallback", f"fallback ends {fallback.end_date}, manifest contract says {manifest.contract.state_end_date}"
        )
    return fallback


def _load_tables_and_state(bundle: VerifiedBundle) -> tuple[Tables, SalesState]:
    manifest = bundle.manifest
    try:
        tables = Tables.from_json(json.loads(bundle.path(manifest.tables).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError("bad_tables", f"{manifest.tables} cannot be read: {exc}") from exc
    try:
        state = SalesState.from_bytes(bundle.path(manifest.state).read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError("bad_state", f"{manifest.state} cannot be read: {exc}") from exc
    if str(state.end_date) != manifest.contract.state_end_date:
        raise BundleError(
            "bad_state",
            f"state ends {state.end_date}, manifest contract says {manifest.contract.state_end_date}",
        )
    return tables, state


def to_units(y: np.ndarray) -> np.ndarray:
    """Model outputs (log1p space) → unit sales, rounded as every response reports them."""
    return np.round(target_inverse(y), DECIMALS)


_SCALE = 10.0**DECIMALS


def units_list(y: np.ndarray) -> list[float]:
    """``to_units(y).tolist()`` without numpy's per-call cost on a few rows (identical values:
    ``np.round`` is ``rint(x * 10**d) / 10**d``, and ``round()`` rounds half to even as ``rint`` does)."""
    if len(y) > 16:
        return to_units(y).tolist()
    out = []
    for v in y.tolist():
        u = math.expm1(v)
        out.append(round(u * _SCALE) / _SCALE if u > 0.0 else 0.0)
    return out


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One request, validated, checked against the model's tables and lag state, and encoded.

    Made by :meth:`Predictor.prepare`; several are inferred as one batch by
    :meth:`Predictor.predict_prepared` (what :mod:`edge.serving.batching` does for concurrent requests).
    """

    request: ParsedRequest
    cat: np.ndarray  # int32 [n, 8]
    num: np.ndarray  # float32 [n, len(NUM_FEATURES)]
    #: per row, the cold-start level its lag window came from (None: the pair's own history);
    #: None when every row has history (:mod:`models.coldstart`)
    fallback: tuple[str | None, ...] | None = None

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    @property
    def encoded(self) -> Encoded:
        return Encoded(cat=self.cat, num=self.num)


class _View:
    """What requests are checked and encoded against for one lag state, with its caches.

    Replaced whole by :meth:`Predictor.set_state` / :meth:`Predictor.invalidate` (a request holds
    one view from check to encode, so a concurrent state change never mixes two states)."""

    __slots__ = ("state", "end", "ends", "horizon", "pairs", "lags", "rows", "version")

    def __init__(self, state: SalesState, horizon_days: int, version: int) -> None:
        self.state = state
        self.end = int(np.datetime64(state.end_date, "D").astype(np.int64))
        # per-pair window ends once stores reported sales up to different days (edge.serving.online_state)
        self.ends = None if state.pair_end is None else np.asarray(state.pair_end, "M8[D]").astype(np.int64).tolist()
        self.horizon = horizon_days
        self.pairs: dict[tuple[int, int], int] = {}  # (store_nbr, item_nbr) → state row (-1: none)
        self.lags: dict[tuple[int, int], tuple[float, ...]] = {}  # (state row, offset) → lag features
        # one request row → its encoded (cat [1, 8], num [1, len(NUM_FEATURES)]) and its cold-start
        # marks, read-only (shared by every request for that row, and by the drift monitor that keeps
        # what it is given)
        self.rows: dict[tuple[int, int, int, bool], tuple[np.ndarray, np.ndarray, tuple[str | None, ...] | None]] = {}
        self.version = version


#: Bound on each per-request cache (entries); a full cache is cleared, never grows without bound.
_CACHE_MAX = 65536
#: Bound on the encoded single-row cache (≈ 250 bytes an entry).
_ROWS_MAX = 4096


class Predictor:
    """A loaded, verified model version. Build it with :meth:`open` or :meth:`from_verified`."""

    def __init__(
        self,
        bundle: VerifiedBundle,
        variant: Variant,
        runtime: Runtime,
        tables: Tables,
        state: SalesState,
        *,
        owned_dir: Path | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self._bundle = bundle
        self._variant = variant
        self._runtime = runtime
        self._tables = tables
        self._bundle_state = state  # what the bundle shipped; set_state() may serve a newer one
        self._owned_dir = owned_dir
        self._lock = threading.Lock()
        self._closed = False
        c = bundle.manifest.contract
        self._max_batch = c.max_batch
        self._view = _View(state, c.horizon_days, 0)
        # caches that depend on the tables only (never invalidated, bounded by _CACHE_MAX)
        self._store_pos = {int(v): k for k, v in enumerate(tables.store_nbr.tolist())}
        self._item_pos = {int(v): k for k, v in enumerate(tables.item_nbr.tolist())}
        self._statics: dict[tuple[int, int], tuple[tuple[int, ...], float, int, int]] = {}
        self._dates: dict[int, tuple[tuple[int], tuple[float, float, float], float]] = {}
        self._places: dict[tuple[int, int, int], tuple[float, float]] = {}
        # cold start: pairs without history encode a group window (fixed per bundle, never invalidated)
        self._fallback = fallback
        self._fb_end = None if fallback is None else int(np.datetime64(fallback.end_date, "D").astype(np.int64))
        self._cold: dict[tuple[int, int, int], tuple[str, tuple[float, ...]]] = {}  # (store, item, offset) → level, lags
        self._info = ActiveModel(
            name=bundle.manifest.name,
            version=bundle.manifest.version,
            digest=bundle.digest,
            variant=variant.name,
            runtime=runtime.name,
            providers=list(runtime.active_providers),
        )
        self._info_dict = self._info.model_dump(mode="json")

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        trust: TrustSpec,
        variant: str | Sequence[str] | None = None,
        runtime: str | None = None,
        threads: int = 1,
        providers: Sequence[str] | None = None,
    ) -> Predictor:
        """Verify and load a bundle ``.tar`` (unpacked into a temp dir that :meth:`close` removes)
        or an unpacked bundle folder (re-verified in place). Raises :class:`BundleError`."""
        keys = load_trusted_keys(trust)
        path = Path(path)
        opts = {"variant": variant, "runtime": runtime, "threads": threads, "providers": providers}
        if path.is_dir():
            return cls.from_verified(verify_unpacked(path, keys), **opts)
        tmp = Path(tempfile.mkdtemp(prefix="edgeship-bundle-"))
        try:
            bundle = unpack_bundle(path, tmp / "bundle", keys)
            return cls.from_verified(bundle, **opts, _owned_dir=tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def from_verified(
        cls,
        bundle: VerifiedBundle,
        *,
        variant: str | Sequence[str] | None = None,
        runtime: str | None = None,
        threads: int = 1,
        providers: Sequence[str] | None = None,
        _owned_dir: Path | None = None,
    ) -> Predictor:
        """Load a bundle that :mod:`models.bundle` verified: tables, state, and the first variant
        (manifest order, or ``variant``: one name, or a preference list) whose runtime loads it and
        passes warm-up. ``runtime`` forces one plugin (e.g. ``"fake"`` in tests)."""
        tables, state = _load_tables_and_state(bundle)
        fallback = _load_fallback(bundle)
        chosen, rt = _load_runtime(bundle, variant, runtime, threads, providers)
        logger.info(
            "loaded model",
            extra={
                "model": bundle.manifest.name,
                "version": bundle.manifest.version,
                "variant": chosen.name,
                "runtime": rt.name,
                "providers": rt.active_providers,
            },
        )
        return cls(bundle, chosen, rt, tables, state, owned_dir=_owned_dir, fallback=fallback)

    # -- properties -------------------------------------------------------------------------
    @property
    def bundle(self) -> VerifiedBundle:
        return self._bundle

    @property
    def manifest(self) -> Manifest:
        return self._bundle.manifest

    @property
    def name(self) -> str:
        return self._bundle.manifest.name

    @property
    def version(self) -> int:
        return self._bundle.manifest.version

    @property
    def digest(self) -> str:
        return self._bundle.digest

    @property
    def variant(self) -> str:
        return self._variant.name

    @property
    def runtime_name(self) -> str:
        return self._runtime.name

    @property
    def info(self) -> ActiveModel:
        """What is served, as the MQTT state and the HTTP responses report it."""
        return self._info

    @property
    def info_dict(self) -> dict[str, Any]:
        """:attr:`info` as a JSON-ready dict (built once; do not modify it)."""
        return self._info_dict

    @property
    def closed(self) -> bool:
        return self._closed

    # -- prediction -------------------------------------------------------------------------
    def predict(
        self,
        instances: PredictRequest | ParsedRequest | Mapping[str, Any] | Sequence[Mapping[str, Any]] | bytes,
        *,
        timings: dict[str, float] | None = None,
    ) -> list[float]:
        """Unit sales for each row, in order. ``instances`` is a list of row dicts, a request body
        ``{"instances": [...]}`` (decoded or raw JSON bytes), a :class:`PredictRequest` or a
        :class:`ParsedRequest`. Fills ``timings`` (seconds per stage) if given. Raises
        :class:`RequestError` (4xx) or :class:`InferenceError` (500)."""
        if self._closed:
            raise InferenceError("predictor is closed")
        p = self.prepare(instances, timings=timings)
        if timings is None:
            return units_list(self.infer_arrays(p.cat, p.num))
        t2 = time.perf_counter()
        y = self.infer_arrays(p.cat, p.num)
        timings["infer"] = time.perf_counter() - t2
        return units_list(y)

    def encode(
        self,
        instances: PredictRequest | ParsedRequest | Mapping[str, Any] | Sequence[Mapping[str, Any]] | bytes,
        *,
        timings: dict[str, float] | None = None,
    ) -> Encoded:
        """Validate rows and encode them into the model's inputs, exactly as :meth:`predict` does.

        Bit-identical to :func:`models.features.encode` (the function the trainer calls) fed from
        the bundle's tables and lag windows: ``tests/unit/test_golden_encoding.py`` holds both sides
        to identical arrays.
        """
        return self.prepare(instances, timings=timings).encoded

    def parse(self, instances: Any) -> ParsedRequest:
        """Schema validation only (:func:`edge.serving.request.parse` with this model's batch limit)."""
        return parse_request(instances, self._max_batch)

    def validate(self, instances: Any) -> PredictRequest:
        """Schema validation only, as a :class:`PredictRequest` (types, required fields, batch size)."""
        parsed = self.parse(instances)
        return PredictRequest.model_construct(instances=row_models(parsed), correlation_id=parsed.correlation_id)

    def prepare(
        self,
        instances: PredictRequest | ParsedRequest | Mapping[str, Any] | Sequence[Mapping[str, Any]] | bytes,
        *,
        timings: dict[str, float] | None = None,
    ) -> Prepared:
        """Validate one request, check it against the tables and the lag state, and encode it
        (stages ``validate`` and ``encode``). Errors are the request's own (:class:`RequestError`).

        The fast path: what does not change per request is cached (per store×item: the table
        look-ups and the state row; per date: calendar and holiday features; per state row and
        offset: the lag features; per cold pair and offset: its fallback level and lag features), so a row costs a few dictionary look-ups. The lag caches
        belong to the current lag state and are dropped when it changes (:meth:`set_state`,
        :meth:`invalidate`)."""
        t0 = time.perf_counter() if timings is not None else 0.0
        request = instances if type(instances) is ParsedRequest and len(instances.rows) <= self._max_batch else self.parse(instances)
        t1 = time.perf_counter() if timings is not None else 0.0
        view = self._view  # one snapshot: set_state() may replace it while this request runs
        rows = request.rows
        if len(rows) == 1:  # the single-row fast path: the row's encoded arrays, cached per lag state
            hit = view.rows.get(rows[0])
            if hit is None:
                hit = self._encode_one(view, request)
            if timings is not None:
                timings["validate"] = t1 - t0
                timings["encode"] = time.perf_counter() - t1
            return Prepared(request, hit[0], hit[1], hit[2])
        cats: list[tuple[int, ...]] = []
        nums: list[tuple[float, ...]] = []
        levels: list[str | None] = []
        cold = False
        for row in request.rows:
            enc = self._encode_row(view, row)
            if enc is None:
                self._raise_row_errors(view, request)
            cats.append(enc[0])
            nums.append(enc[1])
            levels.append(enc[2])
            cold = cold or enc[2] is not None
        prepared = Prepared(
            request, np.array(cats, dtype=np.int32), np.array(nums, dtype=np.float32), tuple(levels) if cold else None
        )
        if timings is not None:
            t2 = time.perf_counter()
            timings["validate"] = t1 - t0
            timings["encode"] = t2 - t1
        return prepared

    def _encode_one(
        self, view: _View, request: ParsedRequest
    ) -> tuple[np.ndarray, np.ndarray, tuple[str | None, ...] | None]:
        """Encode a one-row request and keep its (read-only) arrays in the view's row cache."""
        row = request.rows[0]
        enc = self._encode_row(view, row)
        if enc is None:
            self._raise_row_errors(view, request)
        cat = np.array([enc[0]], dtype=np.int32)
        num = np.array([enc[1]], dtype=np.float32)
        cat.flags.writeable = False
        num.flags.writeable = False
        if len(view.rows) >= _ROWS_MAX:
            view.rows.clear()
        view.rows[row] = out = (cat, num, None if enc[2] is None else (enc[2],))
        return out

    def _encode_row(
        self, view: _View, row: tuple[int, int, int, bool]
    ) -> tuple[tuple[int, ...], tuple[float, ...], str | None] | None:
        """One row's (cat, num, fallback level) from the caches; None when the row is not servable
        (errors: the slow path). A pair without history takes its lag window from the bundle's
        cold-start fallback (:mod:`models.coldstart`), through the same lag features."""
        day, store, item, promo = row
        key = (store, item)
        static = self._statics.get(key)
        if static is None:
            static = self._static_of(store, item)
            if static is None:
                return None
        pair = view.pairs.get(key)
        if pair is None:
            pair = int(view.state.pair_index(np.array([store]), np.array([item]))[0])
            if len(view.pairs) >= _CACHE_MAX:
                view.pairs.clear()
            view.pairs[key] = pair
        level = None
        if pair < 0:
            if self._fb_end is None:
                return None
            offset = day - self._fb_end  # the fallback windows end where the bundle's state does
            if not 0 < offset <= view.horizon:
                return None
            cold = self._cold.get((store, item, offset))
            if cold is None:
                cold = self._cold_of(store, item, offset)
            level, lags = cold
        else:
            end = view.end if view.ends is None else view.ends[pair]  # this pair's last known day
            offset = day - end
            if not 0 < offset <= view.horizon:
                return None
            lags = view.lags.get((pair, offset))
            if lags is None:
                lags = tuple(float(v) for v in lag_features(view.state.window[pair : pair + 1], np.array([offset]))[0])
                if len(view.lags) >= _CACHE_MAX:
                    view.lags.clear()
                view.lags[(pair, offset)] = lags
        dates = self._dates.get(day)
        if dates is None:
            dates = self._date_of(day)
        place_key = (day, static[2], static[3])
        place = self._places.get(place_key)
        if place is None:
            place = self._place_of(day, static[2], static[3])
        cat = static[0] + dates[0]
        num = (1.0 if promo else 0.0, static[1], *dates[1], *place, dates[2], *lags)
        return cat, num, level

    def _cold_of(self, store: int, item: int, offset: int) -> tuple[str, tuple[float, ...]]:
        """Per cold store×item and offset: the fallback level and the lag features of its window."""
        assert self._fallback is not None
        level, window = self._fallback.lookup(self._tables, store, item)
        lags = tuple(float(v) for v in lag_features(window[None, :], np.array([offset]))[0])
        if len(self._cold) >= _CACHE_MAX:
            self._cold.clear()
        self._cold[(store, item, offset)] = out = (level, lags)
        return out

    def _static_of(self, store: int, item: int) -> tuple[tuple[int, ...], float, int, int] | None:
        """Per store×item: cat columns 0–6, perishable, the store's state and city index."""
        t = self._tables
        s = self._store_pos.get(store)
        i = self._item_pos.get(item)
        if s is None or i is None:
            return None
        cat = (s + 1, i + 1, int(t.family[i]), int(t.item_class[i]), int(t.store_type[s]), int(t.cluster[s]), int(t.city[s]))
        static = (cat, float(t.perishable[i]), int(t.state[s]), int(t.city[s]))
        if len(self._statics) >= _CACHE_MAX:
            self._statics.clear()
        self._statics[(store, item)] = static
        return static

    def _date_of(self, day: int) -> tuple[tuple[int], tuple[float, float, float], float]:
        """Per date: (dow+1,), (payday, day_of_month/31, national holiday), workday — as models.features.encode."""
        t = self._tables
        d = np.datetime64(day, "D")
        month_start = d.astype("M8[M]").astype("M8[D]")
        dom = int((d - month_start).astype(np.int64)) + 1
        month_end = (d + 1).astype("M8[M]") != d.astype("M8[M]")
        payday = 1.0 if (dom == 15 or month_end) else 0.0
        national = 1.0 if _contains(t.national_days, np.array([day]))[0] else 0.0
        workday = 1.0 if _contains(t.workdays, np.array([day]))[0] else 0.0
        out = (((day + 3) % 7 + 1,), (payday, dom / 31.0, national), workday)
        if len(self._dates) >= _CACHE_MAX:
            self._dates.clear()
        self._dates[day] = out
        return out

    def _place_of(self, day: int, state: int, city: int) -> tuple[float, float]:
        """Per date and store place: (regional holiday, local holiday)."""
        t = self._tables
        key = day * _KEY_SHIFT
        regional = 1.0 if state > 0 and _contains(t.regional_keys, np.array([key + state]))[0] else 0.0
        local = 1.0 if city > 0 and _contains(t.local_keys, np.array([key + city]))[0] else 0.0
        if len(self._places) >= _CACHE_MAX:
            self._places.clear()
        self._places[(day, state, city)] = out = (regional, local)
        return out

    def _raise_row_errors(self, view: _View, request: ParsedRequest) -> None:
        rows = request.rows
        epoch = np.datetime64("1970-01-01", "D")
        dates = epoch + np.array([r[0] for r in rows], dtype=np.int64).astype("m8[D]")
        store = np.array([r[1] for r in rows], dtype=np.int64)
        item = np.array([r[2] for r in rows], dtype=np.int64)
        self._check_known(dates, store, item, view.state)
        raise AssertionError("a row failed the fast check but passed the full one")  # pragma: no cover

    def encode_prepared(self, batch: Sequence[Prepared]) -> Encoded:
        """The model inputs of several prepared requests' rows, in order, as one batch."""
        if len(batch) == 1:
            return batch[0].encoded
        return Encoded(cat=np.concatenate([p.cat for p in batch]), num=np.concatenate([p.num for p in batch]))

    def infer_arrays(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """Run the runtime (serialised: runtimes are not thread-safe); float32 [N] in log1p space."""
        with self._lock:
            if self._closed:
                raise InferenceError("predictor is closed")
            try:
                y = self._runtime.infer_pair(cat, num)
            except Exception as exc:
                raise InferenceError(f"{self._runtime.name} failed: {exc}") from exc
        if not (math.isfinite(y[0]) if len(y) == 1 else np.isfinite(y).all()):
            raise InferenceError("the model produced a non-finite prediction")
        return y

    def infer_encoded(self, enc: Encoded) -> np.ndarray:
        """:meth:`infer_arrays` of an :class:`Encoded` batch."""
        return self.infer_arrays(enc.cat, enc.num)

    def predict_prepared(self, batch: Sequence[Prepared], *, timings: dict[str, float] | None = None) -> list[list[float]]:
        """Unit sales for several prepared requests, inferred as one batch; one list each."""
        enc = self.encode_prepared(batch)
        t2 = time.perf_counter()
        y = self.infer_encoded(enc)
        if timings is not None:
            timings["infer"] = time.perf_counter() - t2
        units = units_list(y)
        out, start = [], 0
        for p in batch:
            out.append(units[start : start + len(p)])
            start += len(p)
        return out

    # -- lag state --------------------------------------------------------------------------
    @property
    def tables(self) -> Tables:
        """The bundle's lookup tables (stores, items, holidays)."""
        return self._tables

    @property
    def bundle_state(self) -> SalesState:
        """The lag windows the bundle shipped."""
        return self._bundle_state

    @property
    def sales_state(self) -> SalesState:
        """The lag windows requests are encoded with now (the bundle's, or one given to :meth:`set_state`)."""
        return self._view.state

    @property
    def _state(self) -> SalesState:
        return self._view.state

    @property
    def state_version(self) -> int:
        """Bumped by every :meth:`set_state` / :meth:`invalidate` (the lag caches are rebuilt lazily)."""
        return self._view.version

    def set_state(self, state: SalesState) -> None:
        """Encode requests with ``state`` from now on (e.g. :mod:`edge.serving.online_state`'s windows, kept
        current from actual sales); the horizon moves with its ``end_date``. Requests already
        checked keep the windows they were checked with. The per-pair lag caches start afresh."""
        self._view = _View(state, self.manifest.contract.horizon_days, self._view.version + 1)

    def invalidate(self) -> None:
        """Drop the per-pair lag caches: call it after changing the current state's windows in place."""
        self.set_state(self._view.state)

    def _check_batch(self, n: int) -> None:
        limit = self._max_batch
        if n > limit:
            raise RequestError(
                [detail("instances", "max_batch", f"has {n} rows, at most {limit} are allowed")], status=413
            )

    def _check_known(
        self, dates: np.ndarray, store: np.ndarray, item: np.ndarray, state: SalesState | None = None
    ) -> np.ndarray:
        """Rows' state index; RequestError if a store/item/pair is unknown or a date out of horizon."""
        state = state if state is not None else self._state
        s_ok = self._tables.store_index(store) >= 0
        i_ok = self._tables.item_index(item) >= 0
        pair = state.pair_index(store, item)
        # per-row window end: stores that reported sales moved on, the others did not (online_state);
        # a pair without history is served from the cold-start fallback, whose windows end with the bundle's
        end = np.broadcast_to(state.row_end(np.maximum(pair, 0)), dates.shape)
        if self._fallback is not None:
            end = np.where(pair < 0, np.datetime64(self._fallback.end_date, "D"), end)
            pair = np.where(s_ok & i_ok & (pair < 0), -2, pair)  # servable: not a known_pair problem
        last_day = end + np.timedelta64(self.manifest.contract.horizon_days, "D")
        d_ok = (dates > end) & (dates <= last_day)
        bad = np.flatnonzero(~(s_ok & i_ok & (pair != -1) & d_ok))
        if not len(bad):
            return pair
        problems: list[ErrorDetail] = []
        for r in bad.tolist():
            row = f"instances[{r}]"
            if not s_ok[r]:
                problems.append(detail(f"{row}.store_nbr", "known_store", f"unknown store {store[r]}"))
            if not i_ok[r]:
                problems.append(detail(f"{row}.item_nbr", "known_item", f"unknown item {item[r]}"))
            if s_ok[r] and i_ok[r] and pair[r] == -1:
                problems.append(detail(row, "known_pair", f"no sales history for store {store[r]} and item {item[r]}"))
            if not d_ok[r]:
                problems.append(
                    detail(
                        f"{row}.date",
                        "horizon",
                        f"{dates[r]} must be after {end[r]} (last day of known sales) and "
                        f"at most {self.manifest.contract.horizon_days} days after it (until {last_day[r]})",
                    )
                )
        raise RequestError(problems)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Release the runtime and remove the temp folder :meth:`open` unpacked into. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._runtime.close()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Predictor {self.name} v{self.version} {self.variant}/{self.runtime_name}>"
