"""Test helpers for the validation app: a real agent (LiteRT) and the app in front of it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge.agent import Agent
from edge.config import AgentConfig
from edge.store.model_store import ModelStore
from tests.bundle_kit import LINEAR_WEIGHTS, build_bundle, real_models

__all__ = ["agent_and_app", "device_feedback", "FEEDBACK_DB"]

FEEDBACK_DB = Path("feedback") / "feedback.db"


@contextlib.contextmanager
def agent_and_app(
    tmp: Path, keys: Any, *, broker: str | None = None, auth: Any = None, state: Path | None = None,
    candidate: dict[str, Any] | None = None, **agent_fields: Any,
) -> Iterator[tuple[Agent, str]]:
    """An agent serving a real LiteRT model (HTTP on an ephemeral port, MQTT if ``broker``) and the
    validation app talking to it over HTTP; yields ``(agent, app_url)``. ``state``: the agent's state
    folder (default ``tmp/state``); ``candidate``: also install a v2 (other weights, so other
    forecasts) and run it as the shadow / A-B candidate with these settings (e.g. ``{"mode": "ab"}``);
    ``agent_fields`` go to :class:`AgentConfig`."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from edge.validate_app.app import launch

    bundle, _ = build_bundle(tmp / "m-v1.bundle.tar", keys[0], version=1, variants=("tflite-fp32",),
                             model_bytes=real_models(("tflite-fp32",)))  # fmt: skip
    state = state or tmp / "state"
    store = ModelStore(state, [keys[1]])
    store.install(bundle)
    store.activate(1)
    if candidate is not None:
        v2, _ = build_bundle(tmp / "m-v2.bundle.tar", keys[0], version=2, variants=("tflite-fp32",),
                             model_bytes=real_models(("tflite-fp32",), LINEAR_WEIGHTS * 1.5))  # fmt: skip
        store.install(v2)
        agent_fields = {**agent_fields, "candidate": {"version": 2, **candidate}}
    fields: dict[str, Any] = {"device_id": "store-1", "state_dir": state, "trust": [keys[2]], "http": "127.0.0.1:0",
                              "runtime": "litert"}  # fmt: skip
    if broker:
        fields.update(broker=broker, reconnect_min_s=0.5, reconnect_max_s=1, keepalive_s=5)
    agent = Agent(AgentConfig(**{**fields, **agent_fields})).start()
    demo = None
    try:
        demo, url = launch(agent.http_url, port=0, auth=auth)
        yield agent, url
    finally:
        if demo is not None:
            demo.close()
        agent.stop()


def device_feedback(agent: Agent) -> list[dict[str, Any]]:
    """What the device's SQLite store holds, read with sqlite3 directly (not through the agent)."""
    import json

    db = sqlite3.connect(Path(agent.config.state_dir) / FEEDBACK_DB)
    try:
        return [{**json.loads(r), "_seq": s} for r, s in db.execute("SELECT record, seq FROM feedback ORDER BY at")]
    finally:
        db.close()
