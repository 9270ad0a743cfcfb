"""No sink credential in what the status view shows (GET /subscriptions, the CR's status)."""

from __future__ import annotations

import json

import pytest

from eventing.errors import InvalidSubscription
from eventing.subscriptions.status import view
from tests.eventing.test_subscription import manifest, parse

SECRET = "s3cr3t-value"


def test_the_status_view_shows_a_sink_without_its_credentials() -> None:
    sink = f"https://sink.test/hook?token={SECRET}"
    subscription = parse(manifest({"sink": sink}))
    [item] = view([subscription]).items
    assert item["spec"]["sink"] == "https://sink.test/hook?token=***"
    assert SECRET not in json.dumps(item)
    assert subscription.sink == sink  # delivered to as written


def test_an_invalid_sink_is_named_without_its_credentials() -> None:
    with pytest.raises(InvalidSubscription) as invalid:
        parse(manifest({"sink": f"ftp://user:{SECRET}@sink.test/?token={SECRET}"}))
    assert "spec.sink" in str(invalid.value) and SECRET not in str(invalid.value)
    [item] = view([invalid.value]).items
    assert SECRET not in json.dumps(item)
