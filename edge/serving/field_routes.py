"""Routes for field validation: what the validation app (:mod:`edge.validate_app`) asks the agent.

All read-only except feedback; all computed on the model the agent serves right now::

    GET  /v1/catalogue              → {"stores": [{store_nbr, city, state, type, cluster}],
                                       "items": [{item_nbr, family, class, perishable}],
                                       "pairs": [[store_nbr, item_nbr], ...], "state_end_date",
                                       "horizon_days", "model": {...}, "candidate": {...} | null,
                                       "features": [contract names]}
    GET  /v1/history?store_nbr=1&item_nbr=103520&days=28
                                    → {"dates": [...], "unit_sales": [...], "end_date"} (the lag state)
    POST /v1/explain  {"instance": {date, store_nbr, item_nbr, onpromotion}}
                                    → {"prediction", "baseline_prediction", "contributions": [{feature,
                                       value, baseline, contribution}], "method", "permutations", "model"}
    POST /v1/predict:candidate  {"instances": [...]}  → the shadow / A-B candidate's answer, with its
                                      "mode" and "share" (404 no_candidate if none)
    POST /v1/predict:live  {"instances": [...]}  → the live model's answer, never routed to an A/B arm
                                      (so the app can show both models side by side)
    POST /v1/feedback  FeedbackIn   → FeedbackAck (stored in SQLite, sent over MQTT, actuals → lag state);
                                      503 {"error": {"code": "disk_readonly" | "disk_full" | "disk_io"}}
                                      when the device cannot commit it (nothing taken: send it again)

The explanation is permutation-sampled Shapley values on the served variant: the 20 contract
features (8 ``cat`` + 12 ``num`` columns) are switched one by one from a *baseline input* (every
categorical index 0 = "unknown", every numeric input 0: no promotion, no holiday, no sales history)
to the row's values, in ``permutations`` fixed-seed orders (half of them the reverse of the other
half); each feature's contribution is the mean change of the forecast (in units) when it is
switched. Along each order the changes telescope, so the contributions add up exactly to
``prediction - baseline_prediction`` (up to float rounding). All ``permutations × 21`` inputs run as
one batch on the live runtime.

Errors use the agent's shape (``{"error": {"code", "message", "details": [{field, rule, message}]}}``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.monitoring.feedback import FeedbackNotStored, FeedbackStore
from edge.serving.errors import RequestError, detail, from_validation_error
from models.contract import CAT_FEATURES, LAG_WINDOW_DAYS, NUM_FEATURES
from models.features import Encoded, target_inverse
from models.feedback import FeedbackAck, FeedbackIn

__all__ = ["FieldApi", "explain"]

logger = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = (*CAT_FEATURES, *NUM_FEATURES)
_MAX_BODY = 64 << 10
_NOT_STORED = {
    reason: f"feedback NOT stored: the device's disk is {what} ({reason}); nothing was recorded or sent, "
    "the lag state is unchanged: send it again once the disk is fixed"
    for reason, what in (("disk_readonly", "read-only"), ("disk_full", "full"), ("disk_io", "failing (I/O error)"))
}


def explain(predictor: Any, row: Any, *, permutations: int = 16, seed: int = 0) -> dict[str, Any]:
    """Shapley-sampling contributions of ``row``'s features on ``predictor`` (see the module doc).

    >>> # e = explain(live, {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520})
    >>> # sum(c["contribution"] for c in e["contributions"]) ≈ e["prediction"] - e["baseline_prediction"]
    """
    prep = predictor.prepare({"instances": [row]})
    x = predictor.encode_prepared([prep])
    nc, nn = x.cat.shape[1], x.num.shape[1]
    f = nc + nn
    base_cat = np.zeros((1, nc), np.int32)
    base_num = np.zeros((1, nn), np.float32)
    rng = np.random.default_rng(seed)
    half = max(permutations // 2, 1)
    orders = [rng.permutation(f) for _ in range(half)]
    orders += [o[::-1] for o in orders]
    cat = np.repeat(base_cat, len(orders) * (f + 1), axis=0)
    num = np.repeat(base_num, len(orders) * (f + 1), axis=0)
    for k, order in enumerate(orders):
        for step in range(1, f + 1):
            r = k * (f + 1) + step
            cat[r], num[r] = cat[r - 1], num[r - 1]
            j = int(order[step - 1])
            if j < nc:
                cat[r, j] = x.cat[0, j]
            else:
                num[r, j - nc] = x.num[0, j - nc]
    y = target_inverse(predictor.infer_encoded(Encoded(cat=cat, num=num))).reshape(len(orders), f + 1)
    phi = np.zeros(f, np.float64)
    for k, order in enumerate(orders):
        phi[order] += np.diff(y[k])
    phi /= len(orders)
    values = [float(v) for v in x.cat[0]] + [float(v) for v in x.num[0]]
    baseline = [0.0] * f
    return {
        "prediction": float(y[0, -1]),
        "baseline_prediction": float(y[0, 0]),
        "contributions": [
            {"feature": FEATURES[j], "value": values[j], "baseline": baseline[j], "contribution": float(phi[j])}
            for j in range(f)
        ],
        "method": "shapley_permutation_sampling",
        "baseline": "all categorical inputs 0 (unknown), all numeric inputs 0",
        "permutations": len(orders),
        "model": predictor.info.model_dump(),
    }


def _error(code: str, message: str, status: int, details: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


def _invalid(field: str, rule: str, text: str, status: int = 422) -> JSONResponse:
    return JSONResponse(RequestError([detail(field, rule, text)], status=status).to_json(), status_code=status)


class _AgentLink:
    """The agent's MQTT link as the feedback sender sees it (the agent connects it later, or never)."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent

    @property
    def connected(self) -> bool:
        link = self._agent.mqtt
        return link is not None and link.connected

    @property
    def client(self) -> Any:
        return self._agent.mqtt.client


class FieldApi:
    """The field-validation routes of one agent, and its feedback store.

    ``FieldApi.for_agent(agent)`` is what :class:`edge.agent.Agent` mounts; :meth:`routes` go to
    :func:`edge.serving.http.create_app`; :meth:`close` on stop."""

    def __init__(self, slot: Any, serving: Any, feedback: FeedbackStore, *, device_id: str) -> None:
        self.slot = slot
        self.serving = serving
        self.feedback = feedback
        self.device_id = device_id

    @classmethod
    def for_agent(cls, agent: Any) -> FieldApi:
        c = agent.config
        store = FeedbackStore(c.state_dir / "feedback", device_id=c.device_id, fleet=c.fleet, telemetry=c.telemetry)
        if c.broker is not None:
            store.attach(_AgentLink(agent))
        return cls(agent.slot, agent.serving, store, device_id=c.device_id)

    def close(self) -> None:
        self.feedback.close()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/catalogue", self._catalogue, methods=["GET"]),
            Route("/v1/history", self._history, methods=["GET"]),
            Route("/v1/explain", self._explain, methods=["POST"]),
            Route("/v1/predict:candidate", self._candidate, methods=["POST"]),
            Route("/v1/predict:live", self._live, methods=["POST"]),
            Route("/v1/feedback", self._feedback, methods=["POST"]),
        ]

    # -- handlers ---------------------------------------------------------------------------
    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            raise RequestError([detail("body", "max_body_bytes", f"is larger than {_MAX_BODY} bytes")], status=413)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RequestError([detail("body", "json", f"is not valid JSON: {exc}")], status=400) from None
        if not isinstance(body, dict):
            raise RequestError([detail("body", "object_type", "must be a JSON object")])
        return body

    async def _catalogue(self, _request: Request) -> Response:
        with self.slot.use() as live:
            if live is None:
                return _error("no_model", "no model is active yet", 503)
            t = live.tables
            v = t.vocab

            def name(kind: str, idx: Any) -> str:
                i = int(idx)
                return v[kind][i - 1] if 0 < i <= len(v[kind]) else ""

            stores = [
                {"store_nbr": int(s), "city": name("city", t.city[k]), "state": name("state", t.state[k]),
                 "type": name("store_type", t.store_type[k]), "cluster": name("cluster", t.cluster[k])}
                for k, s in enumerate(t.store_nbr.tolist())
            ]  # fmt: skip
            items = [
                {"item_nbr": int(i), "family": name("family", t.family[k]), "class": name("item_class", t.item_class[k]),
                 "perishable": int(t.perishable[k])}
                for k, i in enumerate(t.item_nbr.tolist())
            ]  # fmt: skip
            state = live.sales_state
            pairs = [[int(s), int(i)] for s, i in zip(state.store_nbr.tolist(), state.item_nbr.tolist(), strict=True)]
            cand = getattr(self.serving, "candidate", None)
            cand_model = cand.current.info.model_dump() if cand is not None and cand.current is not None else None
            settings = cand.settings if cand is not None else None
            return JSONResponse(
                {
                    "device_id": self.device_id,
                    "model": live.info.model_dump(),
                    "candidate": None if cand_model is None else {**cand_model, "mode": settings.mode if settings else None},
                    "state_end_date": str(state.end_date),
                    "horizon_days": live.manifest.contract.horizon_days,
                    "features": list(FEATURES),
                    "stores": stores,
                    "items": items,
                    "pairs": pairs,
                }
            )

    async def _history(self, request: Request) -> Response:
        q = request.query_params
        parsed: dict[str, int] = {}
        for key, default in (("store_nbr", None), ("item_nbr", None), ("days", 28)):
            raw = q.get(key)
            if raw is None:
                if default is None:
                    return _invalid(key, "required", "is required")
                parsed[key] = default
                continue
            if not raw.isdigit() or int(raw) < 1:
                return _invalid(key, "positive_int", f"must be a positive whole number, got {raw!r}")
            parsed[key] = int(raw)
        days = min(parsed["days"], LAG_WINDOW_DAYS)
        with self.slot.use() as live:
            if live is None:
                return _error("no_model", "no model is active yet", 503)
            state = live.sales_state
            s, i = parsed["store_nbr"], parsed["item_nbr"]
            if live.tables.store_index(np.array([s]))[0] < 0:
                return _invalid("store_nbr", "known_store", f"unknown store {s}")
            if live.tables.item_index(np.array([i]))[0] < 0:
                return _invalid("item_nbr", "known_item", f"unknown item {i}")
            row = int(state.pair_index(np.array([s]), np.array([i]))[0])
            if row < 0:
                return _invalid("item_nbr", "known_pair", f"no sales history for store {s} and item {i}")
            window = state.window[row, -days:]
            end = np.datetime64(state.end_date, "D")
        dates = [str(end - np.timedelta64(days - 1 - k, "D")) for k in range(days)]
        units = np.round(target_inverse(window), 4).tolist()
        return JSONResponse({"store_nbr": s, "item_nbr": i, "end_date": str(end), "dates": dates, "unit_sales": units})

    async def _explain(self, request: Request) -> Response:
        try:
            body = await self._json(request)
            unknown = sorted(set(body) - {"instance", "permutations"})
            if unknown:
                raise RequestError([detail(k, "extra_field", "is not a field of an explain request") for k in unknown])
            row = body.get("instance")
            if not isinstance(row, dict):
                raise RequestError([detail("instance", "object_type", "must be one request row object")])
            perms = body.get("permutations", 16)
            if not isinstance(perms, int) or isinstance(perms, bool) or not 2 <= perms <= 64:
                raise RequestError([detail("permutations", "range", "must be a whole number from 2 to 64")])
            with self.slot.use() as live:
                if live is None:
                    return _error("no_model", "no model is active yet", 503)
                try:
                    out = explain(live, row, permutations=perms)
                except RequestError as exc:  # name the row's fields as the app shows them (instance.<field>)
                    for d in exc.details:
                        for key in ("field", "message"):
                            d[key] = d[key].replace("instances[0]", "instance")  # type: ignore[literal-required]
                    raise
            return JSONResponse(out)
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except Exception:
            logger.exception("explain failed")
            return _error("internal", "internal error", 500)

    async def _candidate(self, request: Request) -> Response:
        try:
            body = await self._json(request)
            cand = getattr(self.serving, "candidate", None)
            if cand is None:
                return _error("no_candidate", "no candidate model runs on this device", 404)
            with cand.slot.use() as predictor:
                if predictor is None:
                    return _error("no_candidate", "no candidate model runs on this device", 404)
                predictions = predictor.predict(body)
                settings = cand.settings
                return JSONResponse({"predictions": predictions, "model": predictor.info.model_dump(),
                                     "mode": settings.mode if settings else None,
                                     "share": settings.share if settings else None})  # fmt: skip
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except Exception:
            logger.exception("candidate predict failed")
            return _error("internal", "internal error", 500)

    async def _live(self, request: Request) -> Response:
        try:
            body = await self._json(request)
            with self.slot.use() as live:
                if live is None:
                    return _error("no_model", "no model is active yet", 503)
                return JSONResponse({"predictions": live.predict(body), "model": live.info.model_dump()})
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except Exception:
            logger.exception("live predict failed")
            return _error("internal", "internal error", 500)

    async def _feedback(self, request: Request) -> Response:
        try:
            body = await self._json(request)
            try:
                feedback = FeedbackIn.model_validate(body)
            except ValidationError as exc:
                raise from_validation_error(exc) from None
            try:
                record = self.feedback.add(feedback)  # durable first; the lag state is advisory
            except FeedbackNotStored as exc:  # never acknowledge what a restart could lose
                return JSONResponse(
                    {"error": {"code": exc.reason, "message": _NOT_STORED[exc.reason], "details": [
                        {"field": "disk", "rule": "writable", "message": f"disk: is {exc.reason.removeprefix('disk_')} "
                         f"({exc.reason}): feedback not stored"}]}},
                    status_code=503, headers={"Retry-After": "30"},
                )  # fmt: skip
            lag = "not_applicable"
            if feedback.actual_units is not None and getattr(self.serving, "online", None) is not None:
                r = feedback.request
                sales = {"sales": [{"date": r.date.isoformat(), "store_nbr": r.store_nbr, "item_nbr": r.item_nbr,
                                    "unit_sales": float(feedback.actual_units)}]}  # fmt: skip
                try:
                    self.serving.report_sales(sales, transport="http")  # the sales-report path
                    lag = "updated"
                except RequestError as exc:
                    lag = "; ".join(d["message"] for d in exc.details)
                except Exception as exc:  # no model, online state off
                    lag = str(exc)
            return JSONResponse(FeedbackAck(id=record.id, lag_state=lag).model_dump())
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except Exception:
            logger.exception("feedback failed")
            return _error("internal", "internal error", 500)
