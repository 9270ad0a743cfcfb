"""What a dead letter says about itself, read back from its headers, and what is sent of it (pure).

A dead letter (:func:`eventing.delivery.jobs.dead_letter`) is the event as stored with headers
naming the subscription, the event's source and id, why it failed, the sink's last status and
the first KiB of its answer (base64). The manager's API lists dead letters from their headers
alone (:class:`Letter`), and a subscription's ``spec.delivery.deadLetterSink`` receives each as
the event with Knative's extensions (:func:`knative_event`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from eventing.units import rfc3339

REASON = "Eventing-Dead-Letter-Reason"
STATUS = "Eventing-Dead-Letter-Status"
ATTEMPTS = "Eventing-Dead-Letter-Attempts"
SUBSCRIPTION = "Eventing-Dead-Letter-Subscription"
TYPE = "Eventing-Dead-Letter-Type"
SINK = "Eventing-Dead-Letter-Sink"  #: masked of credentials
STREAM_SEQUENCE = "Eventing-Dead-Letter-Stream-Sequence"
SOURCE = "Eventing-Dead-Letter-Source"  #: percent-encoded, as the ``ce-*`` headers
ID = "Eventing-Dead-Letter-Id"  #: percent-encoded
ORIGIN = "Eventing-Dead-Letter-Origin"  #: the failed job's origin (live, replay, redrive)
ANSWER = "Eventing-Dead-Letter-Answer"  #: base64 of the first KiB of the sink's last answer
REDRIVES = "Eventing-Dead-Letter-Redrives"  #: redrives that failed again (absent: none)
ANSWER_LIMIT = 1024
_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


def encoded(value: str) -> str:
    """``value`` as a header carries it whole (a source or id may hold any character)."""
    return quote(value, safe=_SAFE)


def answer_header(answer: bytes) -> str:
    return base64.b64encode(answer[:ANSWER_LIMIT]).decode("ascii")


def identity(stored_event: str) -> tuple[str, str]:
    """The (source, id) of an event as stored; empty strings where it has none (an event
    written past the proxy)."""
    try:
        document = json.loads(stored_event)
    except ValueError:
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    source, event_id = document.get("source"), document.get("id")
    return (
        source if isinstance(source, str) else "",
        event_id if isinstance(event_id, str) else "",
    )


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as its headers describe it."""

    sequence: int  #: in the dead-letter stream
    time: float  #: when it was stored (Unix seconds)
    consumer: str  #: the live consumer of the subscription type (``dlq.<consumer>``)
    subscription: str
    type: str
    source: str
    id: str
    reason: str
    status: int | None
    attempts: int
    sink: str
    origin: str
    redrives: int
    answer: bytes

    @classmethod
    def of(cls, sequence: int, subject: str, headers: Mapping[str, str], time: float) -> Letter:
        """Read a stored dead letter; a header that is missing or malformed reads as empty."""
        status = headers.get(STATUS, "")
        try:
            answer = base64.b64decode(headers.get(ANSWER, ""), validate=True)
        except (binascii.Error, ValueError):
            answer = b""
        return cls(
            sequence=sequence,
            time=time,
            consumer=subject.partition(".")[2],
            subscription=headers.get(SUBSCRIPTION, ""),
            type=headers.get(TYPE, ""),
            source=unquote(headers.get(SOURCE, "")),
            id=unquote(headers.get(ID, "")),
            reason=headers.get(REASON, ""),
            status=int(status) if status.isdigit() else None,
            attempts=_number(headers.get(ATTEMPTS, "")),
            sink=headers.get(SINK, ""),
            origin=headers.get(ORIGIN, "live"),
            redrives=_number(headers.get(REDRIVES, "")),
            answer=answer,
        )

    def matches(self, reason: str, since: float | None) -> bool:
        """Whether the reason holds ``reason`` (any case), stored at ``since`` or later."""
        return reason.casefold() in self.reason.casefold() and (since is None or self.time >= since)

    def shown(self) -> dict[str, Any]:
        """The item of THE API's list (``GET /deadletters``)."""
        return {
            "sequence": self.sequence,
            "time": rfc3339(self.time),
            "subscription": self.subscription,
            "type": self.type,
            "source": self.source,
            "id": self.id,
            "reason": self.reason,
            "status": self.status,
            "attempts": self.attempts,
            "sink": self.sink,
            "origin": self.origin,
            "redrives": self.redrives,
        }


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 0


def knative_event(stored_event: str, letter: Letter) -> str:
    """The stored event with Knative's dead-letter extensions: ``knativeerrorcode`` (the last
    status, when the sink answered), ``knativeerrordest`` (the sink, masked of credentials) and
    ``knativeerrordata`` (base64 of its answer, when it said something).

    Raises:
        ValueError: the stored event is no JSON object.
    """
    document = json.loads(stored_event)
    if not isinstance(document, dict):
        raise ValueError("a stored event is a JSON object")
    document["knativeerrordest"] = letter.sink
    if letter.status is not None:
        document["knativeerrorcode"] = str(letter.status)
    if letter.answer:
        document["knativeerrordata"] = base64.b64encode(letter.answer).decode("ascii")
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))
