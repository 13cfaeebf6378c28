"""The prediction path every transport shares: validate → (A/B) → micro-batch → answer → record.

HTTP (:mod:`edge.serving.http`), MQTT (:mod:`edge.serving.mqtt`) and the serial bridge all go through one
:class:`Serving`, so they validate alike, batch together, and feed the same metrics, drift
monitor, prediction log, shadow comparison and A/B split::

    serving = Serving.for_agent(agent)          # the agent does this
    future = serving.submit(body, transport="mqtt")          # RequestError / Unavailable / Overloaded now,
    answer = future.result()                                  # Answer(predictions, model, arm) later
    serving.predict(body, transport="serial")                 # the same, blocking
    serving.report_sales({"sales": [...]}, transport="serial")  # online lag state (edge.serving.online_state)

Each request is validated on the caller's thread against the live model (errors are its own, in
the HTTP error shape). A/B may route it to the candidate. Its rows then join a micro-batch
(:mod:`edge.serving.batching`) that one worker encodes and infers in one call; the stage histograms record
``validate`` per request and ``encode``/``infer`` per batch. The served rows' model inputs feed the
drift monitor (:mod:`edge.monitoring.drift`); after the answer is handed back, a sampled share is logged
(:mod:`edge.monitoring.predlog`) and, in shadow mode, mirrored to the candidate (:mod:`edge.serving.shadow`).

HTTP endpoints it adds (:meth:`Serving.routes`):

- ``POST /v1/predict:batch`` — the bulk endpoint a shop's nightly job wants: up to
  ``batching.endpoint_max_rows`` rows (10,000) in one body, beyond the per-request ``max_batch``;
  rows are validated one by one and a bad row does not sink the rest::

      → 200 {"predictions": [4.2, null, …], "errors": [{"index": 1, "field": "instances[1].item_nbr",
             "rule": "known_item", "message": "…"}], "model": {…}}
      → 422 when no row is valid, 413 beyond the row limit, 400 for a body that is not JSON

  ``POST /v1/predict`` stays the low-latency endpoint (≤ ``max_batch`` rows, all or nothing).
- ``POST /v1/sales`` — actual sales for the online lag state: 200 ``SalesAck`` or the error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.serving.batching import BatchingConfig, BatchMetrics, MicroBatcher, Overloaded
from edge.monitoring.drift import DriftCollector, DriftConfig, DriftMonitor
from edge.serving.errors import ErrorDetail, InferenceError, RequestError, detail
from edge.serving.online_state import OnlineState, OnlineStateConfig
from edge.monitoring.predlog import PredictionLog, PredLogConfig
from edge.monitoring.realised import RealisedAccuracy
from edge.serving.shadow import Candidate, CandidateConfig, CandidateSettings
from models.contract import PredictRequest, RequestRow
from models.messages import ActiveModel
from models.serving import SalesAck

__all__ = ["Serving", "Answer", "Unavailable"]

logger = logging.getLogger(__name__)

_ROW = TypeAdapter(RequestRow)


class Unavailable(RuntimeError):
    """No model is active yet (HTTP 503 ``no_model``)."""


@dataclasses.dataclass(frozen=True)
class Answer:
    predictions: list[float]
    model: ActiveModel
    arm: str = "live"


@dataclasses.dataclass(frozen=True)
class _Job:
    prepared: Any  # edge.serving.predictor.Prepared
    observe: bool  # feed the drift monitor with these rows


@dataclasses.dataclass
class _Pending:
    """One request between validation and its answer."""

    stack: contextlib.ExitStack
    mirror: tuple[Any, contextlib.ExitStack, CandidateSettings] | None
    target: Any
    arm: str
    prep: Any
    cid: str | None
    transport: str
    started: float
    recorded: bool
    job: _Job
    elapsed: float = 0.0

    def release(self) -> None:
        self.stack.close()
        if self.mirror is not None:
            self.mirror[1].close()


class _Call:
    """What ``Serving.use()`` yields to :mod:`edge.serving.http`: the live predictor, predicting through the pipeline."""

    __slots__ = ("_serving", "_live", "info")

    def __init__(self, serving: Serving, live: Any) -> None:
        self._serving = serving
        self._live = live
        self.info = live.info  # the model that answered, once predict returned (A/B may pick the candidate)

    def predict(self, body: Any, *, timings: dict[str, float] | None = None) -> list[float]:
        answer = self._serving.submit(body, transport="http", timings=timings, live=self._live).result()
        self.info = answer.model
        return answer.predictions

    async def predict_async(self, body: Any, *, timings: dict[str, float] | None = None) -> list[float]:
        answer = await self._serving.predict_async(body, transport="http", timings=timings, live=self._live)
        self.info = answer.model
        return answer.predictions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live, name)


class Serving:
    """The shared prediction path, its batchers, candidate, online state, drift and prediction log."""

    def __init__(
        self,
        slot: Any,
        metrics: Any,
        state_dir: str | Path,
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
        state_dir = Path(state_dir)
        self.online = OnlineState(state_dir / "online" / "sales_state.npz", online_state, registry) if online_state.enabled else None
        self.predlog = PredictionLog(state_dir / "predlog", predlog or PredLogConfig(), registry)
        # realised accuracy: reported sales joined to logged forecasts (edge.monitoring.realised)
        self.realised = RealisedAccuracy(
            state_dir / "predlog", state_dir / "realised.json", registry, perishable=self._perishable, offline=self._offline
        )
        #: ``sink(rows, transport)`` gets every accepted report's rows (the agent wires telemetry's actuals)
        self.sales_sink: Callable[[list[Any], str], Any] | None = None
        self._drift: DriftMonitor | None = None
        self._drift_owner: Any = None
        if self.drift_config.enabled:
            DriftCollector(lambda: self._drift, registry)

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

    # -- the slot protocol edge.serving.http uses -----------------------------------------------------
    @property
    def current(self) -> Any:
        return self.slot.current

    @contextlib.contextmanager
    def use(self) -> Iterator[_Call | None]:
        with self.slot.use() as live:
            yield None if live is None else _Call(self, live)

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
        live: Any = None,
        correlation_id: str | None = None,
    ) -> Future[Answer]:
        """Validate now (raising :class:`RequestError`, :class:`Unavailable`, :class:`Overloaded`);
        the returned future holds the :class:`Answer` (or an :class:`InferenceError`). Any thread."""
        p = self._begin(body, transport, timings, live, correlation_id)
        try:
            inner = self._dispatch(self.batcher, p.target, p.job)
        except BaseException:
            p.release()
            raise
        out: Future[Answer] = Future()

        def settle(f: Future[Any]) -> None:
            try:
                result = f.result()
            except BaseException as exc:
                self._fail(p, exc)
                out.set_exception(exc)
                return
            answer = self._answer(p, result)
            out.set_result(answer)
            self._after(p, result, answer)

        inner.add_done_callback(settle)
        return out

    async def predict_async(
        self,
        body: Any,
        *,
        transport: str = "http",
        timings: dict[str, float] | None = None,
        live: Any = None,
        correlation_id: str | None = None,
    ) -> Answer:
        """:meth:`submit` for an asyncio event loop: concurrent requests of the loop batch on the loop."""
        p = self._begin(body, transport, timings, live, correlation_id)
        try:
            if self.batcher is not None:
                result = await self.batcher.submit_async(p.target, p.job, rows=len(p.job.prepared))
            else:
                result = self._run(p.target, [p.job])[0]
        except BaseException as exc:
            self._fail(p, exc)
            raise
        answer = self._answer(p, result)
        asyncio.get_running_loop().call_soon(self._after, p, result, answer)  # after the response is on its way
        return answer

    def _begin(
        self, body: Any, transport: str, timings: dict[str, float] | None, live: Any, correlation_id: str | None
    ) -> _Pending:
        """Validate against the live model and pick the arm; the leases it takes are released by
        :meth:`_answer` / :meth:`_fail` (or here, if it raises)."""
        stack = contextlib.ExitStack()  # leases held until the answer is ready
        mirror: tuple[Any, contextlib.ExitStack, CandidateSettings] | None = None
        try:
            if live is None:
                live = stack.enter_context(self.slot.use())
                if live is None:
                    raise Unavailable("no model is active yet")
            prep = live.prepare(body, timings=timings)
            cid = correlation_id if correlation_id is not None else prep.request.correlation_id
            target, tprep, arm = live, prep, "live"
            settings = self.candidate.settings
            if settings is not None and self.candidate.picks(
                Candidate.routing_key(settings, prep.request.instances[0], cid)
            ):
                cand_stack = contextlib.ExitStack()
                cand = cand_stack.enter_context(self.candidate.slot.use())
                if cand is None:
                    cand_stack.close()
                elif settings.mode == "ab":
                    try:
                        tprep = cand.prepare(prep.request)
                        target, arm = cand, "candidate"
                        stack.enter_context(cand_stack)
                    except RequestError:
                        self.candidate.metrics.fallbacks.inc()
                        self.candidate.metrics.requests.labels("candidate", "invalid").inc()
                        cand_stack.close()
                else:
                    mirror = (cand, cand_stack, settings)
        except BaseException:
            stack.close()
            if mirror is not None:
                mirror[1].close()
            raise
        return _Pending(
            stack=stack,
            mirror=mirror,
            target=target,
            arm=arm,
            prep=prep,
            cid=cid,
            transport=transport,
            started=time.perf_counter(),
            recorded=settings is not None,
            job=_Job(tprep, observe=True),
        )

    def _dispatch(self, batcher: MicroBatcher[Any, _Job] | None, predictor: Any, job: _Job) -> Future[Any]:
        if batcher is not None:
            return batcher.submit(predictor, job, rows=len(job.prepared))
        future: Future[Any] = Future()
        try:
            future.set_result(self._run(predictor, [job])[0])
        except Exception as exc:
            future.set_exception(exc)
        return future

    def _run(self, predictor: Any, jobs: list[_Job]) -> list[tuple[list[float], np.ndarray]]:
        """One batch: encode and infer every job's rows in one call (the batcher's worker)."""
        from edge.serving.predictor import to_units

        t1 = time.perf_counter()
        enc = predictor.encode_prepared([j.prepared for j in jobs])
        t2 = time.perf_counter()
        y = predictor.infer_encoded(enc)
        t3 = time.perf_counter()
        self.metrics.stage_duration.labels("encode").observe(t2 - t1)
        self.metrics.stage_duration.labels("infer").observe(t3 - t2)
        drift = self._drift
        if drift is not None and predictor is self._drift_owner:
            try:
                mask = np.repeat([j.observe for j in jobs], [len(j.prepared) for j in jobs])
                drift.observe(enc if mask.all() else type(enc)(cat=enc.cat[mask], num=enc.num[mask]))
            except Exception:  # drift is advisory: never fail a prediction over it
                logger.exception("drift observation failed")
        units = to_units(y)
        out, start = [], 0
        for j in jobs:
            n = len(j.prepared)
            out.append((units[start : start + n].tolist(), y[start : start + n]))
            start += n
        return out

    def _fail(self, p: _Pending, exc: BaseException) -> None:
        p.release()
        if p.recorded:
            self.candidate.metrics.requests.labels(p.arm, "error").inc()

    def _answer(self, p: _Pending, result: tuple[list[float], np.ndarray]) -> Answer:
        p.elapsed = time.perf_counter() - p.started
        p.stack.close()  # the mirror keeps its own lease until the shadow run is done
        return Answer(result[0], p.target.info, p.arm)

    def _after(self, p: _Pending, result: tuple[list[float], np.ndarray], answer: Answer) -> None:
        """What happens once the caller has its answer: arm metrics, the prediction log, the shadow."""
        units, y = result
        try:
            if p.recorded:
                m = self.candidate.metrics
                m.requests.labels(p.arm, "ok").inc()
                m.latency.labels(p.arm).observe(p.elapsed)
                hist = m.prediction.labels(p.arm)
                for v in y.tolist():
                    hist.observe(v)
            if self.predlog.enabled and self.predlog.sampled():
                self.predlog.write(
                    p.prep.request.instances, units, answer.model, arm=p.arm, transport=p.transport, request_id=p.cid
                )
        except Exception:
            logger.exception("recording a prediction failed")
        if p.mirror is not None:
            try:
                self._mirror(p.mirror, p.prep, y, p.cid, p.transport)
            except Exception:
                logger.exception("mirroring to the candidate failed")

    # -- shadow -----------------------------------------------------------------------------
    def _shadow(self) -> MicroBatcher[Any, _Job]:
        if self._shadow_batcher is None:
            config = self.batching.model_copy(update={"max_queue": self.candidate_config.max_pending})
            self._shadow_batcher = MicroBatcher(
                self._run, config, metrics=self._batch_metrics.child("shadow"), name="shadow", inline_when_idle=False
            )
        return self._shadow_batcher

    def _mirror(
        self,
        mirror: tuple[Any, contextlib.ExitStack, CandidateSettings],
        prep: Any,
        y_live: np.ndarray,
        cid: str | None,
        transport: str,
    ) -> None:
        cand, cand_stack, settings = mirror
        m = self.candidate.metrics
        try:
            cprep = cand.prepare(prep.request)
            started = time.perf_counter()
            future = self._shadow().submit(cand, _Job(cprep, observe=False), rows=len(cprep))
        except RequestError:
            m.requests.labels("candidate", "invalid").inc()
            cand_stack.close()
            return
        except Overloaded:
            m.skipped.inc()
            cand_stack.close()
            return
        except BaseException:
            cand_stack.close()
            raise

        def done(f: Future[Any]) -> None:
            try:
                units, y = f.result()
            except Exception as exc:
                m.requests.labels("candidate", "error").inc()
                logger.warning("shadow prediction failed: %s", exc)
                return
            finally:
                cand_stack.close()
            m.requests.labels("candidate", "ok").inc()
            m.latency.labels("candidate").observe(time.perf_counter() - started)
            hist = m.prediction.labels("candidate")
            diffs = np.abs(np.asarray(y, np.float64) - np.asarray(y_live, np.float64))
            for v, d in zip(y.tolist(), diffs.tolist(), strict=True):
                hist.observe(v)
                m.abs_diff.observe(d)
            agree = int(np.count_nonzero(diffs <= settings.tolerance))
            if agree:
                m.shadow_rows.labels("yes").inc(agree)
            if len(diffs) - agree:
                m.shadow_rows.labels("no").inc(len(diffs) - agree)
            if self.predlog.enabled and self.predlog.sampled():
                self.predlog.write(prep.request.instances, units, cand.info, arm="shadow", transport=transport, request_id=cid)

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

    # -- HTTP -------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """``POST /v1/predict:batch`` and (with online state on) ``POST /v1/sales``."""
        out: list[BaseRoute] = [Route("/v1/predict:batch", self._http_predict_batch, methods=["POST"])]
        if self.online is not None:
            out.append(Route("/v1/sales", self._http_sales, methods=["POST"]))
        return out

    async def _body(self, request: Request, what: str) -> Mapping[str, Any]:
        from edge.serving.http import _read_body

        raw = await _read_body(request, self.max_body_bytes)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RequestError([detail("body", "json", f"is not valid JSON: {exc}")], status=400) from None
        if not isinstance(body, dict):
            raise RequestError([detail("body", "object_type", f'must be a JSON object {{"{what}": [...]}}')])
        return body

    async def _http_sales(self, request: Request) -> Response:
        try:
            body = await self._body(request, "sales")
            ack = self.report_sales(body, transport="http")
            return JSONResponse(ack.model_dump(mode="json"))
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except Unavailable as exc:
            return _error("no_model", str(exc), 503)
        except Exception:
            logger.exception("sales report failed")
            return _error("internal", "internal error", 500)

    async def _http_predict_batch(self, request: Request) -> Response:
        started = time.perf_counter()
        outcome, rows_ok, timings = "error", 0, {}
        try:
            body = await self._body(request, "instances")
            rows = body.get("instances")
            unknown = sorted(set(body) - {"instances", "correlation_id"})
            if unknown:
                raise RequestError([detail(k, "extra_field", "is not a field of the contract") for k in unknown])
            if not isinstance(rows, list) or not rows:
                raise RequestError([detail("instances", "list_type", "must be a non-empty list of rows")])
            limit = self.batching.endpoint_max_rows
            if len(rows) > limit:
                raise RequestError(
                    [detail("instances", "max_rows", f"has {len(rows)} rows, at most {limit} are allowed")], status=413
                )
            with self.slot.use() as live:
                if live is None:
                    outcome = "unavailable"
                    return _error("no_model", "no model is active yet", 503, **{"Retry-After": "5"})
                predictions, errors = await asyncio.to_thread(self._predict_rows, live, rows, timings)
                model = live.info.model_dump()
            rows_ok = sum(p is not None for p in predictions)
            if not rows_ok:
                outcome = "invalid"
                return JSONResponse(
                    RequestError([{k: e[k] for k in ("field", "rule", "message")} for e in errors]).to_json(),  # type: ignore[misc]
                    status_code=422,
                )
            outcome = "ok"
            return JSONResponse({"predictions": predictions, "errors": errors, "model": model})
        except RequestError as exc:
            outcome = "invalid"
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except (Overloaded, Unavailable) as exc:
            outcome = "unavailable"
            return _error("overloaded", str(exc), 503, **{"Retry-After": "1"})
        except InferenceError as exc:
            logger.error("inference failed: %s", exc)
            return _error("inference_failed", str(exc), 500)
        except Exception:
            logger.exception("batch predict failed")
            return _error("internal", "internal error", 500)
        finally:
            self.metrics.observe_request("http", outcome, time.perf_counter() - started, rows=rows_ok, timings=timings)

    def _predict_rows(
        self, live: Any, rows: Sequence[Any], timings: dict[str, float]
    ) -> tuple[list[float | None], list[dict[str, Any]]]:
        """Per-row validation, then the valid rows (checked in chunks of ``max_batch``) encoded and
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
        limit = max(self.batching.max_rows, size)
        start = 0
        while start < len(jobs):
            group, n = [], 0
            while start < len(jobs) and (not group or n + len(jobs[start][1].prepared) <= limit):
                group.append(jobs[start])
                n += len(jobs[start][1].prepared)
                start += 1
            for (indices, _job), (units, _y) in zip(group, self._run(live, [j for _, j in group]), strict=True):
                for i, v in zip(indices, units, strict=True):
                    predictions[i] = v
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


def _error(code: str, message: str, status: int, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers or None)
