"""Reading and removing what a stream stores, without loading it: events, dead letters, ledger
records.

The manager's API browses the event, dead-letter and ledger streams through
:class:`StoredMessages` (``client.stored``); workers read and remove dead letters with it. Every
read of many messages is an ephemeral consumer of its own (in memory, one replica, no acks,
removed by the server :data:`_IDLE` seconds after its reader stops pulling), filtered on
subjects by the server: JetStream finds the matching messages by its subject index, so a read
costs what it shows, never the stream's size in memory.

- :meth:`StoredMessages.scan`: the messages stored so far, oldest first, from a sequence or a
  time, in pages, up to a bound if asked, without bodies when only headers are needed
  (``headers_only``); never a silently short answer, which would end a listing's pages.
- :meth:`StoredMessages.follow`: the messages stored from now (or a time) on, for as long as the
  caller iterates (the ledger's tail: one HTTP answer's lifetime; it ends with the connection).
- :meth:`StoredMessages.follow_from`: the messages from a sequence on, for as long as a process
  lives (the manager's ledger follower): an ordered consumer, which nats-py recreates at the
  next sequence after a gap (a reconnection, a server that restarted). Not the tail's reading:
  an ordered consumer that has taken nothing yet is recreated at the stream's first sequence,
  so one "from now" or "from a time" would hand out the whole stream after a gap.
- :meth:`StoredMessages.get` and :meth:`StoredMessages.delete`: one message by sequence.

Every nats-py error becomes a :class:`~eventing.errors.ConsumerError`
(:class:`~eventing.errors.NotFound` for a missing stream or message).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventing.errors import ConsumerError
from eventing.nats.consumers import _translated

logger = logging.getLogger(__name__)

_PAGE = 256  #: messages per fetch
_FETCH_TIMEOUT = 2.0  #: a page that is pending arrives at once; this only bounds a lost one
_IDLE = 30.0  #: seconds unpulled after which the server removes a reading's consumer: one a
#: crashed reader left behind, not one whose caller takes its time between pages
_IDLE_WAIT = 1.0  #: seconds a follower waits for a new message before it yields nothing
_BUSY_WAIT = 0.05
_ORDERED_HEARTBEAT = 2.0  #: seconds between an ordered consumer's heartbeats when idle


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as its stream stores it (``data`` is empty for a headers-only read)."""

    sequence: int
    subject: str
    headers: dict[str, str]
    data: bytes
    time: float  #: when the stream stored it (Unix seconds)


class StoredMessages:
    """The stored messages of the connection that is up right now (``None``: not connected)."""

    def __init__(self, js: JetStreamContext | None) -> None:
        self._js = js

    async def scan(
        self,
        stream: str,
        subjects: Sequence[str],
        *,
        after: int = 0,
        since: float | None = None,
        limit: int | None = None,
        headers_only: bool = False,
    ) -> AsyncGenerator[StoredMessage, None]:
        """The messages of ``stream`` on ``subjects`` (wildcards allowed), oldest first, from
        the sequence after ``after`` (or the first stored at or after ``since``), at most
        ``limit`` of them. A caller that stops early closes the iteration
        (``contextlib.aclosing``), which deletes the scan's consumer.

        Raises:
            NotFound: no such stream.
            ConsumerError: the server did not answer, or pending messages did not arrive.
        """
        policy, sequence, moment = _start(after, since)
        config = _config(subjects, policy, headers_only=headers_only)
        config.opt_start_seq, config.opt_start_time = sequence, moment
        read = 0

        def bounded(pending: int) -> int:
            return pending if limit is None else min(pending, limit - read)

        async with self._consumer(stream, config) as (pending, pull):
            remaining = bounded(pending)
            while remaining:
                page = await _fetch(pull, min(_PAGE, remaining), _FETCH_TIMEOUT)
                if not page:
                    # Deleted since they were counted, or lost: never a silently short
                    # answer, which would end a listing's pages.
                    with _translated():
                        info = await self._require().consumer_info(stream, config.name or "")
                    remaining = bounded(info.num_pending or 0)
                    if remaining:
                        raise ConsumerError(
                            f"reading {stream} stopped: {remaining} message(s) pending did"
                            f" not arrive within {_FETCH_TIMEOUT:g}s"
                        )
                for message in page:
                    read += 1
                    remaining = bounded(message.metadata.num_pending)
                    yield _stored(message, headers_only)

    @contextlib.asynccontextmanager
    async def follow(
        self, stream: str, subject: str, since: float | None = None
    ) -> AsyncIterator[AsyncIterator[list[StoredMessage]]]:
        """The messages stored on ``subject`` from the moment this returns (or from ``since``,
        Unix seconds), a batch at a time as they come, with an empty batch about every second
        while none do so the caller can look up; for as long as the context lasts.

        Raises:
            NotFound: no such stream.
            ConsumerError: the server could not be asked.
        """
        config = _config([subject], DeliverPolicy.NEW)
        if since is not None:
            config.deliver_policy, _, config.opt_start_time = _start(0, since)
        async with self._consumer(stream, config) as (_, pull):
            yield _batches(pull)

    async def follow_from(self, stream: str, subject: str, start: int) -> Following:
        """Read ``subject`` of ``stream`` in order from the sequence ``start`` (or the oldest
        message kept after it) on: an ordered consumer, in the server's memory and never acked,
        that nats-py recreates after a gap (a reconnection, two missed heartbeats: a server that
        restarted lost it).

        Raises:
            NotFound: no such stream.
            ConsumerError: the server could not be asked.
        """
        js = self._require()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start, 1)
        )
        with _translated():
            subscription = await js.subscribe(
                subject,
                stream=stream,
                config=config,
                ordered_consumer=True,
                idle_heartbeat=_ORDERED_HEARTBEAT,
            )
        return Following(subscription)

    async def get(self, stream: str, sequence: int) -> StoredMessage:
        """The message at ``sequence``.

        Raises:
            NotFound: no such stream, or no such message (never stored, deleted, or expired).
            ConsumerError: the server could not be asked.
        """
        js = self._require()
        with _translated():
            raw = await js.get_msg(stream, sequence)
        stored = raw.time.timestamp() if raw.time is not None else 0.0
        return StoredMessage(
            raw.seq or sequence, raw.subject or "", dict(raw.headers or {}), raw.data or b"", stored
        )

    async def delete(self, stream: str, sequence: int) -> bool:
        """Remove the message at ``sequence``; False if it was not there (any more)."""
        js = self._require()
        try:
            with _translated():
                return await js.delete_msg(stream, sequence)
        except ConsumerError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError) or "not found" in str(exc):
                return False
            raise

    @contextlib.asynccontextmanager
    async def _consumer(
        self, stream: str, config: ConsumerConfig
    ) -> AsyncIterator[tuple[int, JetStreamContext.PullSubscription]]:
        """An ephemeral consumer of ``config`` and a pull on it: (messages pending, the pull);
        deleted when done (else the server removes it :data:`_IDLE` seconds later)."""
        js = self._require()
        config.name = f"eventing-reader-{secrets.token_hex(8)}"
        with _translated():
            info = await js.add_consumer(stream, config)
        try:
            with _translated():
                pull = await js.pull_subscribe_bind(config.name, stream=stream)
            try:
                yield info.num_pending or 0, pull
            finally:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await pull.unsubscribe()
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await js.delete_consumer(stream, config.name)

    def _require(self) -> JetStreamContext:
        if self._js is None:
            raise ConsumerError("not connected to NATS")
        return self._js


class Following:
    """An ordered reading of a stream (:meth:`StoredMessages.follow_from`); :meth:`close` it
    when done."""

    def __init__(self, subscription: JetStreamContext.PushSubscription) -> None:
        self._subscription = subscription

    async def fetch(self, batch: int, timeout: float) -> list[StoredMessage]:
        """Up to ``batch`` messages, waiting up to ``timeout`` seconds for the first; none if
        nothing came."""
        read: list[StoredMessage] = []
        with _translated():
            try:
                read.append(_stored(await self._subscription.next_msg(timeout)))
                while len(read) < batch and self._subscription.pending_msgs:
                    read.append(_stored(await self._subscription.next_msg(timeout)))
            except TimeoutError:  # nats-py's own TimeoutError is one too
                pass
        return read

    async def close(self) -> None:
        """Unsubscribe (the server then drops the consumer); never raises."""
        try:
            await self._subscription.unsubscribe()
        except (nats.errors.Error, TimeoutError) as exc:
            logger.debug("closing an ordered reading: %r", exc)


def _start(
    after: int, since: float | None
) -> tuple[DeliverPolicy, int | None, datetime.datetime | None]:
    if after:
        return DeliverPolicy.BY_START_SEQUENCE, after + 1, None
    if since is not None:
        moment = datetime.datetime.fromtimestamp(since, datetime.UTC)
        return DeliverPolicy.BY_START_TIME, None, moment
    return DeliverPolicy.ALL, None, None


def _config(
    subjects: Sequence[str], deliver: DeliverPolicy, *, headers_only: bool = False
) -> ConsumerConfig:
    return ConsumerConfig(
        deliver_policy=deliver,
        ack_policy=AckPolicy.NONE,
        filter_subjects=list(subjects),
        inactive_threshold=_IDLE,
        mem_storage=True,
        num_replicas=1,
        headers_only=headers_only or None,
    )


async def _batches(pull: JetStreamContext.PullSubscription) -> AsyncIterator[list[StoredMessage]]:
    batch, wait = 1, _IDLE_WAIT
    while True:
        messages = [_stored(message) for message in await _fetch(pull, batch, wait)]
        yield messages
        # nats-py's fetch(n) waits its whole timeout for n once one came: an idle follower
        # asks for one (answered the moment it is stored), a busy one for many.
        batch, wait = (_PAGE, _BUSY_WAIT) if messages else (1, _IDLE_WAIT)


async def _fetch(pull: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """Up to ``batch`` messages; none if nothing came within ``timeout`` seconds."""
    with _translated():
        try:
            return await pull.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats-py's own TimeoutError is one too
            return []


def _stored(message: Msg, headers_only: bool = False) -> StoredMessage:
    metadata = message.metadata
    return StoredMessage(
        sequence=metadata.sequence.stream,
        subject=message.subject,
        headers=dict(message.headers or {}),
        data=b"" if headers_only else message.data,
        time=metadata.timestamp.timestamp(),
    )
