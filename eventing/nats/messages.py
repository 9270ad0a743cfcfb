"""The shapes of JetStream messages, both ways: what we store, and what a consumer pulls.

Pure: no connection, no nats-py. A stored event carries the ``Nats-Msg-Id`` JetStream
deduplicates on and Kyma's ``ce-*`` routing headers; a pulled message is reduced to what a
delivery job needs (its bytes, where to ack it, its place in the stream, how often it came).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from eventing.events import cloudevent

DEAD_LETTER_PREFIX = "dlq"  #: dead letters are stored on ``dlq.<consumer>``
LEDGER_PREFIX = "ledger"  #: see :mod:`eventing.delivery.ledger`
_CE_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One event ready for JetStream: subject, structured-JSON payload, headers.

    ``event_type`` (the type as published) and ``event_source`` travel along for metrics.
    """

    subject: str
    payload: bytes
    headers: dict[str, str]
    event_type: str
    event_source: str


@dataclass(frozen=True, slots=True)
class PulledMessage:
    """One message a pull consumer handed out, not yet acknowledged."""

    data: bytes
    reply: str  #: the subject an ack, nak or term of this delivery is published to
    stream_sequence: int
    delivery_count: int  #: 1 on the first delivery, counting every redelivery
    published: float = 0.0  #: when JetStream stored it (Unix seconds)
    #: the stored headers (a dead letter's say why it failed)
    headers: Mapping[str, str] = field(default_factory=dict)


def source_sequence(headers: Mapping[str, str]) -> int | None:
    """The sequence in its origin stream of a message a stream sourced, from the header
    JetStream adds (``Nats-Stream-Source: <stream> <sequence> ...``); None if it has none."""
    parts = headers.get("Nats-Stream-Source", "").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1])


def message_id(source: str, event_id: str, publisher: str | None = None) -> str:
    """``Nats-Msg-Id`` of an event: CloudEvents makes (source, id) unique, so we dedup on it,
    within one publisher's events.

    Parameters:
        publisher: the name of the identity that published the event (:mod:`eventing.publishers`);
            None while publishing is open, which keeps the key of (source, id) alone. With it,
            one publisher's event never hides another's of the same source and id.
    """
    key = f"{source}\n{event_id}" if publisher is None else f"{publisher}\n{source}\n{event_id}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def outbound(
    event: cloudevent.Event, subject: str, publisher: str | None = None
) -> OutboundMessage:
    """The JetStream message for ``event`` on ``subject``, published by ``publisher`` (None:
    publishing is open; see :func:`message_id`).

    Besides the dedup id, the ``ce-*`` routing headers Kyma sets are added, percent-encoded as in
    the CloudEvents HTTP binding, so no attribute can break the header block.
    """
    source, event_id = event.get_source(), event.get_id()
    headers = {
        "Nats-Msg-Id": message_id(source, event_id, publisher),
        "ce-specversion": event.get_specversion(),
        "ce-type": quote(event.get_type(), safe=_CE_HEADER_SAFE),
        "ce-source": quote(source, safe=_CE_HEADER_SAFE),
        "ce-id": quote(event_id, safe=_CE_HEADER_SAFE),
    }
    content_type = event.get_datacontenttype()
    if content_type:
        headers["Content-Type"] = quote(content_type, safe=_CE_HEADER_SAFE + " ")
    return OutboundMessage(subject, cloudevent.to_stored(event), headers, event.get_type(), source)
