"""A candidate model beside the live one: in shadow (answers not returned) or taking a share (A/B).

- **shadow**: a share of requests (``share``, default all) is also run by the candidate, after the
  live answer is on its way and on its own low-priority batcher, so it never delays a response.
  Per row the |difference| of the two outputs (log1p space, as the parity gate measures it) goes to
  ``edgeship_shadow_abs_diff`` and rows within ``tolerance`` to
  ``edgeship_shadow_rows_total{agree="yes"}``.
- **ab**: a deterministic share of traffic is answered by the candidate. The key is the first
  row's store×item (``key="pair"``: a shop's item always sees the same arm) or the request's
  correlation id (``key="request"``), hashed (BLAKE2b) with the candidate's digest as salt, so the
  split is stable across restarts and changes only when the candidate does. A request the candidate
  cannot answer (say, an item it has no history for) falls back to the live model
  (``edgeship_candidate_fallbacks_total``).

Both export per arm (``arm="live"|"candidate"``): requests by outcome, latency, and the predicted
value's distribution (log1p); ``edgeship_candidate_info`` says what the candidate is. The
prediction log records the arm of every sampled row, so realised accuracy per arm is a join away.

A candidate is an installed version: ``AgentConfig.candidate`` at start, or at run time::

    edgeship/<fleet>/<device>/set   {"command": "candidate", "version": 3, "mode": "ab", "share": 0.1}
    edgeship/<fleet>/<device>/set   {"command": "candidate", "version": null}        # unload
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any, Literal

from prometheus_client import CollectorRegistry

from edge.monitoring.metrics import ARMS, ArmMetrics
from pydantic import BaseModel, ConfigDict, Field

from edge.serving.slot import ModelSlot

__all__ = ["CandidateConfig", "CandidateSettings", "Candidate", "ArmMetrics", "ARMS"]

logger = logging.getLogger(__name__)


class CandidateConfig(BaseModel):
    """A candidate model run beside the live one at start-up (also settable over MQTT ``set``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | None = Field(default=None, ge=1, description="Installed version to run as candidate; None = none.")
    mode: Literal["shadow", "ab"] = Field(
        default="shadow", description="shadow: also run it, answers not returned; ab: it answers a share of traffic."
    )
    share: float = Field(default=1.0, ge=0.0, le=1.0, description="ab: share of traffic; shadow: share mirrored.")
    key: Literal["pair", "request"] = Field(
        default="pair", description="A/B split by the first row's store×item, or by the request's correlation id."
    )
    tolerance: float = Field(
        default=0.1, ge=0.0, description="Shadow rows whose |difference| (log1p) is within this count as agreeing."
    )
    max_pending: int = Field(default=256, ge=1, description="Shadow requests queued at most; beyond, mirroring skips.")


class CandidateSettings(BaseModel):
    """How the loaded candidate is used now (CandidateConfig without the version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["shadow", "ab"] = "shadow"
    share: float = Field(default=1.0, ge=0.0, le=1.0)
    key: Literal["pair", "request"] = "pair"
    tolerance: float = Field(default=0.1, ge=0.0)


class Candidate:
    """The candidate slot, its settings and routing. Thread-safe (settings are swapped whole)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.slot = ModelSlot()
        self.metrics = ArmMetrics(registry)
        self._settings: CandidateSettings | None = None
        self._salt = b""
        self._lock = threading.Lock()

    @property
    def settings(self) -> CandidateSettings | None:
        """None while no candidate is loaded."""
        return self._settings

    @property
    def current(self) -> Any:
        return self.slot.current

    def set(self, predictor: Any, settings: CandidateSettings) -> None:
        """Make ``predictor`` the candidate (the previous one is closed after its requests)."""
        with self._lock:
            self._salt = bytes.fromhex(predictor.digest[:32])
            self._settings = settings
            self.slot.swap(predictor)
            info = predictor.info
            self.metrics.info.clear()
            self.metrics.info.labels(
                info.name, str(info.version), info.digest, info.variant, info.runtime, settings.mode, f"{settings.share:g}"
            ).set(1)
        logger.info(
            "candidate loaded",
            extra={"version": info.version, "mode": settings.mode, "share": settings.share, "variant": info.variant},
        )

    def clear(self) -> None:
        with self._lock:
            self._settings = None
            self.slot.swap(None)
            self.metrics.info.clear()

    def picks(self, key: str) -> bool:
        """Whether a request with this routing key goes to (ab) or is mirrored by (shadow) the candidate."""
        settings = self._settings
        if settings is None or settings.share <= 0:
            return False
        if settings.share >= 1:
            return True
        h = hashlib.blake2b(key.encode(), digest_size=8, key=self._salt).digest()
        return int.from_bytes(h, "big") / 2**64 < settings.share

    @staticmethod
    def routing_key(settings: CandidateSettings, first_row: Any, correlation_id: str | None) -> str:
        """``first_row``: a parsed row ``(day, store_nbr, item_nbr, onpromotion)`` or a RequestRow."""
        if settings.key == "request" and correlation_id:
            return "r:" + correlation_id
        if isinstance(first_row, tuple):
            return f"p:{first_row[1]}:{first_row[2]}"
        return f"p:{first_row.store_nbr}:{first_row.item_nbr}"
