"""Delivery metrics: the labels a sink chooses are bounded."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from tests.workers.conftest import make_job, stored_event
from workers.delivery import Attempt
from workers.metrics import DeliveryMetrics


def test_response_codes_outside_http_are_counted_as_other() -> None:
    """Every other label is the subscription's, but the code is the sink's: a sink answering a
    different three-digit status each time added a series per code, to every subscription."""
    metrics = DeliveryMetrics()
    observe = metrics.observer(make_job())
    for status in (200, 503, None, *range(600, 1000)):
        observe(Attempt(status=status, seconds=0.01))
    text = generate_latest(metrics.registry).decode()
    codes = re.findall(
        r'eventing_ec_nats_delivery_per_subscription_total\{.*response_code="(\w*)"', text
    )
    assert sorted(codes) == ["", "200", "503", "other"]  # "": no answer


def series(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name`` in the Prometheus text."""
    return [
        dict(re.findall(r'(\w+)="([^"]*)"', labels))
        for labels in re.findall(rf"^{name}\{{([^}}]*)\}}", text, re.MULTILINE)
    ]


def test_an_attempt_without_an_answer_is_counted_by_its_kind_not_as_500() -> None:
    """Issue 15: timeouts and connection errors counted as response_code="500", as if the sink
    had answered 500."""
    metrics = DeliveryMetrics()
    observe = metrics.observer(make_job())
    observe(Attempt(status=None, seconds=10.0, kind="timeout", error="no answer within 10s"))
    observe(Attempt(status=None, seconds=0.01, kind="connection-refused"))
    observe(Attempt(status=503, seconds=0.01))
    text = generate_latest(metrics.registry).decode()
    kyma = series(text, "eventing_ec_nats_delivery_per_subscription_total")
    assert sorted(s["response_code"] for s in kyma) == ["", "503"]
    attempts = series(text, "eventing_delivery_attempts_total")
    assert sorted((s["kind"], s["status_class"]) for s in attempts) == [
        ("answered", "5xx"),
        ("connection-refused", ""),
        ("timeout", ""),
    ]
    assert all(
        (s["subscription_namespace"], s["subscription_name"]) == ("default", "orders")
        for s in attempts
    )


def test_the_dispatch_duration_buckets_reach_past_the_default_timeout() -> None:
    """Issue 15: the histogram stopped at 1.024 s while the default timeout is 10 s."""
    metrics = DeliveryMetrics()
    metrics.observer(make_job())(Attempt(status=None, seconds=10.0, kind="timeout"))
    text = generate_latest(metrics.registry).decode()
    buckets = series(text, "eventing_ec_nats_subscriber_dispatch_duration_seconds_bucket")
    bounds = [float(s["le"]) for s in buckets if s["le"] != "+Inf"]
    assert max(bounds) >= 60.0
    assert 10.0 <= min(b for b in bounds if b >= 10.0) < 20.0  # a timeout lands near 10 s


def test_a_delivery_observes_its_latency_from_publish_and_the_events_age() -> None:
    """Issue 15: no end-to-end latency, no event age."""
    metrics = DeliveryMetrics()
    published = 1_767_268_800.0  # 2026-01-01T12:00:00Z
    job = make_job(published=published, event=stored_event(time="2026-01-01T11:00:00Z"))
    observe = metrics.observer(job)
    observe(Attempt(status=503, seconds=1.0, started=published + 10))  # no delivery yet
    observe(Attempt(status=204, seconds=1.0, started=published + 3599))
    text = generate_latest(metrics.registry).decode()
    assert re.search(r"^eventing_delivery_latency_seconds_sum\{.*\} 3600\.0$", text, re.M)
    assert re.search(r"^eventing_delivery_event_age_seconds_sum\{.*\} 7200\.0$", text, re.M)
    assert re.search(r"^eventing_delivery_latency_seconds_count\{.*\} 1\.0$", text, re.M)
    buckets = series(text, "eventing_delivery_event_age_seconds_bucket")
    assert max(float(s["le"]) for s in buckets if s["le"] != "+Inf") >= 6 * 3600


def test_an_event_without_a_time_has_no_age_observed() -> None:
    metrics = DeliveryMetrics()
    metrics.observer(make_job(published=1.0))(Attempt(status=200, seconds=0.1, started=2.0))
    text = generate_latest(metrics.registry).decode()
    assert series(text, "eventing_delivery_latency_seconds_count")
    assert not series(text, "eventing_delivery_event_age_seconds_count")


def test_dead_letters_are_counted_by_subscription() -> None:
    """Issue 15: there was no dead-letter counter."""
    metrics = DeliveryMetrics()
    metrics.dead_lettered(make_job())
    metrics.dead_lettered(make_job())
    text = generate_latest(metrics.registry).decode()
    assert re.search(
        r'^eventing_delivery_dead_lettered_total\{subscription_name="orders",'
        r'subscription_namespace="default"\} 2\.0$',
        text,
        re.M,
    ), text
