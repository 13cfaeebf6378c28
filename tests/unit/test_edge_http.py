"""HTTP endpoints through Starlette's TestClient, plus one real uvicorn round trip."""

from __future__ import annotations

import json

import httpx
import pytest

from edge.serving.http import HttpServer, create_app
from edge.monitoring.metrics import AgentMetrics
from edge.serving.predictor import Predictor
from edge.serving.slot import ModelSlot
from tests.bundle_kit import build_bundle
from models.signing import generate_keypair

pytestmark = pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient. is deprecated")
ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    private, public = generate_keypair()
    path, _ = build_bundle(tmp_path_factory.mktemp("b") / "m-v1.bundle.tar", private, max_batch=4)
    return path, public


@pytest.fixture()
def served(bundle):
    from starlette.testclient import TestClient

    slot, metrics = ModelSlot(), AgentMetrics()
    predictor = Predictor.open(bundle[0], trust=[bundle[1]], runtime="fake")
    slot.swap(predictor)
    with TestClient(create_app(slot, metrics, device_id="store-1", max_body_bytes=4096)) as client:
        yield client, predictor, metrics
    slot.close()


def test_predict_ok(served):
    client, predictor, _ = served
    r = client.post("/v1/predict", json={"instances": [ROW, {**ROW, "onpromotion": True}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == predictor.predict([ROW, {**ROW, "onpromotion": True}])
    assert body["model"] == {
        "name": "favorita-demand",
        "version": 1,
        "digest": predictor.digest,
        "variant": "tflite-fp32",
        "runtime": "fake",
        "providers": [],
    }


@pytest.mark.parametrize(
    "body, status, field, rule",
    [
        ({"instances": [{**ROW, "store_nbr": 999}]}, 422, "instances[0].store_nbr", "known_store"),
        ({"instances": [{**ROW, "date": "2017-8-16"}]}, 422, "instances[0].date", "date_format"),
        ({"instances": [{k: v for k, v in ROW.items() if k != "item_nbr"}]}, 422, "instances[0].item_nbr", "required"),
        ({"instances": [ROW] * 5}, 413, "instances", "max_batch"),
        ([ROW], 422, "body", "object_type"),
    ],
)
def test_predict_4xx_shape(served, body, status, field, rule):
    client, *_ = served
    r = client.post("/v1/predict", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert err["details"][0]["field"] == field and err["details"][0]["rule"] == rule
    assert err["message"].startswith(field) and f"(rule {rule})" in err["message"]
    assert client.post("/v1/predict", json={"instances": [ROW]}).status_code == 200  # still serving


def test_not_json_and_nan(served):
    client, *_ = served
    r = client.post("/v1/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["details"][0]["rule"] == "json"
    nan_body = '{"instances": [{"date": "2017-08-16", "store_nbr": NaN, "item_nbr": 103520}]}'
    r = client.post("/v1/predict", content=nan_body.encode())
    assert r.status_code == 422 and r.json()["error"]["details"][0]["rule"] == "finite"


def test_body_size_cap(served):
    client, *_ = served
    r = client.post("/v1/predict", content=json.dumps({"instances": [ROW], "pad": "x" * 5000}).encode())
    assert r.status_code == 413 and r.json()["error"]["details"][0]["rule"] == "max_body_bytes"


def test_503_without_model():
    from starlette.testclient import TestClient

    client = TestClient(create_app(ModelSlot(), AgentMetrics(), device_id="store-9"))
    r = client.post("/v1/predict", json={"instances": [ROW]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_model"
    from edgeship import __version__

    assert client.get("/healthz").json() == {
        "status": "no_model", "device_id": "store-9", "model": None, "version": __version__
    }


def test_healthz_and_metrics(served):
    client, predictor, metrics = served
    metrics.set_model(predictor.info)
    client.post("/v1/predict", json={"instances": [ROW, ROW]})
    client.post("/v1/predict", json={"instances": [{**ROW, "store_nbr": 999}]})
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["device_id"] == "store-1"
    assert h["model"]["version"] == 1 and h["model"]["digest"] == predictor.digest
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    info = [line for line in text.splitlines() if line.startswith("edgeship_model_info{")]
    assert len(info) == 1 and 'version="1"' in info[0] and f'digest="{predictor.digest}"' in info[0]
    assert 'edgeship_requests_total{outcome="ok",transport="http"} 1.0' in text
    assert 'edgeship_requests_total{outcome="invalid",transport="http"} 1.0' in text
    assert "edgeship_predicted_rows_total 2.0" in text
    assert 'edgeship_stage_duration_seconds_count{stage="infer"} 1.0' in text
    assert "edgeship_request_duration_seconds_bucket" in text and "process_resident_memory_bytes" in text
    metrics.set_model(None)
    assert "edgeship_model_info{" not in client.get("/metrics").text


def test_real_server_on_ephemeral_port(bundle):
    slot = ModelSlot()
    slot.swap(Predictor.open(bundle[0], trust=[bundle[1]], runtime="fake"))
    server = HttpServer(create_app(slot, AgentMetrics(), device_id="store-1"), "127.0.0.1", 0)
    server.start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=server.url) as client:
            for _ in range(3):  # keep-alive connection reused
                r = client.post("/v1/predict", json={"instances": [ROW]})
                assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    finally:
        server.stop()
        slot.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=1)
