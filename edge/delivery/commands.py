"""Signed commands that change what serves predictions (today: ``candidate``).

An unsigned ``{"command": "candidate", "version": 2, "mode": "ab", "share": 1.0}`` on a device's
``set`` topic used to put any installed version — even one a signed rollback had removed — in front
of all traffic. Now the command must carry a :class:`models.targets.CandidateOrder` signed by a
trusted model-signing key, naming this device (and its fleet), current (not expired, not dated in
the future, not older than the last order acted on), and for a version that is installed here with
the signed digest, passed the on-device gate (only gated versions stay installed) and was never
rolled back. The plain fields of the command are ignored: what is acted on comes from the order.

>>> # authority = CandidateAuthority(trust, config, installed=agent.installed_digest, blocked=agent.is_blocked)
>>> # MqttServing(serving, link, authorize=authority)
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from edge.delivery.trust import TrustStore
from models.serving import CandidateCommand
from models.targets import TargetsError, verify_candidate

__all__ = ["CandidateAuthority"]

logger = logging.getLogger(__name__)


class CandidateAuthority:
    """Checks a candidate command's signed order; returns the command to act on or raises TargetsError."""

    def __init__(
        self,
        trust: TrustStore,
        config: Any,
        *,
        installed: Callable[[int], str | None],
        blocked: Callable[[int, str], str | None],
    ) -> None:
        self.trust = trust
        self.config = config
        self._installed = installed
        self._blocked = blocked
        self._lock = threading.Lock()
        self._newest: dt.datetime | None = None

    def __call__(self, cmd: CandidateCommand) -> CandidateCommand:
        order = verify_candidate(cmd.signed, self.trust.keys)
        c = self.config
        if order.fleet != c.fleet:
            raise TargetsError("wrong_fleet", f"candidate order is for fleet {order.fleet}")
        if c.device_id not in order.devices:
            raise TargetsError("wrong_device", "candidate order names other devices")
        if c.model is not None and order.model != c.model:
            raise TargetsError("wrong_model", f"candidate order is for model {order.model}")
        if order.version is not None:
            digest = self._installed(order.version)
            if digest is None:
                raise TargetsError("not_installed", f"v{order.version} is not installed here (or did not pass the gate)")
            if digest != order.sha256:
                raise TargetsError("digest_mismatch", f"v{order.version} installed here is not the bundle the order names")
            why = self._blocked(order.version, digest)
            if why is not None:
                raise TargetsError("rolled_back", f"v{order.version} {why}")
        with self._lock:
            if self._newest is not None and order.issued_at <= self._newest:
                raise TargetsError("replayed", f"candidate order issued {order.issued_at.isoformat()} is not newer "
                                   f"than the last one acted on")  # fmt: skip
            self._newest = order.issued_at
        logger.info("signed candidate order: v%s %s share %.2f", order.version, order.mode, order.share)
        return cmd.model_copy(update={"version": order.version, "mode": order.mode, "share": order.share})
