"""Dead letters' headers, read back, and the event a dead-letter sink receives (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from eventing.delivery import deadletters, jobs
from eventing.delivery.deadletters import Letter, knative_event
from eventing.delivery.retries import DeliveryPolicy

STORED = json.dumps(
    {"specversion": "1.0", "id": "a b%1", "source": "/shop\u00e9", "type": "t.v1", "data": 1}
)


def job(**changes: object) -> jobs.DeliveryJob:
    fields: dict[str, object] = {
        "event": STORED,
        "sink": "https://user:secret@sink.example/in",
        "subscription": "ns/orders",
        "event_type": "t.v1",
        "consumer": "c0ffee",
        "ack_subject": "$JS.ACK.sap.c0ffee.1.7.7.1.0",
        "stream_sequence": 7,
        "delivery_count": 1,
        "ack_wait": 30.0,
        "policy": DeliveryPolicy(1, "exponential", 1.0, 60.0, 5.0, 60.0, 15.0),
        **changes,
    }
    return jobs.DeliveryJob(**fields)  # type: ignore[arg-type]


def test_a_dead_letter_carries_the_events_identity_the_answer_and_the_origin() -> None:
    answer = b"x" * 2000
    message = jobs.dead_letter(job(origin="replay"), "refused", 400, 3, answer=answer)
    letter = Letter.of(12, message.subject, message.headers, 1700000000.0)
    assert (letter.source, letter.id) == ("/shop\u00e9", "a b%1")  # whole, whatever they hold
    assert letter.answer == answer[: deadletters.ANSWER_LIMIT]
    assert (letter.origin, letter.status, letter.attempts) == ("replay", 400, 3)
    assert letter.consumer == "c0ffee" and letter.sink == "https://***@sink.example/in"
    assert all(value.isascii() for value in message.headers.values())
    assert letter.shown()["time"] == "2023-11-14T22:13:20.000Z"


def test_a_letter_with_headers_missing_or_mangled_reads_as_empty() -> None:
    headers = {deadletters.STATUS: "five", deadletters.ANSWER: "!!!", deadletters.ATTEMPTS: ""}
    letter = Letter.of(1, "dlq.c", headers, 0.0)
    assert (letter.status, letter.answer, letter.attempts, letter.origin) == (None, b"", 0, "live")


@pytest.mark.parametrize(
    ("reason", "since", "expected"),
    [("", None, True), ("BACKLOG", None, True), ("timeout", None, False), ("", 11.0, False)],
)
def test_filters_match_the_reason_in_any_case_and_the_time(
    reason: str, since: float | None, expected: bool
) -> None:
    letter = Letter.of(1, "dlq.c", {deadletters.REASON: "backlog limit reached"}, 10.0)
    assert letter.matches(reason, since) is expected


def test_the_dead_letter_sinks_event_has_knatives_extensions() -> None:
    message = jobs.dead_letter(job(), "sink answered 503", 503, 1, answer=b"try later")
    letter = Letter.of(3, message.subject, message.headers, 0.0)
    event = json.loads(knative_event(STORED, letter))
    assert event["knativeerrorcode"] == "503"
    assert event["knativeerrordest"] == "https://***@sink.example/in"  # no credentials
    assert base64.b64decode(event["knativeerrordata"]) == b"try later"
    assert event["data"] == 1 and event["id"] == "a b%1"


def test_a_sink_that_never_answered_gives_no_error_code_nor_data() -> None:
    message = jobs.dead_letter(job(), "connection refused", None, 1)
    event = json.loads(knative_event(STORED, Letter.of(3, message.subject, message.headers, 0.0)))
    assert "knativeerrorcode" not in event and "knativeerrordata" not in event
