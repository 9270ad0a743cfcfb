"""Which stored events a subscription receives beyond its subjects (subscriptions.matching)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventing.subscriptions.matching import published, receives
from eventing.subscriptions.model import Subscription
from tests.eventing.test_subscription import manifest, parse


def subscription(**spec: Any) -> Subscription:
    """Kyma's worked example (source myapp) with ``spec`` changed."""
    return parse(manifest({"types": ["order.created.v1"], **spec}))


def stored(source: str, event_type: str, **extensions: str) -> str:
    event = {"specversion": "1.0", "id": "1", "source": source, "type": event_type}
    return json.dumps(event | extensions)


STANDARD = subscription()


def test_the_own_source_and_type_are_received() -> None:
    event = stored("myapp", "order.created.v1", originaltype="order.created.v1")
    assert receives(STANDARD, "order.created.v1", event)


@pytest.mark.parametrize(
    ("source", "event_type"),
    [
        ("my.app", "order.created.v1"),  # the subject drops dots from sources
        ("my/app", "order.created.v1"),  # and slashes
        ("MyApp", "order.created.v1"),  # sources are case-sensitive
        ("attacker", "sap.kyma.custom.myapp.order.created.v1"),  # the legacy subject
        ("myapp", "sap.kyma.custom.myapp.order.created.v1"),  # a prefixed type is no standard one
        ("myapp", "order.cre*ated.v1"),  # the subject drops '*' from types
        ("myapp", "order.created.v1 "),  # and whitespace
        ("my-app", "order.created.v1"),  # a legacy application keeps letters and digits only
    ],
)
def test_a_source_or_type_that_only_shares_the_subject_is_not_received(
    source: str, event_type: str
) -> None:
    event = stored(source, event_type, originaltype=event_type)
    assert not receives(STANDARD, "order.created.v1", event)


def test_the_type_as_published_is_originaltype_when_the_event_has_one() -> None:
    # Kyma's publisher proxy rewrites type to kyma.<source>.<type> and keeps the published one.
    kyma_stored = stored("myapp", "kyma.myapp.order.created.v1", originaltype="order.created.v1")
    assert receives(STANDARD, "order.created.v1", kyma_stored)
    assert published(kyma_stored) == ("myapp", "order.created.v1")
    assert published(stored("myapp", "order.created.v1")) == ("myapp", "order.created.v1")


def test_types_are_compared_as_the_subscription_wrote_them() -> None:
    written = subscription(types=["order/created.v1"])
    assert receives(written, "order/created.v1", stored("myapp", "order/created.v1"))
    assert not receives(written, "order/created.v1", stored("myapp", "ordercreated.v1"))


def test_each_consumer_receives_only_its_own_type() -> None:
    two = subscription(types=["order.created.v1", "order.deleted.v1"])
    assert not receives(two, "order.created.v1", stored("myapp", "order.deleted.v1"))


def test_exact_matching_is_the_subject_match() -> None:
    exact = subscription(
        typeMatching="exact", source="", types=["sap.kyma.custom.commerce.order.created.v1"]
    )
    legacy = stored("commerce", "order.created.v1", originaltype="order.created.v1")
    assert receives(exact, "sap.kyma.custom.commerce.order.created.v1", legacy)


@pytest.mark.parametrize(
    "event",
    ["not json", "[1]", json.dumps({"source": 1, "type": "order.created.v1"}), "{}"],
)
def test_an_unreadable_event_is_left_to_the_worker(event: str) -> None:
    assert published(event) is None
    assert receives(STANDARD, "order.created.v1", event)
