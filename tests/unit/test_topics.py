"""The one topic module: every topic is built and parsed there."""

import pytest

from models import topics


def test_device_topics():
    assert topics.availability("default", "store-1") == "edgeship/default/store-1/availability"
    assert topics.state("f1", "d_2") == "edgeship/f1/d_2/state"
    assert topics.command("f1", "d") == "edgeship/f1/d/set"
    assert topics.request("f1", "d", "predict") == "edgeship/f1/d/request/predict"
    assert topics.response("f1", "d", "predict") == "edgeship/f1/d/response/predict"


def test_model_and_chunk_topics_roundtrip():
    assert topics.model_announce("default", "favorita-demand") == "edgeship/default/models/favorita-demand/announce"
    t = topics.bundle_chunk("default", "abc123", 17)
    assert t == "edgeship/default/bundles/abc123/chunk/17"
    assert topics.parse_chunk_topic(t) == ("default", "abc123", 17)
    assert topics.bundle_chunks("default", "abc123") == "edgeship/default/bundles/abc123/chunk/+"


@pytest.mark.parametrize("bad", ["Store1", "a/b", "+", "#", "", "x" * 65, "a b"])
def test_ids_are_validated(bad):
    with pytest.raises(ValueError, match=r"\[a-z0-9_-\]"):
        topics.availability("default", bad)


@pytest.mark.parametrize("bad", ["edgeship/default/bundles/x/chunk/-1", "edgeship/default/models/x/announce", "other/default/bundles/x/chunk/1"])
def test_parse_rejects_non_chunk_topics(bad):
    with pytest.raises(ValueError):
        topics.parse_chunk_topic(bad)


def test_reserved_device_ids():
    with pytest.raises(ValueError, match="reserved"):
        topics.state("default", "models")
