"""JetStream consumers in our own types: create, update, delete and list them, pull, and say
where they and their streams stand (:meth:`ConsumerApi.progress`, :meth:`ConsumerApi.stream_state`).

The manager reaches its consumers only through :class:`ConsumerApi` (``client.jetstream``), so
no service imports nats-py: consumers are described by :class:`~eventing.nats.streams.Consumer`,
pulled messages by :class:`~eventing.nats.messages.PulledMessage`, and every nats-py error (or a
timeout) becomes a :class:`~eventing.errors.ConsumerError` with the server's description.
Acks are not here: any connection may ack (:meth:`JetStreamClient.acknowledge`). Stored
messages by subject or sequence are read in :mod:`eventing.nats.stored`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from eventing.errors import ConsumerError, NotFound
from eventing.nats.messages import PulledMessage
from eventing.nats.streams import Consumer, consumer_config, consumer_of

logger = logging.getLogger(__name__)

_PAGE = 256  #: consumers per page of the server's consumer list
_REQUEST_MARGIN = 0.25  #: seconds past a pull request's expiry before it counts as lost


@dataclass(frozen=True, slots=True)
class StreamState:
    """Where a stream stands: its first and last sequence (``first > last``: empty)."""

    first_sequence: int
    last_sequence: int
    messages: int
    bytes: int
    source_lag: int | None = None  #: how far behind its first source it is, if it has one


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a consumer has come."""

    pending: int  #: matching messages not handed out yet
    ack_pending: int  #: handed out, not acked yet
    delivered_sequence: int  #: the stream sequence of the last message handed out
    ack_floor: int  #: every stream sequence up to this one is acknowledged
    created: float  #: Unix seconds; a consumer that starts at "new" never gets older messages


class ConsumerApi:
    """The consumers of the connection that is up right now (``None``: not connected)."""

    def __init__(self, js: JetStreamContext | None) -> None:
        self._js = js

    async def consumers(self, stream: str) -> list[Consumer]:
        """Every consumer of ``stream``, as the server reports it."""
        js = self._require()
        found: list[Consumer] = []
        with _translated():
            while True:
                page = await js.consumers_info(stream, offset=len(found))
                found += (consumer_of(info) for info in page)
                if len(page) < _PAGE:
                    return found

    async def put(self, stream: str, consumer: Consumer) -> None:
        """Create ``consumer`` on ``stream``, or update it in place."""
        js = self._require()
        with _translated():
            await js.add_consumer(stream, consumer_config(consumer))

    async def delete(self, stream: str, name: str) -> None:
        """Delete the consumer ``name`` of ``stream``."""
        js = self._require()
        with _translated():
            await js.delete_consumer(stream, name)

    async def pending(self, stream: str, name: str) -> int:
        """How many messages are stored for the consumer and not handed out yet."""
        js = self._require()
        with _translated():
            info = await js.consumer_info(stream, name)
        return info.num_pending or 0

    async def progress(self, stream: str, name: str) -> Progress:
        """How far the consumer ``name`` has come.

        Raises:
            NotFound: no such stream or consumer.
            ConsumerError: the server could not be asked.
        """
        js = self._require()
        with _translated():
            info = await js.consumer_info(stream, name)
        return Progress(
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            delivered_sequence=info.delivered.stream_seq if info.delivered else 0,
            ack_floor=info.ack_floor.stream_seq if info.ack_floor else 0,
            created=info.created.timestamp() if info.created else 0.0,
        )

    async def stream_state(self, stream: str) -> StreamState:
        """Where ``stream`` stands now."""
        js = self._require()
        with _translated():
            info = await js.stream_info(stream)
        sources = info.sources or []
        return StreamState(
            first_sequence=info.state.first_seq,
            last_sequence=info.state.last_seq,
            messages=info.state.messages,
            bytes=info.state.bytes,
            source_lag=sources[0].lag if sources else None,
        )

    async def pull(self, stream: str, name: str) -> Pull:
        """A pull subscription on the durable consumer ``name`` (which must exist)."""
        js = self._require()
        with _translated():
            return Pull(name, await js.pull_subscribe_bind(durable=name, stream=stream))

    def _require(self) -> JetStreamContext:
        if self._js is None:
            raise ConsumerError("not connected to NATS")
        return self._js


class Pull:
    """One pull subscription; :meth:`close` it when done (its inbox lives on the connection)."""

    def __init__(self, name: str, subscription: JetStreamContext.PullSubscription) -> None:
        self.name = name
        self._subscription = subscription
        self._outstanding = 0  #: messages the open pull request of :meth:`take` may still bring
        self._request_ends = 0.0  #: monotonic time after which that request counts as ended

    @property
    def requesting(self) -> bool:
        """Whether a pull request of :meth:`take` may still deliver messages."""
        return self._outstanding > 0 and time.monotonic() < self._request_ends

    async def take(
        self, batch: int, timeout: float, *, gather: float = 0.0, renew: bool = True
    ) -> list[PulledMessage]:
        """The messages that arrived, as soon as there is one: a streaming pull.

        One pull request for up to ``batch`` messages, expiring after ``timeout``, stays open
        across calls (as nats.go's ``Consume`` keeps its requests open), so a message the
        server has is pushed at once instead of waiting for a fetch's round trip, and
        whatever arrived meanwhile is taken together. A call opens a new request only when the
        last one ended (filled, expired, or ended with a status) and ``renew`` is set, at most
        one per call; a call without a message lasts ``timeout`` (without ``renew``: until
        the open request ends), so a consumer at its ``max_ack_pending`` is never polled
        faster than once per ``timeout``. ``renew=False`` lets the open request end before
        the caller does something that must not have one open (shedding). After the first
        message, the call waits up to ``gather`` seconds for more (what a paced publisher
        sends a few milliseconds apart then shares a hand-over and a job).

        Reads the subscription's queue directly, as nats-py's own ``fetch`` does: its
        ``next_msg`` costs a task per message.
        """
        sub = self._subscription._sub
        if sub is None:
            raise ConsumerError("the pull subscription is closed")
        queue = sub._pending_queue
        started = time.monotonic()
        with _translated():
            if renew and not self.requesting:
                await self._request(batch, timeout)
            first: Msg | None = None
            while first is None:
                left = timeout - (time.monotonic() - started)
                if not renew:
                    left = min(left, self._request_ends - time.monotonic())
                if left <= 0:
                    return []
                try:
                    msg = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    return []
                _taken(sub, msg)
                if self._processable(msg):
                    first = msg
                elif not renew and not self.requesting:
                    return []
            messages = [first]
            gathered_by = time.monotonic() + gather
            while len(messages) < batch:
                if not queue.empty():
                    msg = queue.get_nowait()
                else:
                    left = gathered_by - time.monotonic()
                    if left <= 0 or not self.requesting:
                        break
                    try:
                        msg = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                _taken(sub, msg)
                if self._processable(msg):
                    messages.append(msg)
        return [_pulled(message) for message in messages]

    async def _request(self, batch: int, timeout: float) -> None:
        expires = int(timeout * 1_000_000_000)
        request = json.dumps({"batch": batch, "expires": expires}).encode()
        subscription = self._subscription
        await subscription._nc.publish(subscription._nms, request, subscription._deliver)
        self._outstanding = batch
        self._request_ends = time.monotonic() + timeout + _REQUEST_MARGIN

    def _processable(self, msg: Msg) -> bool:
        """Whether ``msg`` is a message to deliver; a status ends the open request (an
        unexpected one raises, as nats-py's ``fetch`` does), a heartbeat is skipped."""
        status = JetStreamContext.is_status_msg(msg)
        if not status:
            self._outstanding -= 1
            return True
        if status == api.StatusCode.CONTROL_MESSAGE:
            return False
        self._outstanding = 0
        if status in (
            api.StatusCode.NO_MESSAGES,
            api.StatusCode.CONFLICT,
            api.StatusCode.REQUEST_TIMEOUT,
        ):
            return False
        raise nats.js.errors.APIError.from_msg(msg)

    async def fetch(self, batch: int, timeout: float) -> list[PulledMessage]:
        """Up to ``batch`` messages; none if nothing came within ``timeout`` seconds.

        An empty answer also means the pull request ended with a status (nothing waiting, or
        the consumer at its ``max_ack_pending``).
        """
        with _translated():
            try:
                messages = await self._subscription.fetch(batch, timeout=timeout)
            except TimeoutError:  # nats-py's own TimeoutError is one too
                return []
            return [_pulled(message) for message in messages]

    async def close(self) -> None:
        """Unsubscribe; never raises (a connection that is gone took the inbox with it)."""
        try:
            await self._subscription.unsubscribe()
        except (nats.errors.Error, TimeoutError) as exc:
            logger.debug("closing the pull of %s: %r", self.name, exc)


def _taken(sub: Subscription, msg: Msg) -> None:
    """Account for ``msg`` taken off ``sub``'s queue, as ``next_msg`` does."""
    sub._pending_size -= len(msg.data)
    sub._pending_queue.task_done()


def _pulled(message: Msg) -> PulledMessage:
    return PulledMessage(
        data=message.data,
        reply=message.reply,
        stream_sequence=message.metadata.sequence.stream,
        delivery_count=message.metadata.num_delivered,
        published=message.metadata.timestamp.timestamp(),
        headers=message.headers or {},
    )


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """nats-py's errors and timeouts as :class:`ConsumerError`, ``raise ... from`` them."""
    try:
        yield
    except nats.js.errors.NotFoundError as exc:
        raise NotFound(_describe(exc)) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise ConsumerError(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    description = getattr(exc, "description", None)
    return str(description or exc or type(exc).__name__)
