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
from pydantic import ValidationError

from edge.serving.errors import ErrorDetail, InferenceError, RequestError, detail, from_validation_error
from edge.runtimes import Runtime, available_runtimes, get_runtime, runtime_for_variant
from edge.runtimes.base import RuntimeLoadError, RuntimeUnavailable
from models.bundle import BundleError, VerifiedBundle, unpack_bundle, verify_unpacked
from models.contract import PredictRequest
from models.features import Encoded, SalesState, Tables, encode, target_inverse
from models.manifest import Manifest, Variant
from models.messages import ActiveModel
from models.signing import load_public_key

__all__ = ["Predictor", "Prepared", "TrustSpec", "load_trusted_keys", "RequestError", "InferenceError", "STAGES", "to_units"]

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


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One request's rows, validated and checked, with the lag windows they will be encoded with.

    Made by :meth:`Predictor.prepare`; several are encoded and inferred as one batch by
    :meth:`Predictor.predict_prepared` (what :mod:`edge.serving.batching` does for concurrent requests).
    """

    request: PredictRequest
    dates: np.ndarray  # M8[D] [n]
    store_nbr: np.ndarray  # int64 [n]
    item_nbr: np.ndarray  # int64 [n]
    onpromotion: np.ndarray  # bool [n]
    windows: np.ndarray  # float32 [n, LAG_WINDOW_DAYS], a copy taken when the request was checked
    window_end: np.datetime64 | np.ndarray  # last day of the windows (one, or one per row: per-store online state)

    def __len__(self) -> int:
        return int(self.dates.shape[0])


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
    ) -> None:
        self._bundle = bundle
        self._variant = variant
        self._runtime = runtime
        self._tables = tables
        self._state = state
        self._bundle_state = state  # what the bundle shipped; set_state() may serve a newer one
        self._owned_dir = owned_dir
        self._lock = threading.Lock()
        self._closed = False
        c = bundle.manifest.contract
        self._end = np.datetime64(c.state_end_date, "D")
        self._last_day = self._end + np.timedelta64(c.horizon_days, "D")
        self._info = ActiveModel(
            name=bundle.manifest.name,
            version=bundle.manifest.version,
            digest=bundle.digest,
            variant=variant.name,
            runtime=runtime.name,
            providers=list(runtime.active_providers),
        )

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
        return cls(bundle, chosen, rt, tables, state, owned_dir=_owned_dir)

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
    def closed(self) -> bool:
        return self._closed

    # -- prediction -------------------------------------------------------------------------
    def predict(
        self,
        instances: PredictRequest | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[float]:
        """Unit sales for each row, in order. ``instances`` is a list of row dicts, a request body
        ``{"instances": [...]}`` or a :class:`PredictRequest`. Fills ``timings`` (seconds per
        stage) if given. Raises :class:`RequestError` (4xx) or :class:`InferenceError` (500)."""
        if self._closed:
            raise InferenceError("predictor is closed")
        return self.predict_prepared([self.prepare(instances, timings=timings)], timings=timings)[0]

    def encode(
        self,
        instances: PredictRequest | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        timings: dict[str, float] | None = None,
    ) -> Encoded:
        """Validate rows and encode them into the model's inputs, exactly as :meth:`predict` does.

        The same :func:`models.features.encode` the trainer calls, fed from the bundle's tables and
        lag windows: ``tests/unit/test_golden_encoding.py`` holds both sides to identical arrays.
        """
        prepared = self.prepare(instances, timings=timings)
        t1 = time.perf_counter()
        enc = self.encode_prepared([prepared])
        if timings is not None:
            timings["encode"] = time.perf_counter() - t1
        return enc

    def prepare(
        self,
        instances: PredictRequest | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        timings: dict[str, float] | None = None,
    ) -> Prepared:
        """Validate one request and take its rows' lag windows, without encoding (stage ``validate``).

        Errors are the request's own (:class:`RequestError`); what passes can be encoded and
        inferred together with other requests' rows by :meth:`predict_prepared`.
        """
        t0 = time.perf_counter()
        request = self.validate(instances)
        rows = request.instances
        state = self._state  # one snapshot: set_state() may replace it while this request runs
        dates = np.array([r.date for r in rows], dtype="M8[D]")
        store = np.array([r.store_nbr for r in rows], dtype=np.int64)
        item = np.array([r.item_nbr for r in rows], dtype=np.int64)
        pair = self._check_known(dates, store, item, state)
        prepared = Prepared(
            request=request,
            dates=dates,
            store_nbr=store,
            item_nbr=item,
            onpromotion=np.array([r.onpromotion for r in rows], dtype=bool),
            windows=state.window[pair],
            window_end=state.row_end(pair),
        )
        if timings is not None:
            timings["validate"] = time.perf_counter() - t0
        return prepared

    def encode_prepared(self, batch: Sequence[Prepared]) -> Encoded:
        """The model inputs of several prepared requests' rows, in order, as one batch."""
        if len(batch) == 1:
            p = batch[0]
            return encode(
                self._tables,
                dates=p.dates,
                store_nbr=p.store_nbr,
                item_nbr=p.item_nbr,
                onpromotion=p.onpromotion,
                windows=p.windows,
                window_end=p.window_end,
            )
        ends = np.concatenate([np.broadcast_to(np.asarray(p.window_end, "M8[D]"), (len(p),)) for p in batch])
        return encode(
            self._tables,
            dates=np.concatenate([p.dates for p in batch]),
            store_nbr=np.concatenate([p.store_nbr for p in batch]),
            item_nbr=np.concatenate([p.item_nbr for p in batch]),
            onpromotion=np.concatenate([p.onpromotion for p in batch]),
            windows=np.concatenate([p.windows for p in batch]),
            window_end=ends[0] if len(ends) and np.all(ends == ends[0]) else ends,
        )

    def infer_encoded(self, enc: Encoded) -> np.ndarray:
        """Run the runtime (serialised: runtimes are not thread-safe); float32 [N] in log1p space."""
        with self._lock:
            if self._closed:
                raise InferenceError("predictor is closed")
            try:
                y = self._runtime.infer(enc.as_feed())
            except Exception as exc:
                raise InferenceError(f"{self._runtime.name} failed: {exc}") from exc
        if not np.all(np.isfinite(y)):
            raise InferenceError("the model produced a non-finite prediction")
        return y

    def predict_prepared(self, batch: Sequence[Prepared], *, timings: dict[str, float] | None = None) -> list[list[float]]:
        """Unit sales for several prepared requests, encoded and inferred as one batch; one list each."""
        t1 = time.perf_counter()
        enc = self.encode_prepared(batch)
        t2 = time.perf_counter()
        y = self.infer_encoded(enc)
        if timings is not None:
            timings.update(encode=t2 - t1, infer=time.perf_counter() - t2)
        units = to_units(y).tolist()
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
        return self._state

    def set_state(self, state: SalesState) -> None:
        """Encode requests with ``state`` from now on (e.g. :mod:`edge.serving.online_state`'s windows, kept
        current from actual sales); the horizon moves with its ``end_date``. Requests already
        checked keep the windows they were checked with."""
        end = np.datetime64(state.end_date, "D")
        self._end, self._last_day = end, end + np.timedelta64(self.manifest.contract.horizon_days, "D")
        self._state = state

    def validate(self, instances: PredictRequest | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> PredictRequest:
        """Schema validation only (types, required fields, batch size); raises :class:`RequestError`."""
        if isinstance(instances, PredictRequest):
            request = instances
        else:
            body = instances if isinstance(instances, Mapping) else {"instances": instances}
            if isinstance(body, Mapping) and isinstance(body.get("instances"), Sequence):
                self._check_batch(len(body["instances"]))
            try:
                request = PredictRequest.model_validate(body)
            except ValidationError as exc:
                raise from_validation_error(exc) from None
        self._check_batch(len(request.instances))
        return request

    def _check_batch(self, n: int) -> None:
        limit = self.manifest.contract.max_batch
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
        # per-row window end: stores that reported sales moved on, the others did not (online_state)
        end = np.broadcast_to(state.row_end(np.maximum(pair, 0)), dates.shape)
        last_day = end + np.timedelta64(self.manifest.contract.horizon_days, "D")
        d_ok = (dates > end) & (dates <= last_day)
        bad = np.flatnonzero(~(s_ok & i_ok & (pair >= 0) & d_ok))
        if not len(bad):
            return pair
        problems: list[ErrorDetail] = []
        for r in bad.tolist():
            row = f"instances[{r}]"
            if not s_ok[r]:
                problems.append(detail(f"{row}.store_nbr", "known_store", f"unknown store {store[r]}"))
            if not i_ok[r]:
                problems.append(detail(f"{row}.item_nbr", "known_item", f"unknown item {item[r]}"))
            if s_ok[r] and i_ok[r] and pair[r] < 0:
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
