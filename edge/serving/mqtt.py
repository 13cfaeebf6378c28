"""MQTT request/response for predictions and sales, and commands on ``…/set``.

MQTT 3.1.1, so the correlation id (and an optional expiry) travel in the payload; topics come from
:mod:`models.topics`, payloads from :mod:`models.contract` and :mod:`models.serving`::

    → edgeship/<fleet>/<device>/request/predict   {"correlation_id": "r1", "instances": [...],
                                                    "expires_at": "2017-08-16T10:00:00Z"}   (expiry optional)
    ← edgeship/<fleet>/<device>/response/predict  {"correlation_id": "r1", "predictions": [4.2], "model": {...}}
                                                  {"correlation_id": "r1", "status": 422, "error": {"code":
                                                   "invalid_request", "message", "details": [...]}}
    → …/request/sales     {"correlation_id": "s1", "sales": [...]}  ← …/response/sales  SalesAck | ErrorResponse
    → …/set               {"command": "candidate", "signed": <signed CandidateOrder>}  → a "candidate" event
                          (unsigned, forged, expired or for a rolled-back version: refused with a reason)

Requests are validated exactly as over HTTP (same rules, same error shape, plus the HTTP status
the error would have had). Paho's network thread parses and validates; the rows join the shared
micro-batches (:mod:`edge.serving.pipeline`) and the answer is published from the batch worker, so MQTT
requests that arrive together are inferred together. A payload that is not JSON, not an object,
too large (``max_body_bytes``), or expired gets an error response (correlation id echoed when it
could be read), and is counted; nothing a client sends stops the agent.

Commands are dispatched by name (``register_command``) so other parts can add theirs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge.serving.errors import ErrorReply, RequestError, detail, error_reply
from edge.serving.pipeline import Serving
from edge.serving.request import dumps, load_object
from edge.serving.shadow import CandidateSettings
from models import topics
from models.serving import CandidateCommand
from models.targets import TargetsError

__all__ = ["MqttServing"]

logger = logging.getLogger(__name__)


def _correlation_id(body: Any) -> str | None:
    cid = body.get("correlation_id") if isinstance(body, dict) else None
    return cid if isinstance(cid, str) and len(cid) <= 128 else None


class MqttServing:
    """Subscribes ``request/predict``, ``request/sales`` and ``set`` on a :class:`edge.delivery.link.MqttLink`."""

    def __init__(
        self,
        serving: Serving,
        link: Any,
        *,
        max_payload_bytes: int = 1 << 20,
        authorize: Callable[[CandidateCommand], CandidateCommand] | None = None,
    ) -> None:
        """``authorize`` checks a candidate command's signed order (edge.delivery.commands) and returns
        the command to act on, or raises :class:`models.targets.TargetsError`; without it every
        candidate command is refused (``unsigned``)."""
        self.serving = serving
        self.authorize = authorize
        self._loading = threading.Lock()  # one candidate load at a time
        self.link = link
        self.metrics = serving.metrics
        self.max_payload_bytes = max_payload_bytes
        fleet, device = link.config.fleet, link.config.device_id
        self.topic_predict = topics.request(fleet, device, "predict")
        self.topic_sales = topics.request(fleet, device, "sales")
        self.topic_set = topics.command(fleet, device)
        self._response_predict = topics.response(fleet, device, "predict")
        self._response_sales = topics.response(fleet, device, "sales")
        self.commands: dict[str, Callable[[dict[str, Any]], None]] = {"candidate": self._cmd_candidate}

    def attach(self) -> None:
        """Register the handlers and subscribe on every (re)connect."""
        c = self.link.client
        c.message_callback_add(self.topic_predict, self._on_predict)
        c.message_callback_add(self.topic_sales, self._on_sales)
        c.message_callback_add(self.topic_set, self._on_set)
        self.link.on_connected.append(self._subscribe)
        if self.link.connected:
            self._subscribe(c)

    def register_command(self, name: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Handle ``{"command": name, ...}`` on ``…/set`` (called on paho's thread: keep it short)."""
        self.commands[name] = handler

    def _subscribe(self, client: mqtt.Client) -> None:
        client.subscribe([(self.topic_predict, 1), (self.topic_sales, 1), (self.topic_set, 1)])

    # -- helpers ----------------------------------------------------------------------------
    def _parse(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.max_payload_bytes:
            raise RequestError(
                [detail("body", "max_body_bytes", f"is larger than {self.max_payload_bytes} bytes")], status=413
            )
        return load_object(payload, None)

    @staticmethod
    def _check_expiry(body: dict[str, Any]) -> None:
        """Remove and check the envelope's optional ``expires_at`` (ISO 8601, with a time zone)."""
        if "expires_at" not in body:
            return
        raw = body.pop("expires_at")
        try:
            when = dt.datetime.fromisoformat(raw) if isinstance(raw, str) else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise RequestError(
                [detail("expires_at", "datetime_format", "must be an ISO 8601 time with a zone, e.g. 2017-08-16T10:00:00Z")]
            )
        if when < dt.datetime.now(dt.timezone.utc):
            raise RequestError([detail("expires_at", "expired", f"{raw} has passed")], status=408, code="expired")

    def _publish(self, topic: str, payload: bytes | str) -> None:
        try:
            self.link.client.publish(topic, payload, qos=1)
        except Exception:  # a response that cannot be sent must not break the caller
            logger.exception("could not publish response on %s", topic)

    def _error(self, topic: str, cid: str | None, reply: ErrorReply) -> None:
        """The MQTT form of an :class:`ErrorReply` (:class:`models.serving.ErrorResponse`, field order kept)."""
        body = {"schema_version": 1, "correlation_id": cid, "status": reply.status, "error": reply.body.model_dump()}
        self._publish(topic, dumps(body))

    # -- predict ----------------------------------------------------------------------------
    def _on_predict(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        cid: str | None = None
        try:
            body = self._parse(msg.payload)
            cid = _correlation_id(body)
            self._check_expiry(body)
            future = self.serving.submit(body, transport="mqtt", timings=timings, correlation_id=cid)
        except Exception as exc:
            reply = error_reply(exc)
            self.metrics.observe_request("mqtt", reply.outcome, time.perf_counter() - started, timings=timings)
            self._error(self._response_predict, cid, reply)
            return
        future.add_done_callback(lambda f: self._answer(f, cid, started, timings))

    def _answer(self, future: Any, cid: str | None, started: float, timings: dict[str, float]) -> None:
        """Record the request, then publish (a client reading the metrics after its response sees it)."""
        try:
            answer = future.result()
        except Exception as exc:
            reply = error_reply(exc)
            self.metrics.observe_request("mqtt", reply.outcome, time.perf_counter() - started, timings=timings)
            self._error(self._response_predict, cid, reply)
            return
        payload = dumps(answer.body(cid, mqtt=True))
        self.metrics.observe_request("mqtt", "ok", time.perf_counter() - started, rows=len(answer.predictions), timings=timings)
        self._publish(self._response_predict, payload)

    # -- sales ------------------------------------------------------------------------------
    def _on_sales(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        cid: str | None = None
        try:
            body = self._parse(msg.payload)
            cid = _correlation_id(body)
            self._check_expiry(body)
            ack = self.serving.report_sales(body, transport="mqtt")
            self._publish(self._response_sales, ack.model_dump_json())
        except Exception as exc:
            self._error(self._response_sales, cid, error_reply(exc))

    # -- commands ---------------------------------------------------------------------------
    def _on_set(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained command being cleared
            return
        try:
            body = json.loads(msg.payload) if len(msg.payload) <= self.max_payload_bytes else None
            name = body.get("command") if isinstance(body, dict) else None
            handler = self.commands.get(name) if isinstance(name, str) else None
            if handler is None:
                raise ValueError(f"unknown or missing command {str(name)[:64]!r}")
            handler(body)
        except Exception as exc:
            self.metrics.bad_messages.inc()
            logger.warning("ignoring command on %s: %s", msg.topic, str(exc).splitlines()[0][:200])

    def _cmd_candidate(self, body: dict[str, Any]) -> None:
        try:
            cmd = CandidateCommand.model_validate(body)
        except ValidationError as exc:
            self.link.publish_event("candidate", outcome="refused", reason="invalid", message=str(exc).splitlines()[0])
            raise ValueError("invalid candidate command") from None
        try:
            if self.authorize is None:
                raise TargetsError("unsigned", "this device accepts no candidate commands")
            cmd = self.authorize(cmd)
        except TargetsError as exc:
            self.metrics_refused(exc.reason)
            self.link.publish_event("candidate", outcome="refused", reason=exc.reason, message=str(exc)[:500])
            logger.warning("candidate command refused (%s): %s", exc.reason, exc)
            return
        if not self._loading.acquire(blocking=False):
            self.link.publish_event("candidate", outcome="refused", reason="busy", message="a candidate is loading")
            return
        # Loading a model takes a while: not on paho's network thread.
        try:
            threading.Thread(target=self._load_candidate, args=(cmd,), name="edgeship-candidate", daemon=True).start()
        except BaseException:
            self._loading.release()
            raise

    def metrics_refused(self, reason: str) -> None:
        counter = getattr(self.metrics, "refused_documents", None)
        if counter is not None:
            counter.labels(reason).inc()

    def _load_candidate(self, cmd: CandidateCommand) -> None:
        try:
            self._load_candidate_locked(cmd)
        finally:
            self._loading.release()

    def _load_candidate_locked(self, cmd: CandidateCommand) -> None:
        detail_ = {"correlation_id": cmd.correlation_id} if cmd.correlation_id else {}
        try:
            base = self.serving.candidate_config
            settings = CandidateSettings(mode=cmd.mode, share=cmd.share, key=base.key, tolerance=base.tolerance)
            info = self.serving.load_candidate(cmd.version, settings)
        except Exception as exc:
            logger.error("candidate v%s could not be loaded: %s", cmd.version, exc)
            self.link.publish_event("candidate", outcome="failed", version=cmd.version, message=str(exc)[:500], **detail_)
            return
        if info is None:
            self.link.publish_event("candidate", outcome="unloaded", **detail_)
        else:
            self.link.publish_event(
                "candidate", outcome="loaded", version=info.version, digest=info.digest, mode=cmd.mode, share=cmd.share, **detail_
            )
