"""A prediction request, parsed and validated once, for every transport.

HTTP, MQTT and the serial bridge hand the raw bytes (or an already decoded object) to
:func:`parse`; what comes back is a :class:`ParsedRequest` whose rows are plain tuples
``(day, store_nbr, item_nbr, onpromotion)`` with ``day`` in days since 1970-01-01. The common,
well-formed body is checked by a few ``type(x) is int`` tests (no pydantic on the hot path); any
body the fast check does not accept goes through :class:`models.contract.PredictRequest` so that
every error names the field and the rule exactly as the contract's validation does::

    req = parse(b'{"instances": [{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520}]}', max_batch=64)
    req.rows            # [(17394, 1, 103520, False)]
    parse(b'{"instances": []}', max_batch=64)   # RequestError: instances: needs at least one row (rule min_rows)

JSON is decoded with orjson where it is installed; a body orjson refuses is decoded again with the
standard library so the error message (and what is accepted: ``NaN``) stays exactly the same.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from edge.serving.errors import RequestError, detail, from_validation_error
from models.contract import PredictRequest, RequestRow

try:  # orjson: ~3x faster decoding; optional (the standard library gives the same results)
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _orjson = None

__all__ = ["Row", "ParsedRequest", "parse", "loads", "load_object", "dumps"]

logger = logging.getLogger(__name__)

#: One request row: (days since 1970-01-01, store_nbr, item_nbr, onpromotion).
Row = tuple[int, int, int, bool]

_EPOCH = dt.date(1970, 1, 1).toordinal()
_ROW_KEYS = frozenset({"date", "store_nbr", "item_nbr", "onpromotion"})
_ID_LIMIT = 2**31
_DAYS: dict[str, int | None] = {}  # ISO string → day number (None: not a calendar date); bounded
_DAYS_MAX = 4096


def _day(text: str) -> int | None:
    """Days since the epoch of a strict ``YYYY-MM-DD`` string; None when it is not one."""
    day = _DAYS.get(text, -1)
    if day != -1:
        return day
    day = None
    if len(text) == 10 and text[4] == "-" and text[7] == "-" and text.isascii():
        y, m, d = text[:4], text[5:7], text[8:]
        if y.isdigit() and m.isdigit() and d.isdigit():
            try:
                day = dt.date(int(y), int(m), int(d)).toordinal() - _EPOCH
            except ValueError:
                day = None
    if len(_DAYS) >= _DAYS_MAX:
        _DAYS.clear()
    _DAYS[text] = day
    return day


def day_iso(day: int) -> str:
    """``17394`` → ``"2017-08-16"``."""
    return dt.date.fromordinal(day + _EPOCH).isoformat()


class ParsedRequest:
    """One validated request: its rows and correlation id (see the module doc)."""

    __slots__ = ("rows", "correlation_id")

    def __init__(self, rows: list[Row], correlation_id: str | None = None) -> None:
        self.rows = rows
        self.correlation_id = correlation_id

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def instances(self) -> list[dict[str, Any]]:
        """The rows as the contract names them (for the prediction log)."""
        return [
            {"date": day_iso(d), "store_nbr": s, "item_nbr": i, "onpromotion": p} for d, s, i, p in self.rows
        ]

    def __repr__(self) -> str:
        return f"ParsedRequest({self.rows!r}, correlation_id={self.correlation_id!r})"


def loads(raw: bytes | str) -> Any:
    """Decode JSON; RequestError 400 (rule ``json``) with the standard library's message."""
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # decode again below: the same message as always, and NaN/Infinity still accepted
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError([detail("body", "json", f"is not valid JSON: {exc}")], status=400) from None


def load_object(raw: bytes | str, what: str | None = "instances") -> dict[str, Any]:
    """:func:`loads`, and the body must be a JSON object (rule ``object_type``)."""
    body = loads(raw)
    if not isinstance(body, dict):
        shape = f' {{"{what}": [...]}}' if what else ""
        raise RequestError([detail("body", "object_type", f"must be a JSON object{shape}")])
    return body


def dumps(obj: Any) -> bytes:
    """Encode JSON (orjson where installed)."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def _too_many(n: int, limit: int) -> RequestError:
    return RequestError([detail("instances", "max_batch", f"has {n} rows, at most {limit} are allowed")], status=413)


def _fast(body: dict[str, Any]) -> ParsedRequest | None:
    """The well-formed body, checked without pydantic; None when anything is unusual."""
    instances = body.get("instances")
    cid = body.get("correlation_id")
    if type(instances) is not list or not instances or len(body) != 1 + ("correlation_id" in body):
        return None
    if cid is not None and (type(cid) is not str or len(cid) > 128):
        return None
    rows: list[Row] = []
    for r in instances:
        if type(r) is not dict:
            return None
        date, store, item, promo = r.get("date"), r.get("store_nbr"), r.get("item_nbr"), r.get("onpromotion", False)
        if (
            type(date) is not str
            or type(store) is not int
            or type(item) is not int
            or type(promo) is not bool
            or not (0 < store < _ID_LIMIT and 0 < item < _ID_LIMIT)
            or len(r) != 3 + ("onpromotion" in r)
        ):
            return None
        day = _day(date)
        if day is None:
            return None
        rows.append((day, store, item, promo))
    return ParsedRequest(rows, cid)


def _from_model(request: PredictRequest) -> ParsedRequest:
    rows = [(r.date.toordinal() - _EPOCH, r.store_nbr, r.item_nbr, r.onpromotion) for r in request.instances]
    return ParsedRequest(rows, request.correlation_id)


def parse(
    body: bytes | str | Mapping[str, Any] | Sequence[Mapping[str, Any]] | PredictRequest | ParsedRequest,
    max_batch: int,
) -> ParsedRequest:
    """Parse and validate one prediction request (raw JSON, a decoded body, a list of rows, a
    :class:`PredictRequest` or an already parsed request). Raises :class:`RequestError`: 400 for
    bad JSON, 413 beyond ``max_batch`` rows, 422 naming the field and rule otherwise."""
    kind = type(body)
    if kind is list:  # a list of rows (the embedded call): checked as the body {"instances": rows}
        body, kind = {"instances": body}, dict
    if kind is dict:  # the common case first, with no isinstance checks against ABCs
        instances = body.get("instances")
        if type(instances) is list:
            if len(instances) > max_batch:
                raise _too_many(len(instances), max_batch)
            fast = _fast(body)
            if fast is not None:
                return fast
    if isinstance(body, ParsedRequest):
        if len(body.rows) > max_batch:
            raise _too_many(len(body.rows), max_batch)
        return body
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        body = load_object(bytes(body) if not isinstance(body, (bytes, str)) else body)
    if isinstance(body, PredictRequest):
        parsed = _from_model(body)
        if len(parsed.rows) > max_batch:
            raise _too_many(len(parsed.rows), max_batch)
        return parsed
    if not isinstance(body, Mapping):
        body = {"instances": body}
    instances = body.get("instances")
    if isinstance(instances, Sequence) and len(instances) > max_batch:
        raise _too_many(len(instances), max_batch)
    if type(body) is dict:
        fast = _fast(body)
        if fast is not None:
            return fast
    try:
        request = PredictRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    return _from_model(request)


def row_models(request: ParsedRequest) -> list[RequestRow]:
    """The rows as :class:`RequestRow` objects (no validation: they were validated)."""
    return [
        RequestRow.model_construct(date=dt.date.fromordinal(d + _EPOCH), store_nbr=s, item_nbr=i, onpromotion=p)
        for d, s, i, p in request.rows
    ]
