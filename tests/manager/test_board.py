"""The status board: the view after each reconcile, backlogs between them, and their metrics.

Pure but for the clock, which the tests pass in; backlogs are plain values, as the pull tasks
report them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import generate_latest

from eventing.delivery.ledger import AttemptRecord, Record
from eventing.errors import InvalidSubscription
from eventing.settings import Settings
from eventing.sources import snapshot
from eventing.sources.snapshot import Snapshot
from eventing.subscriptions.model import Subscription
from manager.board import SHEDDING_SHOWN, StatusBoard
from manager.metrics import ManagerMetrics

SETTINGS = Settings.from_environ({"JS_STREAM_NAME": "sap", "MAX_BACKLOG": "1000"})
NOW = 1_767_268_800.0  # 2026-01-01T12:00:00Z


@dataclass(frozen=True)
class Backlog:
    pending: int = 0
    shed: int = 0
    last_shed: float | None = None


def subscription(name: str) -> Subscription:
    return snapshot.parser_for(SETTINGS)(
        {
            "apiVersion": "eventing.kyma-project.io/v1alpha2",
            "kind": "Subscription",
            "metadata": {"name": name},
            "spec": {"sink": "http://127.0.0.1:9/", "source": "shop", "types": ["a.b.v1"]},
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def board_with(clock: Clock) -> tuple[StatusBoard, ManagerMetrics]:
    metrics = ManagerMetrics()
    board = StatusBoard(
        metrics,
        stream="sap",
        dead_letter_stream="sap-dlq",
        max_backlog=1000,
        clock=clock,
    )
    return board, metrics


def status_metric(metrics: ManagerMetrics, sub: Subscription) -> float | None:
    [binding] = sub.bindings
    return metrics.registry.get_sample_value(
        "eventing_ec_subscription_status",
        {
            "subscription_name": sub.name,
            "subscription_namespace": sub.namespace,
            "consumer_name": binding.consumer_name,
            "eventing_backend": "NATS_Jetstream",
            "stream_name": "sap",
        },
    )


def backlog_condition(item: dict[str, Any]) -> tuple[str, str]:
    [condition] = [c for c in item["status"]["conditions"] if c["type"] == "Backlog within limit"]
    return condition["status"], condition["message"]


def test_publishing_shows_the_snapshot_and_sets_kymas_status_metric_per_consumer() -> None:
    board, metrics = board_with(Clock())
    fine, failing = subscription("fine"), subscription("failing")
    [binding] = failing.bindings
    broken = InvalidSubscription("default/broken", ["spec.sink: must not be empty"])

    view = board.publish(
        Snapshot((fine, failing, broken)),
        {binding.consumer_name: "limit reached"},
        None,
        {},
        refused={},
    )

    assert board.view is view and view.ready
    assert [i["metadata"]["name"] for i in view.items] == ["fine", "failing", "broken"]
    assert status_metric(metrics, fine) == 1
    assert status_metric(metrics, failing) == 0


def test_a_problem_sets_every_status_metric_to_zero() -> None:
    board, metrics = board_with(Clock())
    sub = subscription("orders")

    board.publish(Snapshot((sub,)), {}, "NATS connection not ready", {}, refused={})

    assert board.view.ready is False
    assert status_metric(metrics, sub) == 0


def test_following_records_backlogs_and_shows_shedding_while_it_is_recent() -> None:
    clock = Clock()
    board, metrics = board_with(clock)
    sub = subscription("orders")
    [binding] = sub.bindings
    name = binding.consumer_name
    board.publish(Snapshot((sub,)), {}, None, {name: Backlog(pending=5)}, refused={})
    assert backlog_condition(board.view.items[0])[0] == "True"

    board.follow({name: Backlog(pending=1200, shed=200, last_shed=NOW - 1)})

    assert (
        metrics.registry.get_sample_value(
            "eventing_manager_consumer_pending",
            {
                "subscription_namespace": "default",
                "subscription_name": "orders",
                "event_type": "a.b.v1",
            },
        )
        == 1200
    )
    status, message = backlog_condition(board.view.items[0])
    assert status == "False"
    assert message == (
        "a.b.v1: 200 oldest waiting events moved to the dead-letter stream sap-dlq"
        " (last at 2026-01-01T11:59:59Z): more than MAX_BACKLOG=1000 events were waiting"
    )
    assert board.view.items[0]["status"]["ready"] is True

    clock.now = NOW + SHEDDING_SHOWN
    board.follow({name: Backlog(pending=0, shed=200, last_shed=NOW - 1)})

    assert backlog_condition(board.view.items[0]) == ("True", "")


def test_following_before_any_reconcile_shows_nothing() -> None:
    board, _ = board_with(Clock())

    board.follow({"x": Backlog(shed=1, last_shed=NOW)})

    assert board.view.items == () and board.view.ready is False


def test_the_board_of_settings_names_their_streams_and_limit() -> None:
    metrics = ManagerMetrics()
    board = StatusBoard.for_settings(SETTINGS, metrics)
    sub = subscription("orders")
    [binding] = sub.bindings

    board.publish(
        Snapshot((sub,)), {}, None, {binding.consumer_name: Backlog(1, 2, time.time())}, refused={}
    )

    [message] = [backlog_condition(i)[1] for i in board.view.items]
    assert SETTINGS.stream.dead_letter_name in message and "MAX_BACKLOG=1000" in message
    assert status_metric(metrics, sub) == 1


def test_backlogs_and_events_in_retry_are_shown_by_subscription_not_by_consumer_hash() -> None:
    """Issue 15: no in-retry figure, and consumer metrics labelled by a hash."""
    board, metrics = board_with(Clock())
    sub = subscription("orders")
    [binding] = sub.bindings
    for event in ("e1", "e2"):
        board.health.take(
            Record(
                sub.key, "shop", event, "a.b.v1", 1, "live", "retrying", NOW,
                AttemptRecord(1, NOW, 0.1, "timeout"), "timed out",
            )
        )  # fmt: skip
    board.publish(Snapshot((sub,)), {}, None, {binding.consumer_name: Backlog(5)}, refused={})
    board.follow({binding.consumer_name: Backlog(pending=7)})

    labels = {"subscription_namespace": "default", "subscription_name": "orders"}
    assert metrics.registry.get_sample_value("eventing_manager_in_retry", labels) == 2
    pending = metrics.registry.get_sample_value(
        "eventing_manager_consumer_pending", {**labels, "event_type": "a.b.v1"}
    )
    assert pending == 7
    assert board.view.items[0]["status"]["delivery"]["retrying"] == 2
    assert board.view.items[0]["status"]["delivery"]["pending"] == 7


def test_the_gauges_of_a_subscription_gone_are_removed() -> None:
    """A gauge keeps its last value until removed: a deleted subscription would show its
    backlog, events in retry and readiness for good."""
    board, metrics = board_with(Clock())
    gone, kept = subscription("gone"), subscription("kept")
    consumers = {s.bindings[0].consumer_name: Backlog(3) for s in (gone, kept)}
    board.publish(Snapshot((gone, kept)), {}, None, consumers, refused={})
    board.follow(consumers)
    board.publish(Snapshot((kept,)), {}, None, consumers, refused={})

    text = generate_latest(metrics.registry).decode()
    assert 'subscription_name="kept"' in text
    assert 'subscription_name="gone"' not in text
