"""The one update decision: may this model version replace the active one on this device?

Asked by the delivery worker before fetching (:mod:`edge.delivery.updater`), by the agent before
downloading an announcement (:meth:`edge.agent.Agent.should_fetch`) and again before installing a
bundle file, side-loaded or downloaded (:meth:`edge.agent.Agent.install_and_activate`) — one rule,
so the three can never disagree.

>>> from types import SimpleNamespace as A
>>> active = A(name="demand", version=3, digest="aa")
>>> update_verdict(active, "demand", 4, "bb") is None            # newer: go ahead
True
>>> update_verdict(active, "demand", 3, "aa").reason             # already serving these bytes
'already_active'
>>> update_verdict(active, "demand", 2, "cc").reason             # older, and no signed rollback says so
'rollback'
>>> update_verdict(active, "demand", 2, "cc", downgrade=True) is None
True
>>> update_verdict(active, "demand", 3, "dd").reason             # a version number is never reused
'version_conflict'
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

__all__ = ["Verdict", "update_verdict"]


class _Active(Protocol):
    name: str
    version: int
    digest: str


class Verdict(NamedTuple):
    """Why not: a reason code (as reported in update events) and a sentence for people."""

    reason: str
    message: str


def update_verdict(active: _Active | None, model: str, version: int, sha256: str, *, downgrade: bool = False) -> Verdict | None:
    """None when ``model`` v``version`` (bundle digest ``sha256``) may replace ``active``; else the verdict.

    ``downgrade`` is set only by a verified signed rollback (targets with ``downgrade``, or a rollback
    command): it allows an older version, never the same bytes again. Another model's bundle is not this
    rule's business (the agent's ``--model`` filter decides that)."""
    if active is None or active.name != model:
        return None
    if sha256 == active.digest:
        return Verdict("already_active", f"{model} v{version} is already active")
    if downgrade:
        return None
    if version < active.version:
        return Verdict("rollback", f"v{version} is older than the active v{active.version} and no signed rollback names it")
    if version == active.version:
        return Verdict("version_conflict", f"v{version} is active with another digest; a version is never reused")
    return None
