"""Retry policy: delays, groups per JetStream delivery, jitter."""

from __future__ import annotations

import random
from dataclasses import replace

from eventing.delivery import retries
from eventing.delivery.retries import DeliveryPolicy, groups, schedule
from eventing.settings import Settings

POLICY = DeliveryPolicy(
    retry=5,
    backoff_policy="exponential",
    backoff_delay=1.0,
    backoff_max=300.0,
    timeout=10.0,
    retry_after_max=60.0,
    in_job_wait_max=15.0,
)


def test_exponential_and_linear_delays() -> None:
    assert [POLICY.delay(k) for k in range(1, 6)] == [1, 2, 4, 8, 16]
    linear = replace(POLICY, backoff_policy="linear", backoff_delay=2.0)
    assert [linear.delay(k) for k in range(1, 6)] == [2, 4, 6, 8, 10]
    capped = replace(POLICY, backoff_max=5.0)
    assert [capped.delay(k) for k in range(1, 6)] == [1, 2, 4, 5, 5]


def test_long_delays_move_to_jetstream_redeliveries() -> None:
    assert groups(POLICY) == [[1, 2, 3, 4, 5], [6]]
    assert groups(replace(POLICY, retry=0)) == [[1]]
    assert groups(replace(POLICY, retry=8)) == [[1, 2, 3, 4, 5], [6], [7], [8], [9]]
    assert groups(replace(POLICY, in_job_wait_max=0)) == [[1], [2], [3], [4], [5], [6]]


def test_schedule_rows() -> None:
    assert schedule(POLICY) == [
        (1, 0.0, 0.0, 1),
        (2, 1.0, 1.0, 1),
        (3, 2.0, 3.0, 1),
        (4, 4.0, 7.0, 1),
        (5, 8.0, 15.0, 1),
        (6, 16.0, 31.0, 2),
    ]


def test_jitter_stays_within_ten_percent_and_retry_after_stretches() -> None:
    rng = random.Random(7)
    delays = [POLICY.jittered(3, None, rng) for _ in range(200)]
    assert all(3.6 <= d <= 4.4 for d in delays)
    assert min(delays) < 3.9 and max(delays) > 4.1
    assert POLICY.jittered(1, 30.0, rng) == 30.0
    assert POLICY.jittered(1, 3600.0, rng) == 60.0  # capped by retryAfterMax


def test_round_trip_through_a_job() -> None:
    assert DeliveryPolicy.from_dict(POLICY.to_dict()) == POLICY


def test_the_default_policy_is_the_delivery_settings() -> None:
    settings = Settings.from_environ(
        {"DELIVERY_RETRY": "3", "DELIVERY_BACKOFF_POLICY": "linear", "DELIVERY_TIMEOUT": "2s"}
    ).delivery
    policy = retries.default_policy(settings)
    assert (policy.retry, policy.backoff_policy, policy.timeout) == (3, "linear", 2.0)
    assert policy.in_job_wait_max == settings.in_job_wait_max
