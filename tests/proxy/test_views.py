"""The proxy's HTTP contract, with a recording publisher in place of JetStream."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from eventing import settings
from eventing.errors import BackendUnavailable, Overloaded, StreamFull, StreamNotAnswering
from eventing.settings import Settings
from proxy import create_app
from testing.servers import wait_until
from tests.proxy.conftest import RecordingPublisher

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "A234-1234-1234",
    "ce-source": "myapp",
    "ce-type": "order.created.v1",
    "Content-Type": "application/json",
}
EVENT = {
    "specversion": "1.0",
    "id": "1",
    "source": "myapp",
    "type": "order.created.v1",
    "data": {"a": 1},
}
LEGACY = {
    "event-type": "order.created",
    "event-type-version": "v1",
    "event-time": "2020-04-02T21:37:00Z",
    "data": {"a": 1},
}


def stored(publisher: RecordingPublisher, index: int = 0) -> dict[str, Any]:
    return dict(json.loads(publisher.messages[index].payload))


def test_binary_publish(client: FlaskClient, publisher: RecordingPublisher) -> None:
    response = client.post("/publish", headers=BINARY, data=b'{"a": 1}')
    assert response.status_code == 204
    assert response.data == b""
    [message] = publisher.messages
    assert message.subject == "kyma.myapp.order.created.v1"
    assert message.headers["ce-type"] == "order.created.v1"
    assert message.headers["ce-source"] == "myapp"
    assert message.headers["ce-id"] == "A234-1234-1234"
    assert message.headers["Content-Type"] == "application/json"
    assert len(message.headers["Nats-Msg-Id"]) == 32
    event = stored(publisher)
    assert base64.b64decode(event["data_base64"]) == b'{"a": 1}'
    assert event["originaltype"] == "order.created.v1"


def test_structured_publish(client: FlaskClient, publisher: RecordingPublisher) -> None:
    response = client.post(
        "/publish", data=json.dumps(EVENT), content_type="application/cloudevents+json"
    )
    assert response.status_code == 204
    assert publisher.messages[0].subject == "kyma.myapp.order.created.v1"
    assert stored(publisher)["data"] == {"a": 1}


def test_batch_publish(client: FlaskClient, publisher: RecordingPublisher) -> None:
    batch = [{**EVENT, "id": str(i), "type": f"t{i}.created.v1"} for i in range(3)]
    response = client.post(
        "/publish", data=json.dumps(batch), content_type="application/cloudevents-batch+json"
    )
    assert response.status_code == 204
    assert [m.subject for m in publisher.messages] == [
        f"kyma.myapp.t{i}.created.v1" for i in range(3)
    ]


def test_same_source_and_id_get_the_same_dedup_id(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    for _ in range(2):
        client.post("/publish", headers=BINARY, data=b"{}")
    client.post("/publish", headers={**BINARY, "ce-id": "other"}, data=b"{}")
    ids = [m.headers["Nats-Msg-Id"] for m in publisher.messages]
    assert ids[0] == ids[1] != ids[2]


def test_prefixed_type_goes_to_the_legacy_subject(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    headers = {
        **BINARY,
        "ce-type": "sap.kyma.custom.commerce.order.created.v1",
        "ce-source": "kyma",
    }
    assert client.post("/publish", headers=headers, data=b"{}").status_code == 204
    assert publisher.messages[0].subject == "kyma.sap.kyma.custom.commerce.order.created.v1"
    assert stored(publisher)["originaltype"] == "sap.kyma.custom.commerce.order.created.v1"


def test_trace_headers_are_carried_as_extensions(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    headers = {
        **BINARY,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-B3-Sampled": "1",
    }
    client.post("/publish", headers=headers, data=b"{}")
    event = stored(publisher)
    assert event["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert event["b3sampled"] == "1"


def test_invalid_event_is_a_problem_document_and_stores_nothing(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    response = client.post(
        "/publish",
        data=json.dumps({**EVENT, "type": ""}),
        content_type="application/cloudevents+json",
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["attribute"] == "type"
    assert problem["status"] == 400
    assert "non-empty string" in problem["detail"]
    assert publisher.messages == []


def test_empty_segments_after_cleaning(client: FlaskClient) -> None:
    response = client.post("/publish", headers={**BINARY, "ce-type": "order.>.v1"}, data=b"{}")
    assert response.status_code == 400
    assert "empty segments" in response.get_json()["detail"]


def test_invalid_batch_stores_nothing_and_names_indexes(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    batch = [EVENT, {**EVENT, "id": "2", "type": "a..b"}, {**EVENT, "source": ""}]
    response = client.post(
        "/publish", data=json.dumps(batch), content_type="application/cloudevents-batch+json"
    )
    assert response.status_code == 400
    assert [e["index"] for e in response.get_json()["errors"]] == [1, 2]
    assert publisher.messages == []


def test_no_cloudevent_is_415(client: FlaskClient) -> None:
    response = client.post("/publish", data=b'{"a": 1}', content_type="application/json")
    assert response.status_code == 415
    assert "binary mode" in response.get_json()["detail"]


def test_oversized_body_is_413_on_publish(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    response = client.post("/publish", headers=BINARY, data=b"x" * 5000)
    assert response.status_code == 413
    assert "MAX_REQUEST_SIZE" in response.get_json()["detail"]
    assert publisher.messages == []


def test_oversized_body_is_413_on_legacy_in_kymas_shape(client: FlaskClient) -> None:
    response = client.post("/app/v1/events", data=b"x" * 5000)
    assert response.status_code == 413
    assert response.get_json() == {
        "status": 413,
        "type": "request_body_too_large",
        "message": "Request body too large",
        "moreInfo": "http: request body too large",
    }


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BackendUnavailable("not connected to NATS"), 502),
        (StreamNotAnswering("no stream answered"), 504),
        (StreamFull("the stream is full"), 507),
    ],
)
def test_publish_failures_map_to_kymas_codes(
    client: FlaskClient, publisher: RecordingPublisher, error: Exception, status: int
) -> None:
    publisher.fail = lambda index, message: error  # type: ignore[assignment,return-value]
    response = client.post("/publish", headers=BINARY, data=b"{}")
    assert response.status_code == status
    assert response.get_json()["detail"] == str(error)
    legacy = client.post("/app/v1/events", json=LEGACY)
    assert legacy.status_code == status
    assert legacy.get_json() == {"status": status, "message": str(error)}


def test_overload_is_503_with_retry_after(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    def overloaded(index: int, message: object) -> Overloaded:
        raise Overloaded("too many in flight", retry_after=3)

    publisher.fail = overloaded  # type: ignore[assignment]
    response = client.post("/publish", headers=BINARY, data=b"{}")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"


def test_partial_batch_failure_says_what_failed(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    publisher.fail = lambda index, message: StreamFull("full") if index == 1 else None  # type: ignore[assignment]
    batch = [{**EVENT, "id": str(i)} for i in range(3)]
    response = client.post(
        "/publish", data=json.dumps(batch), content_type="application/cloudevents-batch+json"
    )
    assert response.status_code == 507
    assert response.get_json()["errors"] == [{"index": 1, "status": 507, "detail": "full"}]
    assert len(publisher.messages) == 2


def test_legacy_publish(client: FlaskClient, publisher: RecordingPublisher) -> None:
    event_id = "8954ad1c-78ed-4c58-a639-68bd44031de0"
    response = client.post("/commerce/v1/events", json={**LEGACY, "event-id": event_id})
    assert response.status_code == 200
    assert response.get_json() == {"event-id": event_id, "status": "", "reason": ""}
    [message] = publisher.messages
    assert message.subject == "kyma.sap.kyma.custom.commerce.order.created.v1"
    event = stored(publisher)
    assert (event["source"], event["type"], event["data"]) == (
        "commerce",
        "order.created.v1",
        {"a": 1},
    )


def test_legacy_generated_id_is_the_stored_id(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    response = client.post("/commerce/v1/events", json=LEGACY)
    assert response.get_json()["event-id"] == stored(publisher)["id"]


def test_legacy_validation_error_in_kymas_shape(client: FlaskClient) -> None:
    response = client.post("/app/v1/events", json={**LEGACY, "event-time": "soon"})
    assert response.status_code == 400
    assert response.get_json() == {
        "status": 400,
        "type": "validation_violation",
        "message": "Invalid field",
        "details": [{"field": "event-time", "type": "invalid_field", "message": "Invalid field"}],
    }


def test_legacy_empty_body(client: FlaskClient) -> None:
    response = client.post("/app/v1/events", data=b"")
    assert response.get_json() == {
        "status": 400,
        "type": "bad_payload_syntax",
        "message": "Bad payload syntax",
        "moreInfo": "Bad payload syntax",
    }


def test_unknown_paths_and_methods_are_json_problems(client: FlaskClient) -> None:
    missing = client.get("/nothing/here")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    wrong = client.get("/publish")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]


def test_health_and_readiness(client: FlaskClient, publisher: RecordingPublisher) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    publisher.is_ready = False
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 500


def test_metrics_use_kymas_names(client: FlaskClient) -> None:
    client.post("/publish", headers=BINARY, data=b"{}")
    batch = [{**EVENT, "id": f"b{i}", "source": source} for i, source in enumerate("aab")]
    client.post("/publish", json=batch, content_type="application/cloudevents-batch+json")
    client.post("/app/v1/events", data=b"")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'eventing_epp_requests_total{code="204",method="POST",path="/publish"} 2.0' in text
    assert (
        'eventing_epp_requests_total{code="400",method="POST",path="/{application}/v1/events"} 1.0'
        in text
    )
    assert (
        "eventing_epp_event_type_published_total"
        '{code="204",event_source="myapp",event_type="order.created.v1"} 1.0' in text
    )
    assert 'event_source="a",event_type="order.created.v1"} 2.0' in text  # of the batch
    assert 'event_source="b",event_type="order.created.v1"} 1.0' in text
    assert "eventing_epp_backend_duration_milliseconds_bucket" in text
    assert "eventing_epp_requests_duration_seconds_bucket" in text
    assert "eventing_epp_health 1.0" in text


def test_metrics_sum_every_processs_snapshot_with_our_own_live_values(
    publisher: RecordingPublisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under eventing-proxy each process snapshots its values; any one answers the scrape."""
    monkeypatch.setenv(settings.METRICS_SNAPSHOTS_DIR, str(tmp_path))
    client = create_app(Settings.from_environ({}), publisher=publisher).test_client()
    own = tmp_path / f"{os.getpid()}.json"

    def published() -> str:
        text = client.get("/metrics").get_data(as_text=True)
        found = re.search(r'eventing_epp_requests_total\{code="204",[^}]*\} (\S+)', text)
        assert "_created" not in text and "eventing_epp_health 1.0" in text  # a max, not a sum
        return found[1] if found else "none"

    for number in range(3):
        client.post("/publish", headers={**BINARY, "ce-id": str(number)}, data=b"{}")
    wait_until(own.exists, 5, "a snapshot of this process's values")  # written in the background
    own.rename(tmp_path / "1.json")  # as if another process, since ended, had written it
    assert published() == "6.0"  # its three, and our three as they are now
    client.post("/publish", headers={**BINARY, "ce-id": "later"}, data=b"{}")
    assert published() == "7.0"


def test_metric_labels_from_publishers_are_bounded(publisher: RecordingPublisher) -> None:
    """62,000 distinct event types in 20 s made /metrics 6.4 MB and doubled the proxy's memory:
    every type and method a client sends was a new series."""
    settings = Settings.from_environ({"PROXY_METRICS_MAX_EVENT_TYPES": "3"})
    client = create_app(settings, publisher=publisher).test_client()
    for number in range(10):
        headers = {**BINARY, "ce-id": str(number), "ce-type": f"order.kind{number}.v1"}
        assert client.post("/publish", headers=headers, data=b"{}").status_code == 204
    for method in ("FOO", "BAR", "BAZ", "get"):
        client.open("/publish", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    published = re.findall(r"eventing_epp_event_type_published_total\{(.*)\} (\S+)", text)
    assert len(published) == 4, published  # three types, and "other" for the seven later ones
    assert ('code="204",event_source="other",event_type="other"', "7.0") in published
    methods = set(re.findall(r'eventing_epp_requests_total\{code="\d+",method="([^"]*)"', text))
    assert methods == {"POST", "GET", "other"}


def test_an_unexpected_error_is_a_500_problem_without_traceback(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    def broken(index: int, message: object) -> None:
        raise RuntimeError("secret internals")

    publisher.fail = broken  # type: ignore[assignment]
    response = client.post("/publish", headers=BINARY, data=b"{}")
    assert response.status_code == 500
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_subscribed_answers_from_the_subscription_folder(
    tmp_path: Path, publisher: RecordingPublisher
) -> None:
    (tmp_path / "subs.yaml").write_text(
        """
apiVersion: eventing.kyma-project.io/v1alpha2
kind: Subscription
metadata: {name: orders}
spec: {sink: "http://127.0.0.1:1/", source: commerce, types: [order.created.v1, order.paid.v2]}
---
apiVersion: eventing.kyma-project.io/v1alpha2
kind: Subscription
metadata: {name: broken}
spec: {sink: "", source: commerce, types: [ignored.v1]}
"""
    )
    settings = Settings.from_environ({"SUBSCRIPTIONS_DIR": str(tmp_path)})
    client = create_app(settings, publisher=publisher).test_client()
    response = client.get("/commerce/v1/events/subscribed")
    assert response.status_code == 200
    assert response.get_json() == {
        "eventsInfo": [
            {"name": "order.created", "version": "v1"},
            {"name": "order.paid", "version": "v2"},
        ]
    }
    assert client.get("/other/v1/events/subscribed").get_json() == {"eventsInfo": []}
