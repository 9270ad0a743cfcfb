"""Reading stored messages by subject, for the manager's API: never a scan of a whole stream.

A read is an ephemeral consumer of its own (in memory, one replica, no acks, dropped by the
server soon after its reader stops pulling), filtered to a subject: JetStream finds the
matching messages by its subject index, and :meth:`StreamReader.read` stops at a bound.
:meth:`StreamReader.follow` keeps pulling from such a consumer for as long as its caller
iterates (the ledger's tail). :meth:`StreamReader.message` and :meth:`StreamReader.consumer`
answer one direct question each (a message by sequence, a durable consumer's ack floor).
Every nats-py error becomes a :class:`~eventing.errors.ConsumerError` (``NotFound`` for a
stream, consumer or message that is not there).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventing.errors import ConsumerError, NotFound

logger = logging.getLogger(__name__)

_INACTIVE = 10.0  #: seconds after its last pull that the server drops a reader's consumer
_BATCH = 256
_FETCH_TIMEOUT = 2.0  #: seconds a pull of messages known to be there may take
_IDLE_WAIT = 1.0  #: seconds a follower waits for a new message before it yields nothing
_BUSY_WAIT = 0.05


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as the stream holds it."""

    subject: str
    data: bytes
    headers: dict[str, str]
    sequence: int
    time: float  #: when it was stored (Unix seconds)


@dataclass(frozen=True, slots=True)
class ConsumerPosition:
    """Where a durable consumer stands in its stream."""

    ack_floor: int  #: every stream sequence up to this one is acknowledged
    created: float  #: Unix seconds; a consumer that starts at "new" never gets older messages


class StreamReader:
    """Reads of the connection that is up right now (``None``: not connected)."""

    def __init__(self, js: JetStreamContext | None) -> None:
        self._js = js

    async def read(
        self, stream: str, subject: str, limit: int, *, headers_only: bool = False
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages of ``stream`` on ``subject`` (wildcards allowed), oldest
        first; what was stored while reading may be left out.

        Raises:
            NotFound: no such stream.
            ConsumerError: the server could not be asked.
        """
        config = _config(subject, DeliverPolicy.ALL, headers_only=headers_only)
        found: list[StoredMessage] = []
        async with self._consumer(stream, config) as (pending, pull):
            wanted = min(pending, limit)
            while len(found) < wanted:
                batch = await _fetch(pull, min(_BATCH, wanted - len(found)), _FETCH_TIMEOUT)
                if not batch:
                    break
                found += batch
        return found

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
        if since is None:
            config = _config(subject, DeliverPolicy.NEW)
        else:
            config = _config(subject, DeliverPolicy.BY_START_TIME)
            config.opt_start_time = datetime.datetime.fromtimestamp(since, datetime.UTC)
        async with self._consumer(stream, config) as (_, pull):
            yield _batches(pull)

    async def message(self, stream: str, sequence: int) -> StoredMessage:
        """The message stored at ``sequence``.

        Raises:
            NotFound: no such stream, or no message there (never stored, or gone).
            ConsumerError: the server could not be asked.
        """
        js = self._require()
        with _translated():
            raw = await js.get_msg(stream, sequence)
        stored = raw.time.timestamp() if raw.time is not None else 0.0
        return StoredMessage(
            raw.subject or "", raw.data or b"", dict(raw.headers or {}), raw.seq or 0, stored
        )

    async def consumer(self, stream: str, name: str) -> ConsumerPosition:
        """Where the durable consumer ``name`` stands.

        Raises:
            NotFound: no such stream or consumer.
            ConsumerError: the server could not be asked.
        """
        js = self._require()
        with _translated():
            info = await js.consumer_info(stream, name)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        return ConsumerPosition(floor, info.created.timestamp() if info.created else 0.0)

    @contextlib.asynccontextmanager
    async def _consumer(
        self, stream: str, config: ConsumerConfig
    ) -> AsyncIterator[tuple[int, JetStreamContext.PullSubscription]]:
        """An ephemeral consumer of ``config`` and a pull on it: (messages pending, the pull);
        deleted when done (else the server drops it ``_INACTIVE`` later)."""
        js = self._require()
        config.name = f"eventing-reader-{secrets.token_hex(8)}"
        with _translated():
            info = await js.add_consumer(stream, config)
            pull = await js.pull_subscribe_bind(config.name, stream=stream)
        try:
            yield info.num_pending or 0, pull
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await pull.unsubscribe()
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await js.delete_consumer(stream, config.name)

    def _require(self) -> JetStreamContext:
        if self._js is None:
            raise ConsumerError("not connected to NATS")
        return self._js


def _config(subject: str, deliver: DeliverPolicy, *, headers_only: bool = False) -> ConsumerConfig:
    return ConsumerConfig(
        deliver_policy=deliver,
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=_INACTIVE,
        mem_storage=True,
        num_replicas=1,
        headers_only=headers_only or None,
    )


async def _batches(pull: JetStreamContext.PullSubscription) -> AsyncIterator[list[StoredMessage]]:
    batch, wait = 1, _IDLE_WAIT
    while True:
        messages = await _fetch(pull, batch, wait)
        yield messages
        # nats-py's fetch(n) waits its whole timeout for n once one came: an idle follower
        # asks for one (answered the moment it is stored), a busy one for many.
        batch, wait = (_BATCH, _BUSY_WAIT) if messages else (1, _IDLE_WAIT)


async def _fetch(
    pull: JetStreamContext.PullSubscription, batch: int, timeout: float
) -> list[StoredMessage]:
    with _translated():
        try:
            messages = await pull.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats-py's own TimeoutError is one too
            return []
    return [
        StoredMessage(
            subject=message.subject,
            data=message.data,
            headers=dict(message.headers or {}),
            sequence=message.metadata.sequence.stream,
            time=message.metadata.timestamp.timestamp(),
        )
        for message in messages
    ]


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """nats-py's errors and timeouts as :class:`ConsumerError`, ``raise ... from`` them."""
    try:
        yield
    except nats.js.errors.NotFoundError as exc:
        raise NotFound(str(getattr(exc, "description", None) or exc)) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise ConsumerError(str(getattr(exc, "description", None) or exc or type(exc))) from exc
