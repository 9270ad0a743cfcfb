"""Subscription status: Kyma's shape, and the manager's status view (pure, clock passed in)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from eventing.errors import InvalidSubscription
from eventing.subscriptions.status import (
    Delivery,
    LastError,
    View,
    keep_transition_times,
    shed_reason,
    status_invalid,
    status_of,
    view,
)
from tests.eventing.test_subscription import manifest, parse

EARLIER = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
LATER = datetime(2026, 1, 1, 12, 5, 0, tzinfo=UTC)


def invalid(document: dict[str, Any]) -> InvalidSubscription:
    with pytest.raises(InvalidSubscription) as caught:
        parse(document)
    return caught.value


@dataclass(frozen=True)
class Unreadable:
    file: str
    problem: str


def conditions(item: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {
        c["type"]: (c["status"], c["message"], c["lastTransitionTime"])
        for c in item["status"]["conditions"]
    }


def test_status_in_kymas_shape() -> None:
    subscription = parse(manifest())
    status = status_of(subscription)
    assert status["ready"] is True
    assert status["types"] == [
        {"originalType": "order.received.v1", "cleanType": "order.received.v1"}
    ]
    assert status["backend"]["types"] == [
        {"originalType": "order.received.v1", "consumerName": "f35b73b3b82a5b1a2a7a8ab796a9e68b"}
    ]
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Subscription spec valid", "True", "Subscription spec has no validation errors"),
        ("Subscription active", "True", "NATS Subscription active"),
        ("Backlog within limit", "True", "Backlog within limit"),
        ("Sink allowed", "True", "Sink allowed by the egress policy"),
        ("Sink delivering", "True", "Sink accepts events"),
    ]
    failing = status_of(subscription, "nats: JetStream system temporarily unavailable")
    assert failing["ready"] is False
    assert failing["conditions"][1]["reason"] == "NATS Subscription not active"
    assert failing["conditions"][1]["message"] == "nats: JetStream system temporarily unavailable"
    shedding = status_of(subscription, shedding="120 events dead-lettered")
    assert shedding["ready"] is True
    assert shedding["conditions"][2]["status"] == "False"
    assert shedding["conditions"][2]["message"] == "120 events dead-lettered"


def test_invalid_status_clears_types_and_keeps_one_condition() -> None:
    with pytest.raises(InvalidSubscription) as caught:
        parse(manifest({"sink": ""}))
    status = status_invalid(caught.value)
    assert status["ready"] is False and status["types"] == []
    [condition] = status["conditions"]
    assert (condition["type"], condition["status"]) == ("Subscription spec valid", "False")
    assert condition["reason"] == "Subscription spec has validation errors"
    assert "spec.sink" in condition["message"]


def test_the_view_lists_valid_and_invalid_subscriptions_in_order_with_their_spec() -> None:
    good = parse(manifest({"delivery": {"backoffDelay": "PT1S"}}))
    bad = invalid(manifest({"sink": "not a url"}, name="broken", namespace="shop"))

    shown = view([good, bad], [Unreadable("x.yaml", "not a regular file")], now=EARLIER)

    assert shown.ready is True
    first, second = shown.items
    assert first["apiVersion"] == "eventing.kyma-project.io/v1alpha2"
    assert first["kind"] == "Subscription"
    assert first["metadata"] == {"namespace": "default", "name": "lastorder-sub"}
    assert first["spec"]["delivery"] == {"backoffDelay": "PT1S"}  # as written, no defaults
    assert first["status"] == status_of(good, now=EARLIER)
    assert second["metadata"] == {"namespace": "shop", "name": "broken"}
    assert "spec" not in second  # an invalid spec is not echoed
    assert second["status"] == status_invalid(bad, now=EARLIER)
    assert shown.by_key == {"default/lastorder-sub": first, "shop/broken": second}
    assert shown.unreadable == ({"file": "x.yaml", "problem": "not a regular file"},)


def test_a_consumer_error_makes_only_its_subscription_not_ready() -> None:
    failing = parse(manifest())
    fine = parse(manifest(name="other"))
    [binding] = failing.bindings

    shown = view([failing, fine], errors={binding.consumer_name: "maximum consumers limit"})

    assert shown.ready is True  # NATS was reached: the manager is ready
    assert shown.by_key["default/lastorder-sub"]["status"]["ready"] is False
    active = conditions(shown.by_key["default/lastorder-sub"])["Subscription active"]
    assert active[:2] == ("False", "maximum consumers limit")
    assert shown.by_key["default/other"]["status"]["ready"] is True


def test_a_problem_reaching_nats_makes_everything_not_ready() -> None:
    shown = view([parse(manifest()), parse(manifest(name="other"))], problem="NATS down")

    assert shown.ready is False
    for item in shown.items:
        assert item["status"]["ready"] is False
        assert conditions(item)["Subscription active"][:2] == ("False", "NATS down")


def test_shedding_is_shown_per_type_and_keeps_the_subscription_ready() -> None:
    subscription = parse(manifest({"types": ["order.received.v1", "order.paid.v1"]}))
    received, _paid = subscription.bindings

    shown = view([subscription], shedding={received.consumer_name: "12 events moved"})

    [item] = shown.items
    assert item["status"]["ready"] is True
    backlog = conditions(item)["Backlog within limit"]
    assert backlog[:2] == ("False", "order.received.v1: 12 events moved")


def test_an_unchanged_condition_keeps_its_transition_time_and_a_changed_one_moves() -> None:
    subscription = parse(manifest())
    [binding] = subscription.bindings
    first = view([subscription], now=EARLIER)

    same = view([subscription], previous=first, now=LATER)
    failing = view(
        [subscription], errors={binding.consumer_name: "gone"}, previous=first, now=LATER
    )

    assert same.items == first.items
    changed = conditions(failing.items[0])
    assert changed["Subscription active"] == ("False", "gone", "2026-01-01T12:05:00Z")
    assert changed["Subscription spec valid"][2] == "2026-01-01T12:00:00Z"


def test_a_subscription_gone_from_the_source_is_gone_from_the_view() -> None:
    first = view([parse(manifest()), parse(manifest(name="other"))])

    shown = view([parse(manifest(name="other"))], previous=first)

    assert list(shown.by_key) == ["default/other"]


def test_the_empty_view_is_not_ready() -> None:
    assert View().ready is False and View().items == () and dict(View().by_key) == {}


def test_keep_transition_times_ignores_conditions_the_old_status_lacks() -> None:
    old = {
        "conditions": [
            {
                "type": "A",
                "status": "True",
                "reason": "r",
                "message": "",
                "lastTransitionTime": "then",
            }
        ]
    }
    new = {
        "conditions": [
            {
                "type": "A",
                "status": "True",
                "reason": "r",
                "message": "",
                "lastTransitionTime": "now",
            },
            {
                "type": "B",
                "status": "True",
                "reason": "r",
                "message": "",
                "lastTransitionTime": "now",
            },
        ]
    }

    kept = keep_transition_times(old, new)

    assert [c["lastTransitionTime"] for c in kept["conditions"]] == ["then", "now"]


def test_the_shed_reason_names_the_count_the_stream_the_time_and_the_limit() -> None:
    reason = shed_reason(120, EARLIER.timestamp(), dead_letter_stream="sap-dlq", max_backlog=1000)

    assert reason == (
        "120 oldest waiting events moved to the dead-letter stream sap-dlq"
        " (last at 2026-01-01T12:00:00Z): more than MAX_BACKLOG=1000 events were waiting"
    )


def delivering(status: dict[str, Any]) -> tuple[str, str, str]:
    (found,) = (c for c in status["conditions"] if c["type"] == "Sink delivering")
    return found["status"], found["reason"], found["message"]


def test_a_failing_sink_shows_in_the_delivery_figures_and_its_condition() -> None:
    """Issue 15: a sink that kept failing left the subscription with every condition True and
    no figure saying so."""
    subscription = parse(manifest())
    failing = Delivery(
        delivered=5,
        dead_lettered=1,
        retrying=2,
        last_error=LastError(time=1_767_268_800.0, status=503, reason="HTTP 503"),
        failing_since=1_767_268_740.0,
        failing="3 attempts in a row failed since 2026-01-01T11:59:00.000Z; last: HTTP 503",
    )
    status = status_of(subscription, delivery=failing, pending=4)
    assert status["delivery"] == {
        "delivered": 5,
        "deadLettered": 1,
        "pending": 4,
        "retrying": 2,
        "lastError": {"time": "2026-01-01T12:00:00.000Z", "status": 503, "reason": "HTTP 503"},
        "failingSince": "2026-01-01T11:59:00.000Z",
    }
    assert delivering(status) == ("False", "Sink failing", failing.failing)
    # ready keeps Kyma's NATS meaning (the subscription is set up), as with a shedding backlog
    assert status["ready"] is True

    recovered = Delivery(delivered=6, dead_lettered=1, last_error=failing.last_error)
    status = status_of(subscription, delivery=recovered)
    assert status["delivery"]["failingSince"] is None
    assert status["delivery"]["lastError"] is not None  # the last error stays shown
    assert delivering(status)[:2] == ("True", "Sink accepts events")


def test_a_subscription_nothing_was_delivered_for_shows_zero_figures() -> None:
    status = status_of(parse(manifest()))
    assert status["delivery"] == {
        "delivered": 0,
        "deadLettered": 0,
        "pending": 0,
        "retrying": 0,
        "lastError": None,
        "failingSince": None,
    }
    assert delivering(status)[0] == "True"


def test_the_view_sums_pending_over_a_subscriptions_consumers_and_shows_its_delivery() -> None:
    subscription = parse(manifest({"types": ["order.received.v1", "order.paid.v1"]}))
    consumers = [b.consumer_name for b in subscription.bindings]
    failing = Delivery(failing="5 attempts in a row failed", failing_since=1_767_268_740.0)
    shown = view(
        [subscription],
        pending={consumers[0]: 3, consumers[1]: 4, "another": 100},
        delivery={subscription.key: failing},
    )
    status = shown.items[0]["status"]
    assert status["delivery"]["pending"] == 7
    assert delivering(status)[0] == "False"
