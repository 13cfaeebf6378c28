"""Errors a client can cause, in one shape for every transport (HTTP, MQTT, serial).

Every problem names the field (``instances[0].store_nbr``) and the rule it broke (``known_store``),
so a shop's developer can fix the request without reading our code.

>>> err = RequestError([detail("instances[0].store_nbr", "known_store", "unknown store 999")])
>>> str(err)
'instances[0].store_nbr: unknown store 999 (rule known_store)'
>>> err.status, err.to_json()["error"]["code"]
(422, 'invalid_request')
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any, TypedDict

from pydantic import ValidationError

from models.serving import ErrorBody

logger = logging.getLogger(__name__)

__all__ = [
    "ErrorDetail",
    "RequestError",
    "InferenceError",
    "Unavailable",
    "Overloaded",
    "ErrorReply",
    "error_reply",
    "detail",
    "field_path",
    "from_validation_error",
]

#: At most this many details are reported per request (the first ones, in row order).
MAX_DETAILS = 20


class ErrorDetail(TypedDict):
    field: str
    rule: str
    message: str


def detail(field: str, rule: str, text: str) -> ErrorDetail:
    """One problem: ``message`` reads ``"<field>: <text> (rule <rule>)"``."""
    return {"field": field, "rule": rule, "message": f"{field}: {text} (rule {rule})"}


class RequestError(ValueError):
    """A request the model cannot answer; ``status`` is the HTTP status it maps to (4xx)."""

    def __init__(self, details: Sequence[ErrorDetail], *, status: int = 422, code: str = "invalid_request") -> None:
        self.details: list[ErrorDetail] = list(details[:MAX_DETAILS]) or [detail("body", "invalid", "invalid request")]
        self.status = status
        self.code = code
        more = len(details) - 1
        super().__init__(self.details[0]["message"] + (f" (and {more} more)" if more > 0 else ""))

    @property
    def message(self) -> str:
        return str(self)

    def to_json(self) -> dict[str, Any]:
        """``{"error": {"code", "message", "details": [{"field", "rule", "message"}]}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InferenceError(RuntimeError):
    """The model failed or produced a non-finite prediction (a server-side fault, HTTP 500)."""


class Unavailable(RuntimeError):
    """No model is active yet (HTTP 503 ``no_model``)."""


class Overloaded(RuntimeError):
    """Too many requests are queued: answer 503 and let the client retry."""


@dataclasses.dataclass(frozen=True)
class ErrorReply:
    """What every transport sends for one failure: the HTTP status (MQTT carries it in the payload),
    the :class:`models.serving.ErrorBody`, HTTP headers, and the outcome label for the metrics."""

    status: int
    body: ErrorBody
    outcome: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def http_json(self) -> dict[str, Any]:
        """``{"error": {"code", "message", "details"}}``: the HTTP body."""
        return {"error": self.body.model_dump()}


def error_reply(exc: BaseException) -> ErrorReply:
    """THE table from exception to status, code and message, shared by HTTP, MQTT and serial.

    >>> r = error_reply(Unavailable("no model is active yet"))
    >>> r.status, r.body.code, r.headers
    (503, 'no_model', {'Retry-After': '5'})
    >>> error_reply(RequestError([detail("instances[0].store_nbr", "known_store", "unknown store 9")])).body.details[0]["rule"]
    'known_store'
    """
    if isinstance(exc, RequestError):
        body = ErrorBody.model_construct(code=exc.code, message=exc.message, details=[dict(d) for d in exc.details])
        return ErrorReply(exc.status, body, "invalid")
    if isinstance(exc, Unavailable):
        return ErrorReply(503, ErrorBody.model_construct(code="no_model", message=str(exc), details=[]), "unavailable", {"Retry-After": "5"})
    if isinstance(exc, Overloaded):
        return ErrorReply(503, ErrorBody.model_construct(code="overloaded", message=str(exc), details=[]), "unavailable", {"Retry-After": "1"})
    if isinstance(exc, InferenceError):
        logger.error("inference failed: %s", exc)
        return ErrorReply(500, ErrorBody.model_construct(code="inference_failed", message=str(exc), details=[]), "error")
    logger.error("request failed", exc_info=exc)
    return ErrorReply(500, ErrorBody.model_construct(code="internal", message="internal error", details=[]), "error")


def field_path(loc: Sequence[str | int]) -> str:
    """``("instances", 0, "store_nbr")`` → ``"instances[0].store_nbr"``; ``()`` → ``"body"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


_RULES = {
    "missing": ("required", "is required"),
    "extra_forbidden": ("extra_field", "is not a field of the contract"),
    "int_type": ("int_type", "must be an integer"),
    "int_parsing": ("int_type", "must be an integer"),
    "int_from_float": ("int_type", "must be an integer"),
    "bool_type": ("bool_type", "must be true or false"),
    "bool_parsing": ("bool_type", "must be true or false"),
    "greater_than": ("range", "is out of range"),
    "less_than": ("range", "is out of range"),
    "too_short": ("min_rows", "needs at least one row"),
    "list_type": ("list_type", "must be a list"),
    "model_type": ("object_type", "must be an object"),
    "dict_type": ("object_type", "must be an object"),
    "string_type": ("string_type", "must be a string"),
    "string_too_long": ("max_length", "is too long"),
}


def _input_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(err: dict[str, Any]) -> ErrorDetail:
    loc, kind, value = tuple(err.get("loc", ())), err["type"], err.get("input")
    field = field_path(loc)
    if isinstance(value, float) and not math.isfinite(value):
        return detail(field, "finite", f"must be a finite number, got {value}")
    if loc and loc[-1] == "date" and (kind == "value_error" or kind.startswith("date")):
        return detail(field, "date_format", f"must be a calendar date as YYYY-MM-DD, got {_input_repr(value)}")
    rule, text = _RULES.get(kind, (kind, err.get("msg", "is invalid").lower()))
    ctx = err.get("ctx") or {}
    if kind == "greater_than":
        text = f"must be greater than {ctx.get('gt')}"
    elif kind == "less_than":
        text = f"must be less than {ctx.get('lt')}"
    if kind not in ("missing", "too_short", "extra_forbidden"):
        text += f", got {_input_repr(value)}"
    return detail(field, rule, text)


def from_validation_error(exc: ValidationError) -> RequestError:
    """Turn pydantic's errors into a :class:`RequestError` (422) with one detail per problem."""
    return RequestError([_convert(e) for e in exc.errors(include_url=False)])
