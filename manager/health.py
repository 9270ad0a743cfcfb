"""The ledger follower: each subscription's delivery figures, read from the delivery ledger.

Workers write a :class:`~eventing.delivery.ledger.Record` per attempt and per outcome into the
ledger stream; the manager reads that stream with an ordered consumer (in the server's memory,
no acks, recreated by nats-py after a gap), from the start of its retention at boot, and keeps
per subscription what ``status.delivery`` shows (:class:`DeliveryHealth`). So the figures
cover what the ledger holds when the manager starts (``LEDGER_MAX_AGE``, 72 h by default,
within ``LEDGER_MAX_BYTES``) and everything since; they are not Prometheus counters (a restart
counts again from what is left), the workers' metrics are.

A sink counts as failing once :data:`FAILING_AFTER` attempts in a row at that subscription
failed, whatever the events, with no success between them; one success ends it. A run of
failures says more than a time without success: a subscription that gets an event an hour
fails slowly but surely, and one success among failures of other events says that the sink
works and those events do not.

Memory is bounded: per subscription some counts, its last error and at most
:data:`RETRYING_TRACKED` events in retry (past that, ``retrying`` shows the cap); subscriptions
gone from the source are forgotten at the next reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from eventing.delivery import ledger
from eventing.delivery.ledger import Record
from eventing.errors import ConsumerError, NotFound
from eventing.nats.client import JetStreamClient
from eventing.subscriptions.status import Delivery, LastError
from eventing.units import rfc3339

logger = logging.getLogger(__name__)

FAILING_AFTER = 3  #: failed attempts in a row that make a sink failing
RETRYING_TRACKED = 10_000  #: events in retry tracked per subscription
_BATCH = 256  #: records taken per read of the ledger
_WAIT = 1.0  #: seconds a read waits for a first record
_AGAIN = 2.0  #: seconds before the ledger is read again after it could not be


@dataclass(slots=True)
class _Figures:
    """One subscription's figures, changed by each of its records."""

    delivered: int = 0
    dead_lettered: int = 0
    retrying: set[str] = field(default_factory=set)  #: event keys (:func:`ledger.event_key`)
    last_error: LastError | None = None
    failed_in_a_row: int = 0
    failing_since: float | None = None  #: the first failure of the current run

    def delivery(self) -> Delivery:
        failing = self.failed_in_a_row >= FAILING_AFTER
        since = self.failing_since if failing else None
        return Delivery(
            delivered=self.delivered,
            dead_lettered=self.dead_lettered,
            retrying=len(self.retrying),
            last_error=self.last_error,
            failing_since=since,
            failing=(
                f"{FAILING_AFTER} or more attempts in a row failed, since {rfc3339(since)};"
                " delivery.lastError has the last one"
                if since is not None
                else None
            ),
        )


class DeliveryHealth:
    """Each subscription's figures, from the ledger records :meth:`take` is given in order."""

    def __init__(self, *, tracked: int = RETRYING_TRACKED) -> None:
        self._tracked = tracked
        self._figures: dict[str, _Figures] = {}
        self.version = 0  #: changes with every record taken: the board shows figures anew

    def take(self, record: Record) -> None:
        """Count ``record``: its attempt (a success or a failure) and its outcome.

        A dead-letter sink's deliveries say nothing of the subscription's sink, and are left
        out. ``redriven`` only marks a dead letter handed to the workers: the redrive's own
        ``delivered`` (or ``dead-lettered``) record counts once it happens.
        """
        if record.origin == "dead-letter-sink":
            return
        figures = self._figures.get(record.subscription)
        if figures is None:
            figures = self._figures[record.subscription] = _Figures()
        self.version += 1
        attempt = record.attempt
        if attempt is not None:
            if attempt.status is not None and 200 <= attempt.status < 300:
                figures.failed_in_a_row, figures.failing_since = 0, None
            else:
                figures.failed_in_a_row += 1
                if figures.failing_since is None:
                    figures.failing_since = attempt.time
                reason = record.reason or attempt.error or f"HTTP {attempt.status}"
                figures.last_error = LastError(record.time, attempt.status, reason)
        if record.outcome == "retrying":
            if len(figures.retrying) < self._tracked:
                figures.retrying.add(ledger.event_key(record.source, record.id))
            return
        if figures.retrying:  # the key is a JSON encoding: most outcomes follow no retry
            figures.retrying.discard(ledger.event_key(record.source, record.id))
        if record.outcome == "delivered":
            figures.delivered += 1
        elif record.outcome == "dead-lettered":
            figures.dead_lettered += 1

    def figures(self) -> dict[str, Delivery]:
        """What each subscription's ``status.delivery`` shows, by ``namespace/name``."""
        return {key: figures.delivery() for key, figures in self._figures.items()}

    def keep_only(self, subscriptions: Collection[str]) -> None:
        """Forget the subscriptions not in ``subscriptions`` (``namespace/name``)."""
        for key in self._figures.keys() - set(subscriptions):
            del self._figures[key]


async def follow(
    client: JetStreamClient, stream: str, health: DeliveryHealth, stop: asyncio.Event
) -> None:
    """Feed ``health`` every record of the ledger ``stream``, from the start of its retention,
    until ``stop`` is set. A stream that is missing (the workers create it with their first
    record) or a connection that is lost is read again after :data:`_AGAIN` seconds, from the
    record after the last one taken."""
    after = 0  #: the stream sequence of the last record taken
    problem = ""
    while not stop.is_set():
        try:
            reading = await client.stored.follow_from(stream, f"{ledger.PREFIX}.>", after + 1)
            problem = ""
            try:
                while not stop.is_set():
                    for message in await reading.fetch(_BATCH, _WAIT):
                        after = message.sequence
                        try:
                            health.take(Record.from_bytes(message.data))
                        except ValueError as exc:  # anyone with NATS access may write there
                            logger.debug("ledger record %d is unreadable: %s", after, exc)
                    # A fetch from a full queue never suspends: catching up on a long ledger
                    # would hold the loop that pulls events and serves the API.
                    await asyncio.sleep(0)
            finally:
                await reading.close()
        except NotFound as exc:
            if str(exc) != problem:
                logger.info("no delivery ledger %s yet, reading it once it exists", stream)
            problem = str(exc)
        except ConsumerError as exc:
            if str(exc) != problem and client.is_connected:  # else the client says so
                logger.warning(
                    "cannot read the delivery ledger %s (status.delivery stands still): %s",
                    stream,
                    exc,
                )
            problem = str(exc)
        except Exception:  # a fault of ours must not stop the manager's deliveries with it
            logger.exception("following the delivery ledger %s failed; reading again", stream)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _AGAIN)
