"""The validation app's client against an agent that requires a write credential (issue 7 × issue 10):
forecasts and explanations stay open, feedback needs the token the app reads from ``--token-file``."""

from __future__ import annotations

import pytest

from edge.validate_app.client import AgentClient, AgentError
from tests.validate_kit import agent_and_app

pytestmark = pytest.mark.integration

ROW = {"date": "2017-08-17", "store_nbr": 1, "item_nbr": 103520, "onpromotion": True}


def test_reads_are_open_and_feedback_needs_the_agents_token(tmp_path, keys):
    token_file = tmp_path / "http.token"
    token_file.write_text("s3cret-for-writes\n")
    with agent_and_app(tmp_path, keys, http_token_file=token_file) as (agent, _app_url):
        anonymous = AgentClient(agent.http_url)
        trusted = AgentClient(agent.http_url, token="s3cret-for-writes")
        try:
            live = anonymous.live(ROW)  # what the app shows: a read, no credential needed
            assert live["predictions"] and anonymous.explain(ROW)["contributions"]
            body = {"validator": "carla", "verdict": "wrong", "actual_units": 4.0, "request": ROW,
                    "forecast": live["predictions"][0], "model": live["model"]}  # fmt: skip
            with pytest.raises(AgentError) as refused:
                anonymous.feedback(body)
            assert refused.value.status == 401
            with pytest.raises(AgentError) as wrong:
                AgentClient(agent.http_url, token="guess").feedback(body)
            assert wrong.value.status == 401
            ack = trusted.feedback(body)
            assert ack["stored"] is True and len(ack["id"]) == 32
        finally:
            anonymous.close()
            trusted.close()
