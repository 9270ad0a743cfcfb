"""Error answers have one renderer: an answer given before Flask (admission's 503, the body
deadline's 408) is the very answer Flask gives for the same failure."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from eventing.errors import Overloaded, StreamNotAnswering
from proxy import problems
from tests.proxy.conftest import RecordingPublisher

BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "myapp", "ce-type": "order.v1"}
LEGACY = (
    b'{"event-type": "order.created", "event-type-version": "v1",'
    b' "event-time": "2020-04-02T21:37:00Z", "data": {}}'
)


@pytest.mark.parametrize(
    ("path", "route", "headers", "body"),
    [
        ("/publish", "/publish", BINARY, b"{}"),
        ("/app/v1/events", problems.LEGACY_ROUTE, {}, LEGACY),
    ],
    ids=["publish", "legacy"],
)
@pytest.mark.parametrize(
    "error",
    [Overloaded("too busy; retry later", retry_after=3), StreamNotAnswering("no PubAck in 5s")],
    ids=["overloaded", "no-puback"],
)
def test_an_answer_before_flask_is_the_answer_flask_gives(
    client: FlaskClient,
    publisher: RecordingPublisher,
    path: str,
    route: str,
    headers: dict[str, str],
    body: bytes,
    error: Overloaded | StreamNotAnswering,
) -> None:
    publisher.fail = lambda index, message: error
    answered = client.post(path, headers=headers, data=body)
    early_headers, early_body = problems.early_failure(route, error)
    assert answered.status_code == error.status
    assert answered.get_data() == early_body
    assert sorted(answered.headers.items()) == sorted(early_headers)
    assert ("Retry-After" in answered.headers) is isinstance(error, Overloaded)


def test_an_early_answer_on_no_route_of_ours_is_a_problem_document() -> None:
    headers, body = problems.early_answer(None, 408, "Request Timeout", "too slow", {})
    assert dict(headers)["Content-Type"] == "application/problem+json"
    assert dict(headers)["Content-Length"] == str(len(body))
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Request Timeout",
        "status": 408,
        "detail": "too slow",
    }
