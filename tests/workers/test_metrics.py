"""Delivery metrics: the labels a sink chooses are bounded."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from tests.workers.conftest import make_job
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
        r'eventing_ec_nats_delivery_per_subscription_total\{.*response_code="(\w+)"', text
    )
    assert sorted(codes) == ["200", "500", "503", "other"]  # 500: no answer, as Kyma counts it
