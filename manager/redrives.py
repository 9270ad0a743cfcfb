"""Redrives: dead letters sent again to their subscription's current sink, never the proxy's way.

A redrive reads ``dlq.<consumer>`` through a durable consumer of its own on the dead-letter
stream, ``<consumer>-redrive`` (:func:`eventing.delivery.jobs.reading_consumer`), started at the
first chosen dead letter, and turns each chosen one into a job of origin ``redrive`` for that
subscription type alone: its current sink, credentials and retry policy, through the workers.
No other subscription of the type sees it, and no duplicate window stands in the way (the
event is not published again). Dead letters of the subject that were not chosen are acked on
that consumer at once: acks never remove anything from a limits stream. The workers settle each
job (:mod:`workers.redrives`): delivered, its dead letter is deleted; failed for good again, it
is replaced by an updated one. The consumer is deleted once nothing of it is unsettled, so one
redrive per subscription type runs at a time (a second answers 409).

A ``redriven`` ledger record marks each dead letter handed over; the worker's records of the
redrive (origin ``redrive``) follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from aiohttp import web

from eventing import units
from eventing.delivery import jobs, ledger
from eventing.delivery.deadletters import Letter
from eventing.errors import ConsumerError, NotFound
from eventing.nats.messages import DEAD_LETTER_PREFIX, PulledMessage
from eventing.nats.streams import Consumer
from manager.api import ApiContext, leading
from manager.consumers import Target
from manager.operations import Operation
from manager.reconcile import MANAGED_BY
from manager.status import json_response, problem

logger = logging.getLogger(__name__)

_FETCH_TIMEOUT = 1.0
_SETTLED_WITHIN = 2 * _FETCH_TIMEOUT  #: how long a new redrive waits for an earlier one's end
_BATCH = 100
_LEDGER_TIMEOUT = 0.5  #: a redriven record is a note: it never holds a redrive up long
_ACK = b"+ACK"


def consumers_of(context: ApiContext, subscription: Any) -> list[str] | web.Response:
    """The live consumers of ``subscription`` (``namespace/name``), or the problem to answer."""
    if not isinstance(subscription, str) or subscription.count("/") != 1:
        return problem(
            400, f"subscription: expected NAMESPACE/NAME, got {str(subscription)[:80]!r}"
        )
    found = leading(context)
    if isinstance(found, web.Response):
        return found
    dispatcher, _ = found
    names = sorted(n for n, t in dispatcher.targets.items() if t.subscription.key == subscription)
    if not names:
        return problem(404, f"no subscription {subscription} is being delivered")
    return names


class Redrives:
    """The redrives of one manager process, one at a time per subscription type."""

    def __init__(self, context: ApiContext) -> None:
        self._context = context
        self._stream = context.settings.stream.dead_letter_name
        self._running: dict[str, asyncio.Task[None]] = {}  #: by live consumer

    async def start(self, body: dict[str, Any]) -> web.Response:
        """Start the redrive ``body`` asks for: 202 and its operation, or the problem."""
        chosen = await self._choose(body)
        if isinstance(chosen, web.Response):
            return chosen
        earlier = [self._running[c] for c in chosen if c in self._running]
        if earlier:  # one that handed everything over notices it is settled within a fetch
            await asyncio.wait(earlier, timeout=_SETTLED_WITHIN)
        busy = sorted(c for c in chosen if c in self._running and not self._running[c].done())
        if busy:
            return problem(
                409,
                f"an earlier redrive of {busy[0]} still has jobs under way (its consumer"
                f" {jobs.reading_consumer(busy[0], 'redrive')} lives until they are settled);"
                " one redrive per subscription type runs at a time, ask again later",
            )
        subscriptions = {self._target(c).subscription.key for c in chosen}
        operation = self._context.operations.start(
            "redrive",
            subscriptions.pop() if len(subscriptions) == 1 else "",
            sum(len(s) for s in chosen.values()),
        )
        if not chosen:
            operation.finish("no dead letter matched")
        progress = _Progress(operation, len(chosen))
        for consumer, sequences in chosen.items():
            self._running[consumer] = self._context.spawn(
                self._redrive(consumer, sequences, progress), f"redrive-{consumer}"
            )
        return json_response({"operation": operation.to_dict()}, status=202)

    async def _choose(self, body: dict[str, Any]) -> dict[str, set[int]] | web.Response:
        """The chosen dead letters, by live consumer."""
        if "sequences" in body:
            if set(body) != {"sequences"}:
                return problem(400, "sequences: given alone, without subscription, reason, since")
            return await self._by_sequence(body["sequences"])
        if "subscription" not in body or set(body) - {"subscription", "reason", "since"}:
            return problem(
                400,
                'expected {"subscription": "NS/NAME"} (with "reason" and "since" if wanted) or'
                f' {{"sequences": [n, ...]}}, got the fields {sorted(body)}',
            )
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            return problem(400, "reason: expected a text (matched case-insensitively)")
        since = None
        if "since" in body:
            try:
                since = units.moment(str(body["since"]), time.time())
            except ValueError as exc:
                return problem(400, f"since: {exc}")
        consumers = consumers_of(self._context, body["subscription"])
        if isinstance(consumers, web.Response):
            return consumers
        chosen: dict[str, set[int]] = {}
        try:
            for consumer in consumers:
                subject = f"{DEAD_LETTER_PREFIX}.{consumer}"
                async for stored in self._context.client.stored.scan(
                    self._stream, [subject], since=since, headers_only=True
                ):
                    letter = Letter.of(stored.sequence, stored.subject, stored.headers, stored.time)
                    if letter.matches(reason, since):
                        chosen.setdefault(consumer, set()).add(stored.sequence)
        except NotFound:
            return {}
        except ConsumerError as exc:
            return problem(503, f"the dead-letter stream did not answer: {exc}")
        return chosen

    async def _by_sequence(self, sequences: Any) -> dict[str, set[int]] | web.Response:
        if (
            not isinstance(sequences, list)
            or not sequences
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sequences)
        ):
            return problem(400, "sequences: expected a non-empty list of dead-letter sequences")
        found = leading(self._context)
        if isinstance(found, web.Response):
            return found
        targets = found[0].targets
        chosen: dict[str, set[int]] = {}
        for sequence in sequences:
            try:
                stored = await self._context.client.stored.get(self._stream, sequence)
            except NotFound:
                return problem(404, f"no dead letter {sequence} in {self._stream}")
            except ConsumerError as exc:
                return problem(503, f"the dead-letter stream did not answer: {exc}")
            letter = Letter.of(sequence, stored.subject, stored.headers, stored.time)
            if letter.consumer not in targets:
                return problem(
                    404,
                    f"dead letter {sequence}: its subscription {letter.subscription} ("
                    f"{letter.type}) is no longer delivered; purge it instead",
                )
            chosen.setdefault(letter.consumer, set()).add(sequence)
        return chosen

    def _target(self, consumer: str) -> Target:
        found = leading(self._context)
        assert not isinstance(found, web.Response), "chosen only while leading"
        return found[0].targets[consumer]

    async def _redrive(self, consumer: str, sequences: set[int], progress: _Progress) -> None:
        """Hand ``sequences`` of ``dlq.<consumer>`` over, then wait until they are settled."""
        name = jobs.reading_consumer(consumer, "redrive")
        js = self._context.client.jetstream
        handed: set[int] = set()
        try:
            target = self._target(consumer)
            spec = Consumer(
                name=name,
                subjects=(f"{DEAD_LETTER_PREFIX}.{consumer}",),
                max_ack_pending=target.spec.max_ack_pending,
                ack_wait=target.spec.ack_wait,
                description=f"redrive of {target.subscription.key}/{target.spec.event_type}",
                metadata={"managed-by": MANAGED_BY, "subscription": target.subscription.key},
                start_sequence=min(sequences),
            )
            with contextlib.suppress(NotFound):  # one left behind by a manager that stopped
                await js.delete(self._stream, name)
            await js.put(self._stream, spec)
            pull = await js.pull(self._stream, name)
            try:
                while True:
                    messages = await pull.fetch(_BATCH, _FETCH_TIMEOUT)
                    if messages:
                        await self._hand_over(consumer, messages, sequences, handed)
                        progress.handed(consumer, len(handed))
                        continue
                    standing = await js.progress(self._stream, name)
                    if not standing.pending:
                        progress.ended(consumer, len(sequences) - len(handed))
                        if not standing.ack_pending:
                            break
            finally:
                await pull.close()
        except Exception as exc:  # NATS or broker trouble: the operation says so
            logger.warning("redrive of %s stopped: %s", consumer, exc)
            failure = f"{type(exc).__name__}: {exc}"
            progress.ended(consumer, len(sequences) - len(handed), failure)
        finally:
            # Jobs still under way lose only their ack: their dead letter is deleted or
            # replaced before it, and what is left stays in the stream for the next redrive.
            with contextlib.suppress(ConsumerError):
                await js.delete(self._stream, name)

    async def _hand_over(
        self, consumer: str, messages: list[PulledMessage], chosen: set[int], handed: set[int]
    ) -> None:
        """Enqueue the chosen messages' jobs (again, when redelivered); ack the others."""
        found = leading(self._context)
        if isinstance(found, web.Response):
            raise ConsumerError("this manager stopped leading")
        dispatcher, enqueue = found
        target = dispatcher.targets.get(consumer)
        if target is None:
            raise ConsumerError(f"its subscription is no longer delivered ({consumer})")
        own = [m for m in messages if m.stream_sequence in chosen]
        others = [m for m in messages if m.stream_sequence not in chosen]
        client = self._context.client
        timeout = self._context.settings.stream.dead_letter_publish_timeout
        await asyncio.gather(*(client.acknowledge(m.reply, _ACK, timeout) for m in others))
        if not own:
            return
        work = [_job(target, message) for message in own]
        # Noted before the jobs go: a worker's record of the delivery then always follows it.
        await self._note_redriven(target, [m for m in own if m.stream_sequence not in handed])
        await asyncio.to_thread(enqueue, work)
        handed.update(m.stream_sequence for m in own)

    async def _note_redriven(self, target: Target, messages: list[PulledMessage]) -> None:
        """Write the ``redriven`` ledger record of each dead letter handed over (best effort)."""
        if not messages or not self._context.settings.stream.ledger_max_age:
            return
        now = time.time()
        records = []
        for message in messages:
            letter = Letter.of(message.stream_sequence, "", message.headers, message.published)
            records.append(
                ledger.Record(
                    subscription=target.subscription.key,
                    source=letter.source,
                    id=letter.id,
                    type=letter.type,
                    sequence=message.stream_sequence,
                    origin="redrive",
                    outcome="redriven",
                    time=now,
                ).message()
            )
        outcomes = await self._context.client.publish_many(
            records, _LEDGER_TIMEOUT, stream=self._context.settings.stream.ledger_name
        )
        failed = [outcome for outcome in outcomes if outcome is not None]
        if failed:
            logger.debug("%d redriven record(s) not written: %s", len(failed), failed[0])


def _job(target: Target, message: PulledMessage) -> jobs.DeliveryJob:
    """The redrive job of one dead letter: the live consumer's subscription as it is now."""
    return dataclasses.replace(
        target.job(message), origin="redrive", dead_letter_sequence=message.stream_sequence
    )


class _Progress:
    """The operation of a redrive across its subscription types' tasks."""

    def __init__(self, operation: Operation, parts: int) -> None:
        self._operation = operation
        self._handed: dict[str, int] = {}
        self._open = parts
        self._ended: set[str] = set()
        self._failure = ""

    def handed(self, consumer: str, count: int) -> None:
        self._handed[consumer] = count
        self._operation.done = sum(self._handed.values())

    def ended(self, consumer: str, skipped: int, failure: str = "") -> None:
        """Everything of ``consumer`` was handed over (``skipped`` were gone meanwhile), or
        its redrive stopped with ``failure``."""
        if consumer in self._ended:
            return
        self._ended.add(consumer)
        self._operation.skipped += skipped
        if failure:
            self._failure = failure
        elif skipped:
            self._operation.detail = "some dead letters were gone (purged or expired) meanwhile"
        if len(self._ended) == self._open:
            self._operation.finish(self._failure, failed=bool(self._failure))
