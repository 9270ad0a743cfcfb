"""The JetStream message of an event: dedup id and Kyma's routing headers (pure)."""

from __future__ import annotations

import json

from eventing.events import cloudevent
from eventing.nats.messages import message_id, outbound


def _event(**attributes: str) -> cloudevent.Event:
    base = {"specversion": "1.0", "id": "A-1", "source": "/shop", "type": "order.created.v1"}
    return cloudevent.build({**base, **attributes}, {"n": 1})


def test_the_dedup_id_is_a_stable_hash_of_source_and_id() -> None:
    assert message_id("/shop", "A-1") == message_id("/shop", "A-1")
    assert len(message_id("/shop", "A-1")) == 32
    assert message_id("/shop", "A-1") != message_id("/shop", "A-2")
    # source and id are kept apart by a newline, which no valid source holds
    assert message_id("/shopA", "1") != message_id("/shop", "A1")


def test_outbound_carries_the_stored_event_and_the_routing_headers() -> None:
    event = _event(datacontenttype="application/json")

    message = outbound(event, "kyma.shop.order.created.v1")

    assert message.subject == "kyma.shop.order.created.v1"
    assert json.loads(message.payload) == json.loads(cloudevent.to_stored(event))
    assert message.headers == {
        "Nats-Msg-Id": message_id("/shop", "A-1"),
        "ce-specversion": "1.0",
        "ce-type": "order.created.v1",
        "ce-source": "/shop",
        "ce-id": "A-1",
        "Content-Type": "application/json",
    }
    assert (message.event_type, message.event_source) == ("order.created.v1", "/shop")


def test_header_values_are_percent_encoded_so_none_breaks_the_header_block() -> None:
    event = _event(id='a b"c%d\u00e9', datacontenttype='text/plain; charset="utf-8"')

    headers = outbound(event, "kyma.x").headers

    assert headers["ce-id"] == "a%20b%22c%25d%C3%A9"
    assert headers["Content-Type"] == "text/plain; charset=%22utf-8%22"  # spaces are kept there
    assert all(value.isascii() and "\n" not in value for value in headers.values())


def test_no_content_type_header_without_a_content_type() -> None:
    assert "Content-Type" not in outbound(_event(), "kyma.x").headers
