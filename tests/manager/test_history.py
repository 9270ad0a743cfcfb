"""The pure parts of the delivery history: the ``GET /events`` answer and subject matching."""

from __future__ import annotations

from dataclasses import replace

import pytest

from eventing.delivery.ledger import AttemptRecord, Record
from manager import history
from manager.history import Pending

RETRYING = Record(
    subscription="default/orders",
    source="shop",
    id="A-1",
    type="order.created.v1",
    sequence=7,
    origin="live",
    outcome="retrying",
    time=1_700_000_001.0,
    attempt=AttemptRecord(1, 1_700_000_000.0, 0.25, "timeout", None, "no answer within 5s"),
    reason="no answer within 5s",
)
DELIVERED = replace(
    RETRYING,
    outcome="delivered",
    time=1_700_000_003.0,
    attempt=AttemptRecord(2, 1_700_000_002.0, 0.01, "answered", 204, "", "ok"),
    reason="",
)


def test_a_subscription_shows_its_last_outcome_and_every_attempt_in_order() -> None:
    shown = history.history("shop", "A-1", "", [RETRYING, DELIVERED], {})
    assert shown == {
        "source": "shop",
        "id": "A-1",
        "type": "order.created.v1",
        "subscriptions": {
            "default/orders": {
                "outcome": "delivered",
                "sequence": 7,
                "reason": "",
                "attempts": [
                    {
                        "number": 1,
                        "time": "2023-11-14T22:13:20.000Z",
                        "seconds": 0.25,
                        "kind": "timeout",
                        "error": "no answer within 5s",
                    },
                    {
                        "number": 2,
                        "time": "2023-11-14T22:13:22.000Z",
                        "seconds": 0.01,
                        "kind": "answered",
                        "status": 204,
                        "answer": "ok",
                    },
                ],
            }
        },
    }


def test_a_waiting_subscription_is_pending_beside_one_with_records() -> None:
    shown = history.history(
        "shop", "A-1", "order.created.v1", [RETRYING], {"default/audit": Pending(7, "held")}
    )
    assert shown["subscriptions"]["default/audit"] == {
        "outcome": "pending",
        "sequence": 7,
        "reason": "held",
        "attempts": [],
    }
    assert list(shown["subscriptions"]) == ["default/audit", "default/orders"]
    assert shown["subscriptions"]["default/orders"]["outcome"] == "retrying"


def test_a_dead_letter_without_an_attempt_lists_none() -> None:
    shed = replace(RETRYING, outcome="dead-lettered", attempt=None, reason="backlog shed")
    entry = history.history("shop", "A-1", "", [shed], {})["subscriptions"]["default/orders"]
    assert (entry["outcome"], entry["reason"], entry["attempts"]) == (
        "dead-lettered",
        "backlog shed",
        [],
    )


def test_a_dead_letter_sinks_deliveries_are_shown_apart_and_leave_the_outcome() -> None:
    lettered = replace(RETRYING, outcome="dead-lettered", reason="out of attempts")
    sent = replace(DELIVERED, origin="dead-letter-sink", sequence=3)
    entry = history.history("shop", "A-1", "", [lettered, sent], {})["subscriptions"][
        "default/orders"
    ]
    assert (entry["outcome"], entry["sequence"], len(entry["attempts"])) == (
        "dead-lettered",
        7,
        1,
    )
    assert entry["deadLetterSink"]["outcome"] == "delivered"
    assert [a["status"] for a in entry["deadLetterSink"]["attempts"]] == [204]


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("kyma.shop.order.v1", "kyma.shop.order.v1", True),
        ("kyma.shop.*.v1", "kyma.shop.order.v1", True),
        ("kyma.shop.>", "kyma.shop.order.v1", True),
        ("kyma.shop.>", "kyma.shop", False),
        ("kyma.shop.order", "kyma.shop.order.v1", False),
        ("kyma.shop.order.v1.x", "kyma.shop.order.v1", False),
        ("kyma.*.order.v1", "kyma.shop.refund.v1", False),
    ],
)
def test_subjects_match_as_nats_matches_them(pattern: str, subject: str, matches: bool) -> None:
    assert history._subject_matches(pattern, subject) is matches
