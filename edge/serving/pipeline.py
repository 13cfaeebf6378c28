"""The prediction path every transport shares: parse → validate → (A/B) → infer → answer → record.

HTTP (:mod:`edge.serving.http`), MQTT (:mod:`edge.serving.mqtt`) and the serial bridge all go through one
:class:`Serving`, so they validate alike, batch together, and feed the same metrics, drift
monitor, prediction log, shadow comparison and A/B split::

    serving = Serving.for_agent(agent)                          # the agent does this
    future = serving.submit(body, transport="mqtt")             # RequestError / Unavailable / Overloaded now,
    answer = future.result()                                    # Answer(predictions, model, arm) later
    answer = await serving.predict_async(raw_bytes)             # HTTP, on the event loop
    serving.predict(body, transport="serial")                   # the same, blocking
    serving.report_sales({"sales": [...]}, transport="serial")  # online lag state (edge.serving.online_state)

One path: a request is parsed once (:mod:`edge.serving.request`), checked and encoded once against
the live model's caches (:meth:`edge.serving.predictor.Predictor.prepare`), and inferred alone when
nothing else is in flight, or in a micro-batch with requests that overlap it
(:mod:`edge.serving.batching`). A/B may route it to the candidate; the :class:`Answer` says which
model and arm answered. Arm metrics are recorded before the answer is handed back; after it, a
sampled share is logged (:mod:`edge.monitoring.predlog`) and, in shadow mode, mirrored to the
candidate (:mod:`edge.serving.shadow`). Failures map to status and error body through one table,
:func:`edge.serving.errors.error_reply`. The HTTP handlers live in :mod:`edge.serving.http`, the MQTT
ones in :mod:`edge.serving.mqtt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from edge.serving.batching import BatchingConfig, BatchMetrics, MicroBatcher
from edge.monitoring.drift import DriftCollector, DriftConfig, DriftMonitor
from edge.serving.errors import ErrorDetail, Overloaded, RequestError, Unavailable, detail
from edge.serving.predictor import units_list
from models.features import Encoded
from edge.serving.online_state import OnlineState, OnlineStateConfig
from edge.monitoring.predlog import PredictionLog, PredLogConfig
from edge.monitoring.realised import RealisedAccuracy
from edge.serving.shadow import Candidate, CandidateConfig, CandidateSettings
from models.contract import PredictRequest, RequestRow
from models.messages import ActiveModel
from models.serving import SalesAck

__all__ = ["Serving", "Answer", "Unavailable", "Overloaded"]

logger = logging.getLogger(__name__)

_ROW = TypeAdapter(RequestRow)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A request's predictions and which model and arm answered (never a mutated shared object)."""

    predictions: list[float]
    model: ActiveModel
    arm: str = "live"
    model_dict: dict[str, Any] | None = None  # ``model`` as JSON-ready dict (cached per predictor)
    #: per row, the cold-start level of its lag window (None: own history); None when no row is cold
    fallback: tuple[str | None, ...] | None = None

    def body(self, correlation_id: str | None = None, *, mqtt: bool = False) -> dict[str, Any]:
        """The response body: ``predictions``, ``fallback`` (only when a row is cold-start) and ``model``."""
        out: dict[str, Any] = {"schema_version": 1, "correlation_id": correlation_id} if mqtt else {}
        out["predictions"] = self.predictions
        if self.fallback is not None:
            out["fallback"] = list(self.fallback)
        out["model"] = self.model_dict
        return out


@dataclasses.dataclass(frozen=True)
class _Job:
    prepared: Any  # edge.serving.predictor.Prepared
    observe: bool  # feed the drift monitor with these rows


class _Pending:
    """One request between validation and its answer: the leases it holds and what to record."""

    __slots__ = ("leases", "mirror", "target", "arm", "prep", "cid", "transport", "started", "recorded", "job", "elapsed")

    def __init__(self, leases: list[tuple[Any, object]], mirror: Any, target: Any, arm: str, prep: Any, cid: str | None,
                 transport: str, recorded: bool, job: _Job) -> None:  # fmt: skip
        self.leases, self.mirror, self.target, self.arm, self.prep = leases, mirror, target, arm, prep
        self.cid, self.transport, self.recorded, self.job = cid, transport, recorded, job
        self.started = time.perf_counter()
        self.elapsed = 0.0

    def release(self) -> None:
        leases, self.leases = self.leases, []
        for slot, token in leases:
            slot.release(token)

    def release_mirror(self) -> None:
        if self.mirror is not None:
            mirror, self.mirror = self.mirror, None
            mirror[0].release(mirror[1])


class Serving:
    """The shared prediction path, its batchers, candidate, online state, drift and prediction log."""

    def __init__(
        self,
        slot: Any,
        metrics: Any,
        state_dir: str | Path | None = None,
        *,
        batching: BatchingConfig | None = None,
        candidate: CandidateConfig | None = None,
        online_state: OnlineStateConfig | None = None,
        drift: DriftConfig | None = None,
        predlog: PredLogConfig | None = None,
        max_body_bytes: int = 1 << 20,
        open_version: Callable[[int], Any] | None = None,
    ) -> None:
        self.slot = slot
        self.metrics = metrics
        self.batching = batching or BatchingConfig()
        self.candidate_config = candidate or CandidateConfig()
        self.drift_config = drift or DriftConfig()
        self.max_body_bytes = max_body_bytes
        self._open_version = open_version
        registry = metrics.registry
        self._batch_metrics = BatchMetrics(registry)
        self.batcher: MicroBatcher[Any, _Job] | None = None
        if self.batching.enabled:
            self.batcher = MicroBatcher(self._run, self.batching, metrics=self._batch_metrics.child("live"), name="live")
        self._shadow_batcher: MicroBatcher[Any, _Job] | None = None
        self.candidate = Candidate(registry)
        online_state = online_state or OnlineStateConfig()
        if state_dir is None:  # embedded (no agent): nothing kept on disk
            online_state, predlog = OnlineStateConfig(enabled=False), PredLogConfig(sample_rate=0.0)
        folder = Path(state_dir) if state_dir is not None else Path(".")
        self.online = OnlineState(folder / "online" / "sales_state.npz", online_state, registry) if online_state.enabled else None
        self.predlog = PredictionLog(folder / "predlog", predlog or PredLogConfig(), registry)
        self._logging = self.predlog.enabled
        self._stage_infer = metrics.stage_duration.labels("infer")
        # realised accuracy: reported sales joined to logged forecasts (edge.monitoring.realised)
        self.realised = RealisedAccuracy(
            folder / "predlog", folder / "realised.json", registry, perishable=self._perishable, offline=self._offline
        )
        #: ``sink(rows, transport)`` gets every accepted report's rows (the agent wires telemetry's actuals)
        self.sales_sink: Callable[[list[Any], str], Any] | None = None
        self._drift: DriftMonitor | None = None
        self._drift_owner: Any = None
        if self.drift_config.enabled:
            DriftCollector(lambda: self._drift, registry)

    @classmethod
    def embedded(cls, slot: Any, metrics: Any, *, max_body_bytes: int = 1 << 20) -> Serving:
        """The bare path over a :class:`edge.serving.slot.ModelSlot`: no batching, candidate, online
        state, drift or prediction log (what :func:`edge.serving.http.create_app` wraps a slot in)."""
        return cls(
            slot,
            metrics,
            None,
            batching=BatchingConfig(enabled=False),
            drift=DriftConfig(enabled=False),
            max_body_bytes=max_body_bytes,
        )

    @classmethod
    def for_agent(cls, agent: Any) -> Serving:
        """Wired to an :class:`edge.agent.Agent`: its slot, metrics, settings, and installed versions."""
        from models.bundle import verify_unpacked

        def open_version(version: int) -> Any:
            bundle = verify_unpacked(agent.store.version_dir(version), agent.store.trusted)
            return agent._open_predictor(bundle)

        c = agent.config
        return cls(
            agent.slot,
            agent.metrics,
            c.state_dir,
            batching=c.batching,
            candidate=c.candidate,
            online_state=c.online_state,
            drift=c.drift,
            predlog=c.predlog,
            max_body_bytes=c.max_body_bytes,
            open_version=open_version,
        )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Restore the online lag state (onto the live model) and load the configured candidate."""
        if self.online is not None:
            self.online.start()
            live = self.slot.current
            if live is not None:
                self.adopt(live)
        c = self.candidate_config
        if c.version is not None:
            try:
                self.load_candidate(c.version, CandidateSettings(mode=c.mode, share=c.share, key=c.key, tolerance=c.tolerance))
            except Exception as exc:  # a bad candidate never stops the live model from serving
                logger.error("candidate v%d could not be loaded: %s", c.version, exc)

    def stop(self) -> None:
        for b in (self.batcher, self._shadow_batcher):
            if b is not None:
                b.close()
        self.candidate.clear()
        if self.online is not None:
            self.online.stop()
        self.predlog.close()

    def adopt(self, predictor: Any) -> None:
        """Prepare a predictor about to become live: the online lag view, a fresh drift window."""
        if self.online is not None:
            self.online.adopt(predictor)
            self.online.metrics.end.set(float(np.datetime64(predictor.sales_state.end_date, "s").astype(np.int64)))
        if self.drift_config.enabled:
            self._drift = DriftMonitor.from_bundle(predictor.bundle, self.drift_config)
            self._drift_owner = predictor

    def load_candidate(self, version: int | None, settings: CandidateSettings | None = None) -> ActiveModel | None:
        """Load installed ``version`` as the candidate (None: unload). Raises if it cannot be loaded."""
        if version is None:
            self.candidate.clear()
            logger.info("candidate unloaded")
            return None
        if self._open_version is None:
            raise RuntimeError("no way to open installed versions")
        predictor = self._open_version(version)
        if self.online is not None:
            self.online.adopt(predictor)
        self.candidate.set(predictor, settings or CandidateSettings())
        return predictor.info

    # -- reading ----------------------------------------------------------------------------
    @property
    def current(self) -> Any:
        """The live predictor (for reading its properties)."""
        return self.slot.current

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        """Borrow the live predictor (or None) for one request (the bulk endpoint's path)."""
        with self.slot.use() as live:
            yield live

    # -- predicting -------------------------------------------------------------------------
    def predict(self, body: Any, *, transport: str = "serial", timings: dict[str, float] | None = None) -> Answer:
        """Blocking :meth:`submit` (for the serial bridge and other threads)."""
        return self.submit(body, transport=transport, timings=timings).result()

    def submit(
        self,
        body: Any,
        *,
        transport: str,
        timings: dict[str, float] | None = None,
        correlation_id: str | None = None,
    ) -> Future[Answer]:
        """Validate now (raising :class:`RequestError`, :class:`Unavailable`, :class:`Overloaded`);
        the returned future holds the :class:`Answer` (or an :class:`InferenceError`). Any thread.
        ``body``: raw JSON bytes, a decoded body, a list of rows or a parsed request."""
        p = self._begin(body, transport, timings, correlation_id)
        out: Future[Answer] = Future()
        if self.batcher is None:
            try:
                result = self._run(p.target, [p.job])[0]
            except BaseException as exc:
                self._fail(p, exc)
                raise
            out.set_result(self._answer(p, result))
            self._after(p, result)
            return out
        try:
            inner = self.batcher.submit(p.target, p.job, rows=len(p.job.prepared))
        except BaseException:
            p.release()
            p.release_mirror()
            raise

        def settle(f: Future[Any]) -> None:
            try:
                result = f.result()
            except BaseException as exc:
                self._fail(p, exc)
                out.set_exception(exc)
                return
            out.set_result(self._answer(p, result))
            self._after(p, result)

        inner.add_done_callback(settle)
        return out

    async def predict_async(
        self,
        body: Any,
        *,
        transport: str = "http",
        timings: dict[str, float] | None = None,
        correlation_id: str | None = None,
        alone: bool = True,
    ) -> Answer:
        """:meth:`submit` for an asyncio event loop. A request alone (``alone``: the server knows of
        no other request in flight) is answered inline, with no hand-off and no wait; requests
        that overlap on the loop are batched (:meth:`MicroBatcher.submit_async`)."""
        p = self._begin(body, transport, timings, correlation_id)
        try:
            if self.batcher is not None:
                result = await self.batcher.submit_async(p.target, p.job, rows=len(p.job.prepared), alone=alone)
            else:
                result = self._run(p.target, [p.job])[0]
        except BaseException as exc:
            self._fail(p, exc)
            raise
        answer = self._answer(p, result)
        if p.mirror is not None or self._logging:
            asyncio.get_running_loop().call_soon(self._after, p, result)  # after the response is on its way
        return answer

    def _begin(self, body: Any, transport: str, timings: dict[str, float] | None, correlation_id: str | None) -> _Pending:
        """Validate against the live model and pick the arm; the leases it takes are released by
        :meth:`_answer` / :meth:`_fail` (or here, if it raises)."""
        slot = self.slot
        live, token = slot.acquire()
        if live is None:
            raise Unavailable("no model is active yet")
        leases: list[tuple[Any, object]] = [(slot, token)]
        mirror = None
        try:
            prep = live.prepare(body, timings=timings)
            request = prep.request
            cid = correlation_id if correlation_id is not None else request.correlation_id
            target, tprep, arm = live, prep, "live"
            settings = self.candidate.settings
            if settings is not None and self.candidate.picks(Candidate.routing_key(settings, request.rows[0], cid)):
                cslot = self.candidate.slot
                cand, ctoken = cslot.acquire()
                if cand is not None:
                    try:
                        cprep = cand.prepare(request)
                    except RequestError:
                        cslot.release(ctoken)
                        m = self.candidate.metrics
                        if settings.mode == "ab":
                            m.fallbacks.inc()
                        m.requests.labels("candidate", "invalid").inc()
                    else:
                        if settings.mode == "ab":
                            target, tprep, arm = cand, cprep, "candidate"
                            leases.append((cslot, ctoken))
                        else:
                            mirror = (cslot, ctoken, cand, cprep, settings)
                else:
                    cslot.release(ctoken)
        except BaseException:
            for s, t in leases:
                s.release(t)
            raise
        return _Pending(leases, mirror, target, arm, prep, cid, transport, settings is not None, _Job(tprep, observe=True))

    def _run(self, predictor: Any, jobs: list[_Job]) -> list[tuple[list[float], np.ndarray]]:
        """One batch: infer every job's rows in one call (the batcher's worker, or inline)."""
        t2 = time.perf_counter()
        if len(jobs) == 1:
            prepared = jobs[0].prepared
            cat, num = prepared.cat, prepared.num
        else:
            cat = np.concatenate([j.prepared.cat for j in jobs])
            num = np.concatenate([j.prepared.num for j in jobs])
        y = predictor.infer_arrays(cat, num)
        self._stage_infer.observe(time.perf_counter() - t2)
        drift = self._drift
        if drift is not None and predictor is self._drift_owner:
            try:
                if all(j.observe for j in jobs):
                    drift.observe(Encoded(cat=cat, num=num))
                else:
                    mask = np.repeat([j.observe for j in jobs], [len(j.prepared) for j in jobs])
                    drift.observe(Encoded(cat=cat[mask], num=num[mask]))
            except Exception:  # drift is advisory: never fail a prediction over it
                logger.exception("drift observation failed")
        units = units_list(y)
        if len(jobs) == 1:
            return [(units, y)]
        out, start = [], 0
        for j in jobs:
            n = len(j.prepared)
            out.append((units[start : start + n], y[start : start + n]))
            start += n
        return out

    def _fail(self, p: _Pending, exc: BaseException) -> None:
        p.release()
        p.release_mirror()
        if p.recorded:
            self.candidate.metrics.requests.labels(p.arm, "error").inc()

    def _answer(self, p: _Pending, result: tuple[list[float], np.ndarray]) -> Answer:
        """Release the leases and record the arm's metrics *before* the caller has the answer (a
        client that reads /metrics right after its response sees its own request counted)."""
        p.elapsed = time.perf_counter() - p.started
        p.release()  # the mirror keeps its own lease until the shadow run is done
        if p.recorded:
            try:
                m = self.candidate.metrics
                m.requests.labels(p.arm, "ok").inc()
                m.latency.labels(p.arm).observe(p.elapsed)
                hist = m.prediction.labels(p.arm)
                for v in result[1].tolist():
                    hist.observe(v)
            except Exception:
                logger.exception("recording a prediction failed")
        target = p.target
        fallback = p.job.prepared.fallback
        if fallback is not None:
            try:
                self.metrics.observe_fallback(fallback)
            except Exception:
                logger.exception("recording a cold-start fallback failed")
        return Answer(result[0], target.info, p.arm, target.info_dict, fallback)

    def _after(self, p: _Pending, result: tuple[list[float], np.ndarray]) -> None:
        """What happens once the caller has its answer: the prediction log, the shadow."""
        units, y = result
        try:
            if self.predlog.enabled and self.predlog.sampled():
                self.predlog.write(
                    p.prep.request.instances, units, p.target.info, arm=p.arm, transport=p.transport, request_id=p.cid
                )
        except Exception:
            logger.exception("recording a prediction failed")
        if p.mirror is not None:
            try:
                self._mirror(p, y)
            except Exception:
                logger.exception("mirroring to the candidate failed")

    # -- shadow -----------------------------------------------------------------------------
    def _shadow(self) -> MicroBatcher[Any, _Job]:
        if self._shadow_batcher is None:
            config = self.batching.model_copy(update={"max_queue": self.candidate_config.max_pending})
            self._shadow_batcher = MicroBatcher(
                self._run_shadow, config, metrics=self._batch_metrics.child("shadow"), name="shadow", inline_when_idle=False
            )
        return self._shadow_batcher

    def _run_shadow(self, predictor: Any, jobs: list[_Job]) -> list[tuple[list[float], np.ndarray]]:
        return self._run(predictor, jobs)

    def _mirror(self, p: _Pending, y_live: np.ndarray) -> None:
        cslot, ctoken, cand, cprep, settings = p.mirror
        p.mirror = None  # the lease is now this function's to release
        m = self.candidate.metrics
        try:
            started = time.perf_counter()
            future = self._shadow().submit(cand, _Job(cprep, observe=False), rows=len(cprep))
        except Overloaded:
            m.skipped.inc()
            cslot.release(ctoken)
            return
        except BaseException:
            cslot.release(ctoken)
            raise
        prep, transport, cid = p.prep, p.transport, p.cid

        def done(f: Future[Any]) -> None:
            try:
                units, y = f.result()
            except Exception as exc:
                m.requests.labels("candidate", "error").inc()
                logger.warning("shadow prediction failed: %s", exc)
                return
            finally:
                cslot.release(ctoken)
            m.requests.labels("candidate", "ok").inc()
            m.latency.labels("candidate").observe(time.perf_counter() - started)
            hist = m.prediction.labels("candidate")
            diffs = np.abs(np.asarray(y, np.float64) - np.asarray(y_live, np.float64))
            agree = int(np.count_nonzero(diffs <= settings.tolerance))
            if agree:
                m.shadow_rows.labels("yes").inc(agree)
            if len(diffs) - agree:
                m.shadow_rows.labels("no").inc(len(diffs) - agree)
            if self.predlog.enabled and self.predlog.sampled():
                self.predlog.write(prep.request.instances, units, cand.info, arm="shadow", transport=transport, request_id=cid)
            for v, d in zip(y.tolist(), diffs.tolist(), strict=True):  # last: what a waiter polls on
                hist.observe(v)
                m.abs_diff.observe(d)

        future.add_done_callback(done)

    # -- sales ------------------------------------------------------------------------------
    def report_sales(self, body: Any, *, transport: str = "serial") -> SalesAck:
        """Apply actual sales to the online lag state (:mod:`edge.serving.online_state`); RequestError if invalid."""
        if self.online is None:
            raise Unavailable("online lag state is disabled on this device")
        with self.slot.use() as live:
            if live is None:
                raise Unavailable("no model is active yet")
            ack = self.online.apply(body, live, transport=transport)
        rows = body.sales if hasattr(body, "sales") else body.get("sales", [])
        self.realised.observe(rows)
        sink = self.sales_sink
        if sink is not None:  # accepted rows go to the cloud (telemetry: sequenced, spooled)
            try:
                sink(rows, transport)
            except Exception:  # forwarding must never fail a report the device already applied
                logger.exception("forwarding accepted sales rows failed")
        return ack

    def _perishable(self, item_nbr: int) -> bool:
        live = self.slot.current
        tables = getattr(live, "tables", None)
        if tables is None:
            return False
        i = int(tables.item_index(np.array([item_nbr]))[0])
        return i >= 0 and bool(tables.perishable[i])

    def _offline(self, model: str, version: int) -> float | None:
        """The validation NWRMSLE the live bundle's manifest states, when it is that version."""
        live = self.slot.current
        manifest = getattr(live, "manifest", None)
        if manifest is None or manifest.name != model or manifest.version != version:
            return None
        variant = getattr(live, "variant", None)
        for v in manifest.variants:
            if v.name == variant and "nwrmsle" in v.metrics:
                return float(v.metrics["nwrmsle"])
        return None

    # -- telemetry --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What periodic telemetry reports about serving."""
        out: dict[str, Any] = {}
        drift = self._drift
        if drift is not None:
            values = drift.psi()
            if values:
                worst = max(values, key=values.__getitem__)
                out["drift_max_psi"] = {"feature": worst, "psi": round(values[worst], 4)}
                out["drift_psi"] = {k: round(v, 4) for k, v in values.items()}
        realised = self.realised.snapshot()
        if realised:
            out["realised"] = realised
        cand = self.candidate.current
        settings = self.candidate.settings
        if cand is not None and settings is not None:
            out["candidate"] = {"version": cand.version, "mode": settings.mode, "share": settings.share}
        live = self.slot.current
        if live is not None:
            out["lag_state_end"] = str(live.sales_state.end_date)
        if self.batcher is not None:
            out["batch_queue"] = self.batcher.pending
        return out

    def predict_rows(
        self, live: Any, rows: Sequence[Any], timings: dict[str, float], fallback: list[str | None] | None = None
    ) -> tuple[list[float | None], list[dict[str, Any]]]:
        """Per-row validation (``fallback``, when given, receives each row's cold-start level), then the valid rows (checked in chunks of ``max_batch``) encoded and
        inferred in batches of up to ``batching.max_rows`` rows. Runs in a worker thread: a bulk
        body never blocks the event loop that serves the low-latency endpoint."""
        errors: dict[int, list[ErrorDetail]] = {}
        valid: list[tuple[int, RequestRow]] = []
        for i, raw in enumerate(rows):
            try:
                valid.append((i, _ROW.validate_python(raw)))
            except ValidationError as exc:
                errors[i] = _row_errors(exc, i)
        size = live.manifest.contract.max_batch
        chunks: list[list[tuple[int, Any]]] = [valid[k : k + size] for k in range(0, len(valid), size)]
        jobs: list[tuple[list[int], _Job]] = []
        t0 = time.perf_counter()
        for chunk in chunks:
            while chunk:
                try:
                    prep = live.prepare(PredictRequest(instances=[r for _, r in chunk]))
                except RequestError as exc:
                    bad = {_row_of(d) for d in exc.details} - {None}
                    if not bad:
                        raise
                    for d in exc.details:
                        r = _row_of(d)
                        if r is not None:
                            errors.setdefault(chunk[r][0], []).append(_reindex(d, r, chunk[r][0]))
                    chunk = [c for k, c in enumerate(chunk) if k not in bad]
                    continue
                jobs.append(([i for i, _ in chunk], _Job(prep, observe=True)))
                break
        timings["validate"] = time.perf_counter() - t0
        predictions: list[float | None] = [None] * len(rows)
        if fallback is not None:
            fallback[:] = [None] * len(rows)
        limit = max(self.batching.max_rows, size)
        start = 0
        while start < len(jobs):
            group, n = [], 0
            while start < len(jobs) and (not group or n + len(jobs[start][1].prepared) <= limit):
                group.append(jobs[start])
                n += len(jobs[start][1].prepared)
                start += 1
            for (indices, job), (units, _y) in zip(group, self._run(live, [j for _, j in group]), strict=True):
                for i, v in zip(indices, units, strict=True):
                    predictions[i] = v
                levels = job.prepared.fallback
                if levels is not None:
                    self.metrics.observe_fallback(levels)
                    if fallback is not None:
                        for i, level in zip(indices, levels, strict=True):
                            fallback[i] = level
        flat = [{"index": i, **d} for i in sorted(errors) for d in errors[i]]
        return predictions, flat


def _row_errors(exc: ValidationError, index: int) -> list[ErrorDetail]:
    """One row's schema errors, named as in the whole body (``instances[<index>].<field>``)."""
    from edge.serving.errors import _convert

    return [_convert({**e, "loc": ("instances", index, *e.get("loc", ()))}) for e in exc.errors(include_url=False)]


def _row_of(d: ErrorDetail) -> int | None:
    field = d["field"]
    if not field.startswith("instances["):
        return None
    try:
        return int(field[len("instances[") : field.index("]")])
    except ValueError:
        return None


def _reindex(d: ErrorDetail, old: int, new: int) -> ErrorDetail:
    """The same problem, naming row ``new`` of the whole body instead of row ``old`` of a chunk."""
    prefix_old, prefix_new = f"instances[{old}]", f"instances[{new}]"
    field = prefix_new + d["field"][len(prefix_old) :] if d["field"].startswith(prefix_old) else d["field"]
    text = d["message"].split(": ", 1)[-1].rsplit(" (rule ", 1)[0]
    return detail(field, d["rule"], text)

