"""The validation app's only way to the agent: its public HTTP API (no in-process shortcuts).

>>> # agent = AgentClient("http://127.0.0.1:8080", token=None)
>>> # agent.predict({"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False})
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

__all__ = ["AgentClient", "AgentError"]

logger = logging.getLogger(__name__)


class AgentError(Exception):
    """The agent refused or could not be reached. ``details`` are its ``{field, rule, message}``s."""

    def __init__(self, code: str, message: str, details: list[dict[str, str]] | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []
        self.status = status


class AgentClient:
    """Thin JSON client; every call raises :class:`AgentError` instead of returning an error body."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, trust_env=False)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise AgentError("unreachable", f"the agent at {self.url} is not reachable ({type(exc).__name__}: {exc})") from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            code = err.get("code", "http_error")
            message = err.get("message") or f"HTTP {r.status_code}"
            if code == "no_model":
                message = "the agent has no model yet (it serves one as soon as a bundle is installed)"
            raise AgentError(code, message, err.get("details"), r.status_code)
        return body

    def catalogue(self) -> dict[str, Any]:
        return self._call("GET", "/v1/catalogue")

    def predict(self, row: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/predict", json={"instances": [row]})

    def candidate(self, row: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/predict:candidate", json={"instances": [row]})

    def predict_rows(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", "/v1/predict", json={"instances": rows})

    def live(self, row: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/predict:live", json={"instances": [row]})

    def predict_batch(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", "/v1/predict:batch", json={"instances": rows})

    def history(self, store_nbr: int, item_nbr: int, days: int = 28) -> dict[str, Any]:
        return self._call("GET", "/v1/history", params={"store_nbr": store_nbr, "item_nbr": item_nbr, "days": days})

    def explain(self, row: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/explain", json={"instance": row})

    def feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/feedback", json=body)

    def close(self) -> None:
        self._http.close()
