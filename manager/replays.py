"""Replays: a subscription's events once more, from the archive, to its current sink.

The archive (``JS_ARCHIVE_STREAM_NAME``, :func:`eventing.nats.streams.archive_config`) keeps a
copy of every event. A replay gives each type of the subscription a consumer on it,
``<live consumer>-replay`` (:func:`eventing.delivery.jobs.reading_consumer`), that starts at a
time or an archive sequence, and pulls it as the live pulls do: each event the subscription
receives (:meth:`~manager.consumers.Target.receives`) becomes a job of origin ``replay`` to the
subscription's sink and policy as they are now; the others are acked and left. It goes up to the
archive's last event when the replay started, and ends once the workers settled every job; then
its consumers are deleted and the :class:`~manager.operations.Operation` is done.

Expiry is never silent: an asked-for start before the archive's oldest event counts what
retention removed before it (:func:`expired`) in ``operation.expired`` and in
``eventing_archive_expired_total``.

A new subscription whose ``spec.delivery.startFrom`` lies in the past is replayed from then
(:meth:`Replayer.start_from`), with no gap at the seam with its live consumer: the live
consumer hands out what the event stream stores after its creation, and the replay waits for
the archive to hold everything the event stream had stored by then (the archive lags behind by
the sourcing's round trip), so an event at the seam may come twice, never not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from eventing import units
from eventing.delivery import jobs
from eventing.errors import BackendUnavailable, ConsumerError, NotFound
from eventing.nats.client import JetStreamClient
from eventing.nats.consumers import ConsumerApi
from eventing.nats.messages import PulledMessage, source_sequence
from eventing.nats.stored import StoredMessage
from manager.api import ApiContext, leading
from manager.consumers import Target, consumer
from manager.metrics import ManagerMetrics
from manager.operations import Operation
from manager.pulling import split_received
from manager.status import json_response, problem

logger = logging.getLogger(__name__)

ORIGIN = "replay"
_FETCH_TIMEOUT = 0.5  #: seconds a fetch waits (a consumer at its max_ack_pending says nothing)
_MAX_BATCH = 100
_HELD_PAUSE = 1.0  #: seconds between two looks at a subscription whose sink is refused
_CATCH_UP = 10.0  #: seconds the seam of a startFrom waits for the archive to catch up
_CATCH_UP_POLL = 0.1
_INACTIVE = 300.0  #: seconds without a pull before JetStream deletes a forgotten replay consumer
_ACK_TIMEOUT = 5.0
_ACK = b"+ACK"


class Replayer:
    """Starts replays and runs each one to its end; one at a time per subscription."""

    def __init__(self, context: ApiContext, metrics: ManagerMetrics) -> None:
        self._context = context
        self._metrics = metrics

    @property
    def _archive(self) -> str:
        return self._context.settings.stream.archive_name

    def routes(self) -> list[web.RouteDef]:
        """``POST /subscriptions/{namespace}/{name}/replay``."""
        return [web.post("/subscriptions/{namespace}/{name}/replay", self._replay)]

    async def _replay(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        start = _start(await request.read(), time.time())
        if isinstance(start, web.Response):
            return start
        if self._context.settings.stream.archive_max_age <= 0:
            return problem(
                409,
                "there is no archive to replay from: EVENT_ARCHIVE_MAX_AGE is 0 (set it to how"
                " long events are kept for replay, 24h by default)",
            )
        state = leading(self._context)
        if isinstance(state, web.Response):
            return state
        dispatcher, _ = state
        targets = [t for t in dispatcher.targets.values() if t.subscription.key == key]
        if not targets:
            return problem(404, f"no subscription {key} (or none of its consumers is set up)")
        running = self._running(key)
        if running is not None:
            return problem(
                409,
                f"replay {running.id} of {key} is still running; wait until"
                f" /operations/{running.id} says it is done",
                operation=running.id,
            )
        operation = self._begin(key, targets, since=start[0], sequence=start[1])
        return json_response({"operation": operation.to_dict()}, status=202)

    def start_from(self, created: Iterable[str]) -> None:
        """Replay each new subscription among the consumers just ``created`` (by name) from
        its ``spec.delivery.startFrom``, if it has one. A subscription's consumers that exist
        already are never in ``created``: a startFrom added later does nothing."""
        dispatcher = self._context.dispatcher
        if dispatcher is None:
            return
        by_key: dict[str, list[Target]] = {}
        for name in created:
            target = dispatcher.targets.get(name)
            if target is not None and target.subscription.start_from:
                by_key.setdefault(target.subscription.key, []).append(target)
        for key, targets in by_key.items():
            written = targets[0].subscription.start_from
            if self._context.settings.stream.archive_max_age <= 0:
                logger.warning(
                    "subscription %s starts from %s, but there is no archive"
                    " (EVENT_ARCHIVE_MAX_AGE=0): it gets new events only",
                    key,
                    written,
                )
                continue
            running = self._running(key)
            if running is not None:
                logger.warning(
                    "subscription %s: its new types do not start from %s: replay %s runs",
                    key,
                    written,
                    running.id,
                )
                continue
            since = units.moment(written, time.time())  # validated with the manifest
            operation = self._begin(key, targets, since=since, seam=True)
            logger.info("subscription %s starts from %s: %s", key, written, operation.id)

    def _running(self, key: str) -> Operation | None:
        return next(
            (
                o
                for o in self._context.operations.all()
                if o.kind == ORIGIN and o.subscription == key and o.state == "running"
            ),
            None,
        )

    def _begin(
        self,
        key: str,
        targets: list[Target],
        *,
        since: float | None = None,
        sequence: int | None = None,
        seam: bool = False,
    ) -> Operation:
        operation = self._context.operations.start(ORIGIN, key)
        self._context.spawn(self._run(operation, targets, since, sequence, seam), operation.id)
        return operation

    async def _run(
        self,
        operation: Operation,
        targets: list[Target],
        since: float | None,
        sequence: int | None,
        seam: bool,
    ) -> None:
        js = self._context.client.jetstream
        names = [jobs.reading_consumer(t.spec.name, ORIGIN) for t in targets]
        try:
            last = await (self._caught_up(js) if seam else self._last(js))
            operation.expired = await expired(self._context.client, self._archive, since, sequence)
            if operation.expired:
                namespace, _, name = operation.subscription.partition("/")
                self._metrics.archive_expired.labels(namespace, name).inc(operation.expired)
            for target, name in zip(targets, names, strict=True):
                await _delete_quietly(js, self._archive, name)  # one a crash left behind
                await js.put(
                    self._archive,
                    dataclasses.replace(
                        consumer(target.spec),
                        name=name,
                        description=f"replay of {target.spec.subscription}",
                        start_time=since,
                        start_sequence=sequence or 0,
                        inactive_threshold=_INACTIVE,
                    ),
                )
                operation.total += (await js.progress(self._archive, name)).pending
            async with asyncio.TaskGroup() as group:
                for target, name in zip(targets, names, strict=True):
                    group.create_task(self._pull(operation, target.spec.name, name, last))
        except* (ConsumerError, BackendUnavailable, _Gone) as failure:
            error = failure.exceptions[0]
            logger.warning("%s of %s failed: %s", operation.id, operation.subscription, error)
            operation.finish(f"failed: {error}", failed=True)
        except* Exception as failure:  # a bug: the operation must not say "running" forever
            logger.error("%s failed unexpectedly", operation.id, exc_info=failure.exceptions[0])
            operation.finish(f"failed unexpectedly: {failure.exceptions[0]!r}", failed=True)
        else:
            operation.total = operation.done + operation.skipped  # exact now; an estimate before
            operation.finish(_summary(operation, last))
        finally:
            for name in names:
                await _delete_quietly(js, self._archive, name)

    async def _last(self, js: ConsumerApi) -> int:
        """The archive's last sequence now: a replay goes up to it."""
        return (await js.stream_state(self._archive)).last_sequence

    async def _caught_up(self, js: ConsumerApi) -> int:
        """The archive's last sequence once it holds every event the event stream had stored
        when this was called (after the live consumers were created): the seam of a startFrom.

        The archive copies the event stream a moment later; its newest copy names the event it
        copied (``Nats-Stream-Source``). After :data:`_CATCH_UP` seconds (the seam's event is
        gone from the event stream and was never copied, say) it goes on, and says so.
        """
        seam = (await js.stream_state(self._context.settings.stream.name)).last_sequence
        deadline = time.monotonic() + _CATCH_UP
        while True:
            last = await self._last(js)
            newest = await _archived(self._context.client, self._archive, last) if last else None
            copied = source_sequence(newest.headers) if newest is not None else None
            if seam == 0 or (copied is not None and copied >= seam):
                return last
            if time.monotonic() > deadline:
                logger.warning(
                    "the archive holds the event stream up to %s, not %d: a startFrom replays"
                    " what it has",
                    copied,
                    seam,
                )
                return last
            await asyncio.sleep(_CATCH_UP_POLL)

    async def _pull(self, operation: Operation, live: str, name: str, last: int) -> None:
        """Pull the replay consumer ``name`` into jobs of the live consumer ``live``'s
        subscription, until every event up to the archive sequence ``last`` is settled."""
        context = self._context
        js = context.client.jetstream
        pull = await js.pull(self._archive, name)
        highest = 0  #: the highest sequence handed out: redeliveries are not counted twice
        try:
            while True:
                target = context.dispatcher.targets.get(live) if context.dispatcher else None
                if target is None:
                    raise _Gone(f"subscription {operation.subscription} is no longer delivered")
                if target.held is not None:
                    await asyncio.sleep(_HELD_PAUSE)  # its sink is refused: the events wait
                    continue
                batch = max(1, min(target.spec.max_ack_pending, _MAX_BATCH))
                messages = await pull.fetch(batch, _FETCH_TIMEOUT)
                wanted = [m for m in messages if m.stream_sequence <= last]
                # Beyond what the replay asked for: acked, so that the consumer's count of
                # unacked messages says when the replay is settled.
                await self._ack(m for m in messages if m.stream_sequence > last)
                if wanted:
                    handed = await self._hand_over(target, wanted)
                    if handed is not None:
                        operation.done += sum(1 for s in handed if s > highest)
                        highest = max(highest, *(m.stream_sequence for m in wanted))
                    continue
                progress = await js.progress(self._archive, name)
                settled = progress.ack_pending == 0
                if settled and (progress.pending == 0 or progress.delivered_sequence >= last):
                    return
        finally:
            await pull.close()

    async def _hand_over(self, target: Target, messages: list[PulledMessage]) -> list[int] | None:
        """Enqueue the jobs of the messages ``target``'s subscription receives and ack the
        others (not its events: not counted); the sequences of the jobs handed over, or None
        if they could not be (the archive hands them out again after the ack wait)."""
        context = self._context
        work, strangers = await asyncio.to_thread(split_received, target, messages)
        await self._ack(strangers)
        if context.enqueue is None:
            return None
        replayed = [dataclasses.replace(job, origin=ORIGIN) for job in work]
        try:
            if replayed:
                await asyncio.to_thread(context.enqueue, replayed)
        except Exception as exc:  # any broker failure: they come back after the ack wait
            logger.warning("could not enqueue %d replayed job(s): %s", len(replayed), exc)
            return None
        return [job.stream_sequence for job in replayed]

    async def _ack(self, messages: Iterable[PulledMessage]) -> None:
        client = self._context.client
        outcomes = await asyncio.gather(
            *(client.acknowledge(m.reply, _ACK, _ACK_TIMEOUT) for m in messages),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:  # they come back after the ack wait and are acked then
            logger.warning("could not ack %d replayed message(s): %s", len(failed), failed[0])


async def expired(
    client: JetStreamClient, archive: str, since: float | None, sequence: int | None
) -> int:
    """How many archived events retention removed from what a replay from ``since`` (Unix
    seconds) or ``sequence`` (of the archive) asked for.

    JetStream keeps nothing of a removed message, neither its subject nor its time, only that
    the archive's first sequence moved on. So it is the count of every event removed before the
    asked-for start's place in the archive: exact for a sequence, and for a time older than the
    oldest archived event every removed one (the asked-for time may lie between them), in
    either case of every subscription's subjects.
    """
    state = await client.jetstream.stream_state(archive)
    first = state.first_sequence
    if sequence is not None:
        return max(0, first - sequence)
    if since is None or first <= 1:
        return 0
    oldest = await _archived(client, archive, first) if state.messages else None
    if oldest is not None and oldest.time <= since:
        return 0
    return first - 1


async def _archived(client: JetStreamClient, archive: str, sequence: int) -> StoredMessage | None:
    """The archived message at ``sequence``; None when it is gone (retention or a purge removed
    it since the archive's state was read)."""
    try:
        return await client.stored.get(archive, sequence)
    except NotFound:
        return None


def _start(body: bytes, now: float) -> tuple[float | None, int | None] | web.Response:
    """Where a replay starts, from its request body: ``{"since": T}`` (what
    :func:`eventing.units.moment` reads) or ``{"sequence": N}`` (of the archive); else the 400
    to answer."""
    expected = (
        'expected a JSON object with one of "since" (an RFC 3339 time such as'
        ' 2026-12-01T10:00:00Z, or a duration ago such as 15m or 2h) and "sequence" (an archive'
        " stream sequence, an integer from 1)"
    )
    try:
        document: Any = json.loads(body or b"null")
    except ValueError:
        return problem(400, f"the body is no JSON; {expected}", expected=expected)
    if (
        not isinstance(document, dict)
        or len(document) != 1
        or not {"since", "sequence"} >= set(document)
    ):
        return problem(400, f"the body is {_shown(document)}; {expected}", expected=expected)
    if "sequence" in document:
        value = document["sequence"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            detail = f"sequence: expected an integer from 1, got {_shown(value)}"
            return problem(400, detail, field="sequence", expected="an integer from 1")
        return None, value
    value = document["since"]
    moment = "an RFC 3339 time such as 2026-12-01T10:00:00Z, or a duration ago such as 15m or 2h"
    if not isinstance(value, str):  # a bare number is no moment: seconds ago, or a timestamp?
        detail = f"since: expected a string, {moment}, got {_shown(value)}"
        return problem(400, detail, field="since", expected=moment)
    try:
        return units.moment(value, now), None
    except ValueError as exc:
        return problem(400, f"since: {exc}", field="since", expected=moment)


def _shown(value: Any) -> str:
    return json.dumps(value)[:100]


def _summary(operation: Operation, last: int) -> str:
    text = f"replayed {operation.done} event(s), up to archive sequence {last}"
    if operation.expired:
        text += (
            f"; up to {operation.expired} asked-for event(s) had expired from the archive"
            " (retention removed them; the count covers every subscription's events, JetStream"
            " keeps no subject of what it removed)"
        )
    return text


async def _delete_quietly(js: ConsumerApi, stream: str, name: str) -> None:
    with contextlib.suppress(ConsumerError):  # not there (NotFound), or NATS down: it expires
        await js.delete(stream, name)


class _Gone(Exception):
    """The subscription was deleted (or stopped being delivered) during its replay."""
