"""What one delivery job writes to the delivery ledger (:mod:`eventing.delivery.ledger`).

A :class:`Trail` follows one job: :mod:`workers.attempts` tells it the event's identity (from
the one parse of the stored event, :func:`workers.delivery.encode`) and each attempt, and it
builds the records: one per failed attempt while the policy has attempts left (``retrying``),
one for the outcome (``delivered`` with the attempt that succeeded, ``dead-lettered`` with the
last one or none), so a first-try delivery costs exactly one record. It stores nothing itself:
``write`` hands a record over (:meth:`workers.connection.NatsAcknowledger.write`, or with the
settling ack, see :mod:`workers.actors`); without ``write`` (``LEDGER_MAX_AGE=0``) it builds
nothing and costs a job nothing but the names it logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.ledger import AttemptRecord, Record
from workers.delivery import Attempt


class Trail:
    """The ledger records of one job, and the names of its event for log lines."""

    __slots__ = ("_job", "_last", "_number", "_write", "id", "source", "type")

    def __init__(self, job: DeliveryJob, write: Callable[[Record], None] | None = None) -> None:
        self._job = job
        self._write = write
        self._number = 0  #: of the attempt under way
        self._last: AttemptRecord | None = None
        self.source = self.id = ""
        self.type = job.event_type

    @property
    def names(self) -> str:
        """The event as log lines name it, after the subscription (ids and sources, never
        data; quoted, so no id can break a line)."""
        return f"ce-id {self.id!r} source {self.source!r}"

    def identify(self, source: str, event_id: str, event_type: str) -> None:
        self.source, self.id, self.type = source, event_id, event_type

    def identify_stored(self) -> None:
        """Read the identity from the stored event itself, for a job that ends before
        :func:`workers.delivery.encode` (or because of it: an event it cannot send)."""
        try:
            document = json.loads(self._job.event)
        except ValueError:
            return
        if isinstance(document, dict):
            source, event_id = document.get("source"), document.get("id")
            published = document.get("originaltype") or document.get("type")
            self.source = source if isinstance(source, str) else ""
            self.id = event_id if isinstance(event_id, str) else ""
            self.type = published if isinstance(published, str) else self.type

    def attempting(self, number: int) -> None:
        """Attempt ``number`` (counting every delivery's) is about to start."""
        self._number = number

    def observe(self, attempt: Attempt) -> None:
        """What the attempt under way came to (:func:`workers.delivery.post` reports it)."""
        if self._write is None:
            return
        self._last = AttemptRecord(
            number=self._number,
            time=round(attempt.started, 3),  # ms, as shown: every byte is kept LEDGER_MAX_AGE
            seconds=round(attempt.seconds, 6),
            kind=attempt.kind,
            status=attempt.status,
            error=attempt.error,
            answer=attempt.answer.decode("utf-8", errors="replace"),
        )

    def retrying(self, reason: str) -> None:
        """Write the record of a failed attempt after which the policy goes on."""
        record = self.outcome("retrying", reason)
        if record is not None and self._write is not None:
            self._write(record)

    def outcome(self, outcome: str, reason: str = "") -> Record | None:
        """The record of ``outcome`` after the last attempt seen (None: no ledger, or no
        identity to store it under)."""
        if self._write is None or not self.id or not self.source:
            return None
        job = self._job
        return Record(
            subscription=job.subscription,
            source=self.source,
            id=self.id,
            type=self.type,
            sequence=job.stream_sequence,
            origin=job.origin,
            outcome=outcome,
            time=round(time.time(), 3),
            attempt=self._last,
            reason=reason,
        )
