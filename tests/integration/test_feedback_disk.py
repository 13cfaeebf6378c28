"""Staff feedback vs disk faults: the agent's state folder is a small tmpfs (mounted here, as root),
remounted read-only and filled while a real agent (LiteRT) and the validation app run.

Feedback is never silently lost: when the device cannot commit a record, ``POST /v1/feedback``
answers 503 with the disk state (``disk_readonly`` / ``disk_full``) and the app shows it on screen;
nothing is acknowledged, no feedback sequence number is used, the lag state is untouched; once the
disk is back the same form goes through and the sequence has no gap. Under ``CI=true`` no skip.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import require
from tests.integration.test_disk_faults import fill, remount, tmpfs
from tests.validate_kit import agent_and_app, device_feedback

pytestmark = pytest.mark.integration
ROW = {"date": "2017-08-18", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}


def _form(day: str, actual: float, validator: str) -> tuple:
    """The app's feedback form: each day's actuals move the lag state on, so each record is a next day."""
    return (day, str(ROW["store_nbr"]), str(ROW["item_nbr"]), False, "wrong", actual, "", validator)


def _lag(agent) -> tuple[str, float]:
    """The lag state's last day and units for the row's store×item."""
    h = httpx.get(agent.http_url + "/v1/history", params={"store_nbr": 1, "item_nbr": 103520, "days": 1}, timeout=10).json()
    return h["end_date"], h["unit_sales"][-1]


def test_feedback_on_a_read_only_or_full_disk_is_refused_with_the_reason_never_dropped(tmp_path: Path, keys) -> None:
    require(importlib.util.find_spec("gradio_client") is not None, "gradio_client is not installed (pip install -e '.[validate]')")
    from gradio_client import Client

    with tmpfs(tmp_path / "disk", "4m") as disk, tmpfs(disk / "state" / "ingest", "1m"):
        # the sales ledger keeps its SQLite files open for writing (the kernel then refuses a read-only
        # remount): it gets its own tmpfs, as in test_disk_faults; the feedback store holds nothing open
        state = disk / "state"
        # lag state saved at each report (its 2 s background flush would hold a file open at a random moment)
        # and the prediction log off: a sampled request opens a log segment that stays open for appends
        fields = {"telemetry": {"interval_s": 0, "fsync": False}, "online_state": {"flush_interval_s": 0},
                  "predlog": {"sample_rate": 0.0}}  # fmt: skip
        with agent_and_app(tmp_path, keys, state=state, **fields) as (agent, url):
            client = Client(url, verbose=False)
            ok = client.predict(*_form("2017-08-17", 3, "ana"), api_name="/feedback")
            assert "stored on the device" in ok, ok
            first = re.search(r"`([0-9a-f]{32})`", ok).group(1)
            assert _lag(agent) == ("2017-08-17", 3.0)

            # read-only card: the route says so (503, the reason), the app shows it, nothing is taken
            remount(disk, "ro")
            try:
                msg = client.predict(*_form("2017-08-18", 11, "ben"), api_name="/feedback")
                assert "NOT stored" in msg and "disk_readonly" in msg and "read-only" in msg, msg
                assert "stored on the device" not in msg
                body = {"validator": "ben", "verdict": "wrong", "actual_units": 11, "request": ROW, "forecast": 2.0,
                        "model": agent.predictor.info.model_dump()}  # fmt: skip
                r = httpx.post(agent.http_url + "/v1/feedback", json=body, timeout=10)
                assert r.status_code == 503 and r.headers["retry-after"] == "30", r.text
                err = r.json()["error"]
                assert err["code"] == "disk_readonly" and "NOT stored" in err["message"]
                assert err["details"][0]["field"] == "disk" and "disk_readonly" in err["details"][0]["message"]
                assert agent.field.feedback.fault == "disk_readonly" and agent.field.feedback.refused == 2
                assert _lag(agent) == ("2017-08-17", 3.0)  # the refused actuals did not reach the lag state
            finally:
                remount(disk, "rw")
            assert [r["id"] for r in device_feedback(agent)] == [first]

            # disk back: the same form goes through, and the feedback sequence has no gap
            ok = client.predict(*_form("2017-08-18", 11, "ben"), api_name="/feedback")
            assert "stored on the device" in ok, ok
            assert agent.field.feedback.fault is None
            rows = device_feedback(agent)
            assert [r["validator"] for r in rows] == ["ana", "ben"] and [r["_seq"] for r in rows] == [1, 2]
            assert _lag(agent) == ("2017-08-18", 11.0)

            # full card: the same, with disk_full
            filler = fill(disk, leave=0)
            try:
                msg = client.predict(*_form("2017-08-19", 5, "cleo"), api_name="/feedback")
                assert "NOT stored" in msg and "disk_full" in msg, msg
                assert agent.field.feedback.fault == "disk_full"
            finally:
                filler.unlink()
            ok = client.predict(*_form("2017-08-19", 5, "cleo"), api_name="/feedback")
            assert "stored on the device" in ok, ok
            rows = device_feedback(agent)
            assert [r["validator"] for r in rows] == ["ana", "ben", "cleo"] and [r["_seq"] for r in rows] == [1, 2, 3]
