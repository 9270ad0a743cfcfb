"""Regressions found by ``bench/fuzz.py``: valid-looking input the later stages cannot carry, and
bodies cut short, are refused with a 4xx and never stored."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from proxy.guards import MAX_DATA_DEPTH, MAX_SUBJECT_BYTES
from tests.proxy.conftest import RecordingPublisher

STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BATCH = {"Content-Type": "application/cloudevents-batch+json"}
BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "1",
    "ce-source": "myapp",
    "ce-type": "order.created.v1",
}


def _event(data: bytes) -> bytes:
    head = b'{"specversion": "1.0", "id": "1", "source": "myapp", "type": "order.created.v1"'
    return head + b', "data": ' + data + b"}"


def _legacy(data: bytes) -> bytes:
    head = b'{"event-type": "order.created", "event-type-version": "v1"'
    return head + b', "event-time": "2020-04-02T21:37:00Z", "data": ' + data + b"}"


def _post(client: FlaskClient, mode: str, data: bytes) -> Any:
    if mode == "legacy":
        return client.post("/app/v1/events", data=_legacy(data))
    if mode == "batch":
        return client.post("/publish", data=b"[" + _event(data) + b"]", headers=BATCH)
    return client.post("/publish", data=_event(data), headers=STRUCTURED)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("mode", ["structured", "batch", "legacy"])
@pytest.mark.parametrize(
    "data",
    [
        _nested(MAX_DATA_DEPTH + 1),
        _nested(980),  # parsed, then too deep to encode: was a 500
        b'{"a": ' * (MAX_DATA_DEPTH + 1) + b"1" + b"}" * (MAX_DATA_DEPTH + 1),
        b"1e999999",  # overflows to infinity, stored as Infinity: no JSON
        b'{"a": [NaN]}',
        b"-Infinity",
    ],
    ids=["depth-257", "depth-980", "objects-257", "1e999999", "NaN", "-Infinity"],
)
def test_data_no_stage_can_carry_is_refused(
    client: FlaskClient, publisher: RecordingPublisher, mode: str, data: bytes
) -> None:
    response = _post(client, mode, data)
    assert response.status_code == 400
    assert publisher.messages == []
    if mode == "legacy":
        assert response.json["type"] == "bad_payload_syntax"
    else:  # "body" where the parser itself gives up first, as it may at depth 980
        problem = response.json
        assert (problem["errors"][0] if "errors" in problem else problem)["attribute"] in (
            "data",
            "body",
        )


@pytest.mark.parametrize("mode", ["structured", "batch", "legacy"])
def test_data_at_the_depth_limit_and_huge_finite_numbers_are_stored(
    client: FlaskClient, publisher: RecordingPublisher, mode: str
) -> None:
    assert _post(client, mode, _nested(MAX_DATA_DEPTH)).status_code in (200, 204)
    assert _post(client, mode, b"[1e308, " + b"9" * 1000 + b"]").status_code in (200, 204)
    assert len(publisher.messages) == 2


@pytest.mark.parametrize("header", ["ce-type", "ce-source"])
def test_a_subject_longer_than_nats_carries_is_refused(
    client: FlaskClient, publisher: RecordingPublisher, header: str
) -> None:
    """nats-server closes the connection on a publish line over 4 KiB, and nats-py then
    never reconnects: one such event cut a proxy process off NATS."""
    value = "x" * (MAX_SUBJECT_BYTES + 1) + ".v1"
    response = client.post("/publish", headers={**BINARY, header: value}, data=b"{}")
    assert response.status_code == 400
    assert response.json["attribute"] == "type"
    assert "subject" in response.json["detail"]
    assert publisher.messages == []


def test_a_long_legacy_application_name_is_refused_in_kymas_shape(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    response = client.post(f"/{'a' * MAX_SUBJECT_BYTES}/v1/events", data=_legacy(b"{}"))
    assert response.status_code == 400
    assert response.json["type"] == "bad_payload_syntax"
    assert publisher.messages == []


@pytest.mark.parametrize(
    ("path", "headers"), [("/publish", BINARY), ("/app/v1/events", {})], ids=["publish", "legacy"]
)
def test_a_body_shorter_than_its_content_length_is_refused(
    client: FlaskClient, publisher: RecordingPublisher, path: str, headers: dict[str, str]
) -> None:
    """What granian hands over when the client goes away mid-body: a stream that simply ends.
    It was stored cut off (and the client's full retry then dropped as a duplicate)."""
    body = _legacy(b'{"orderId": 42}')
    response = client.post(
        path,
        headers=headers,
        input_stream=io.BytesIO(body[:20]),
        environ_overrides={"CONTENT_LENGTH": str(len(body)), "wsgi.input_terminated": True},
    )
    assert response.status_code == 400
    assert "20 of the" in json.dumps(response.json)
    assert publisher.messages == []
