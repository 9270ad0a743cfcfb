"""The ledger follower's aggregation: ledger records in, each subscription's delivery figures
out (pure: records are fed as the workers write them)."""

from __future__ import annotations

from eventing.delivery.ledger import AttemptRecord, Record
from manager.health import FAILING_AFTER, DeliveryHealth

T0 = 1_767_268_800.0  # 2026-01-01T12:00:00Z


def record(
    outcome: str,
    event: str = "e1",
    *,
    status: int | None = None,
    kind: str = "answered",
    at: float = T0,
    subscription: str = "default/orders",
    attempted: bool = True,
    reason: str = "",
    origin: str = "live",
) -> Record:
    attempt = AttemptRecord(1, at, 0.1, kind, status, error="" if status else kind)
    return Record(
        subscription=subscription,
        source="shop",
        id=event,
        type="order.created.v1",
        sequence=1,
        origin=origin,
        outcome=outcome,
        time=at,
        attempt=attempt if attempted else None,
        reason=reason,
    )


def test_deliveries_dead_letters_and_events_in_retry_are_counted_per_subscription() -> None:
    health = DeliveryHealth()
    health.take(record("delivered", "e1", status=204))
    health.take(record("retrying", "e2", status=503, reason="HTTP 503"))
    health.take(record("retrying", "e3", kind="timeout"))
    health.take(record("retrying", "e3", kind="timeout", at=T0 + 1))  # one event, twice
    health.take(record("delivered", "e9", status=200, subscription="other/sub"))
    figures = health.figures()
    orders = figures["default/orders"]
    assert (orders.delivered, orders.dead_lettered, orders.retrying) == (1, 0, 2)

    health.take(record("delivered", "e2", status=204, at=T0 + 2))
    health.take(record("dead-lettered", "e3", kind="timeout", at=T0 + 3, reason="out of retries"))
    orders = health.figures()["default/orders"]
    assert (orders.delivered, orders.dead_lettered, orders.retrying) == (2, 1, 0)
    assert health.figures()["other/sub"].delivered == 1


def test_the_sink_counts_as_failing_after_attempts_fail_in_a_row_and_recovers_on_a_success() -> (
    None
):
    health = DeliveryHealth()
    health.take(record("delivered", "e0", status=204))
    for n in range(FAILING_AFTER - 1):
        health.take(record("retrying", f"e{n + 1}", status=503, at=T0 + 10 + n, reason="HTTP 503"))
        assert health.figures()["default/orders"].failing is None  # not yet "keeps failing"
    health.take(record("retrying", "e9", kind="timeout", at=T0 + 20, reason="timed out"))
    orders = health.figures()["default/orders"]
    assert orders.failing is not None and "2026-01-01T12:00:10.000Z" in orders.failing
    assert orders.failing_since == T0 + 10  # the run's first failure
    assert orders.last_error is not None
    assert (orders.last_error.time, orders.last_error.status) == (T0 + 20, None)
    assert orders.last_error.reason == "timed out"

    health.take(record("delivered", "e1", status=204, at=T0 + 30))
    orders = health.figures()["default/orders"]
    assert orders.failing is None and orders.failing_since is None
    assert orders.last_error is not None and orders.last_error.time == T0 + 20  # kept


def test_a_dead_letter_without_an_attempt_is_counted_but_says_nothing_of_the_sink() -> None:
    """A backlog shed to the dead-letter stream (no attempt) is the Backlog condition's."""
    health = DeliveryHealth()
    for n in range(FAILING_AFTER + 1):
        health.take(record("dead-lettered", f"e{n}", attempted=False, reason="backlog"))
    orders = health.figures()["default/orders"]
    assert orders.dead_lettered == FAILING_AFTER + 1
    assert orders.failing is None and orders.last_error is None


def test_events_in_retry_are_tracked_up_to_a_cap() -> None:
    health = DeliveryHealth(tracked=3)
    for n in range(5):
        health.take(record("retrying", f"e{n}", status=500))
    assert health.figures()["default/orders"].retrying == 3
    health.take(record("delivered", "e0", status=204))
    assert health.figures()["default/orders"].retrying == 2


def test_subscriptions_gone_are_forgotten_and_every_record_changes_the_version() -> None:
    health = DeliveryHealth()
    before = health.version
    health.take(record("delivered", subscription="a/gone", status=204))
    health.take(record("delivered", subscription="a/kept", status=204))
    assert health.version != before
    health.keep_only({"a/kept"})
    assert set(health.figures()) == {"a/kept"}


def test_a_redrive_counts_once_when_delivered_and_a_dead_letter_sink_not_at_all() -> None:
    health = DeliveryHealth()
    health.take(record("dead-lettered", "e1", status=500))
    health.take(record("delivered", "e1", status=204, origin="dead-letter-sink"))
    health.take(record("retrying", "e2", status=503, origin="dead-letter-sink"))
    health.take(record("redriven", "e1", attempted=False, origin="redrive"))
    orders = health.figures()["default/orders"]
    assert (orders.delivered, orders.dead_lettered, orders.retrying) == (0, 1, 0)
    health.take(record("delivered", "e1", status=204, origin="redrive"))
    assert health.figures()["default/orders"].delivered == 1
