"""The delivery ledger's records: what happened to one event at one subscription (pure).

Workers write one record per HTTP attempt (its outcome ``retrying`` while attempts remain) and
one that ends the delivery (``delivered``, ``dead-lettered``, ``redriven``); a delivery that
succeeds at once costs one record. Records live in the ledger stream (``JS_LEDGER_STREAM_NAME``,
kept ``LEDGER_MAX_AGE``) on :func:`subject`, so one event's history is a subject filter away
(``ledger.<event key>.*``) and so is one subscription's (``ledger.*.<subscription key>``).

A record is JSON (:meth:`Record.to_bytes`); unknown fields are ignored when read, so a newer
worker's records stay readable by an older manager.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from eventing.nats.messages import LEDGER_PREFIX, OutboundMessage
from eventing.units import rfc3339

PREFIX = LEDGER_PREFIX  #: records are stored on ``ledger.<event key>.<subscription key>``

#: What an attempt came to: the sink answered (``status`` says what), or it got no answer.
KINDS = (
    "answered",  #: any HTTP answer, 2xx or not
    "timeout",  #: no complete answer within the policy's timeout
    "connection-refused",
    "connection-error",  #: DNS, reset, unreachable: any other failure to connect
    "tls",  #: the TLS handshake or the sink's certificate failed
    "refused-by-policy",  #: the egress policy (SINK_ALLOW / SINK_DENY) refused the address
    "unsendable",  #: the event or the sink URL can never make a request
    "error",  #: anything else on the way (a secret that cannot be read, say)
)
#: Where an (event, subscription) stands after a record; ``pending`` is never written: it is
#: what the manager shows for a subscription the event is waiting for and that has no record.
OUTCOMES = ("pending", "retrying", "delivered", "dead-lettered", "redriven")
ANSWER_LIMIT = 1024  #: bytes of the sink's answer kept


def event_key(source: str, event_id: str) -> str:
    """The token of an event in a ledger subject: CloudEvents makes (source, id) unique. The
    pair is hashed as JSON, so no source and id run into each other."""
    pair = f"[{_quoted(source)}, {_quoted(event_id)}]".encode()  # json.dumps([source, event_id])
    return hashlib.blake2b(pair, digest_size=16).hexdigest()


@functools.lru_cache(maxsize=4096)
def subscription_key(subscription: str) -> str:
    """The token of a subscription (``namespace/name``) in a ledger subject."""
    return hashlib.blake2b(subscription.encode(), digest_size=8).hexdigest()


def subject(source: str, event_id: str, subscription: str) -> str:
    """Where the records of ``(source, event_id)`` at ``subscription`` are stored."""
    return f"{PREFIX}.{event_key(source, event_id)}.{subscription_key(subscription)}"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP attempt: when, how long, and what came back."""

    number: int  #: 1 for the first attempt at this (event, subscription)
    time: float  #: when it started (Unix seconds)
    seconds: float
    kind: str  #: one of :data:`KINDS`
    status: int | None = None  #: the sink's HTTP status, when it answered
    error: str = ""  #: why there was no answer, or why it counts as failed (credentials masked)
    answer: str = ""  #: the first :data:`ANSWER_LIMIT` bytes of the sink's answer, as text

    def to_dict(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict (a deep copy) was half of a worker's cost of a record.
        return {field.name: getattr(self, field.name) for field in _ATTEMPT_FIELDS}

    def to_json(self) -> str:
        """``to_dict`` as compact JSON (see :meth:`Record.to_bytes`)."""
        status = "null" if self.status is None else str(int(self.status))
        return (
            f'{{"number":{int(self.number)},"time":{_number(self.time)},'
            f'"seconds":{_number(self.seconds)},"kind":{_quoted(self.kind)},"status":{status},'
            f'"error":{_quoted(self.error)},"answer":{_quoted(self.answer)}}}'
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptRecord:
        status = data.get("status")
        return cls(
            number=int(data["number"]),
            time=float(data["time"]),
            seconds=float(data["seconds"]),
            kind=str(data["kind"]),
            status=int(status) if status is not None else None,
            error=str(data.get("error", "")),
            answer=str(data.get("answer", "")),
        )


@dataclass(frozen=True, slots=True)
class Record:
    """One entry of the ledger: an attempt (or none) and where the delivery stands after it."""

    subscription: str  #: namespace/name
    source: str
    id: str
    type: str  #: the event's type as published
    sequence: int  #: the event's sequence in the stream its job came from
    origin: str  #: the job's origin (:data:`eventing.delivery.jobs.ORIGINS`)
    outcome: str  #: one of :data:`OUTCOMES`
    time: float  #: when the record was written (Unix seconds)
    attempt: AttemptRecord | None = None  #: None: an outcome without an attempt (shed, say)
    reason: str = ""  #: why a delivery is retrying or was dead-lettered

    @property
    def subject(self) -> str:
        return subject(self.source, self.id, self.subscription)

    def to_dict(self) -> dict[str, Any]:
        shown = {field.name: getattr(self, field.name) for field in _RECORD_FIELDS}
        shown["attempt"] = self.attempt.to_dict() if self.attempt is not None else None
        return shown

    def shown(self) -> dict[str, Any]:
        """The record as the manager's API and the command-line tool show it: times in RFC
        3339, an attempt's ``status`` only when the sink answered and ``error`` only when it
        failed."""
        shown = self.to_dict()
        shown["time"] = rfc3339(self.time)
        if self.attempt is not None:
            attempt = {k: v for k, v in self.attempt.to_dict().items() if v not in (None, "")}
            attempt["time"] = rfc3339(self.attempt.time)
            shown["attempt"] = attempt
        return shown

    def message(self) -> OutboundMessage:
        """The JetStream message that stores this record in the ledger stream."""
        return OutboundMessage(self.subject, self.to_bytes(), {}, self.type, self.source)

    def to_bytes(self) -> bytes:
        """``to_dict`` as compact JSON, written out field by field: the bytes
        ``json.dumps(self.to_dict(), separators=(",", ":"))`` makes, in a third of its time (a
        record per delivery, on the workers' NATS loop)."""
        attempt = self.attempt
        shown = "null" if attempt is None else attempt.to_json()
        return (
            f'{{"subscription":{_quoted(self.subscription)},"source":{_quoted(self.source)},'
            f'"id":{_quoted(self.id)},"type":{_quoted(self.type)},"sequence":{int(self.sequence)},'
            f'"origin":{_quoted(self.origin)},"outcome":{_quoted(self.outcome)},'
            f'"time":{_number(self.time)},"attempt":{shown},"reason":{_quoted(self.reason)}}}'
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        """Read a stored record.

        Raises:
            ValueError: not a record (``json.JSONDecodeError`` is one; so are missing fields).
        """
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("a ledger record is a JSON object")
        try:
            attempt = document.get("attempt")
            return cls(
                subscription=str(document["subscription"]),
                source=str(document["source"]),
                id=str(document["id"]),
                type=str(document["type"]),
                sequence=int(document["sequence"]),
                origin=str(document["origin"]),
                outcome=str(document["outcome"]),
                time=float(document["time"]),
                attempt=AttemptRecord.from_dict(attempt) if isinstance(attempt, dict) else None,
                reason=str(document.get("reason", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a ledger record: {exc!r}") from None


_quoted = json.encoder.encode_basestring_ascii  #: a JSON string, as json.dumps writes it


def _number(value: float) -> str:
    """A JSON number, as json.dumps writes a float (NaN and infinities as it does, too)."""
    value = float(value)
    return repr(value) if math.isfinite(value) else json.dumps(value)


_ATTEMPT_FIELDS = dataclasses.fields(AttemptRecord)
_RECORD_FIELDS = dataclasses.fields(Record)
