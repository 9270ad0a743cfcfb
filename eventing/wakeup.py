"""dramatiq's Redis broker with idle consumers that wait for a wake-up instead of polling.

dramatiq's Redis consumer takes jobs with a Lua script (ack sets, heartbeats) that has no
blocking form, so a consumer with an empty queue polls it. Polling every 20 ms (what kept the
pickup of a new job fast) cost each worker process about 7 % of a core, and Redis 200 script
calls a second, with nothing to do.

:class:`WakingRedisBroker` publishes a wake-up (Redis Pub/Sub, channel
``<namespace>:<queue>.wake``) after every enqueue (once per batch the manager hands over), and
its consumers, once a fetch found nothing, wait on their subscription to that channel: a socket
read, no CPU and no commands, ended by the next enqueue within a round trip. Wake-ups published
while a consumer fetches wait in its subscription, so none is lost between an empty fetch and
the wait. A consumer still fetches after ``idle_poll`` (1 s) without a wake-up: that bounds the
pickup of a job whose wake-up was lost (the subscription broke and is being restored) and of a
delayed job coming due, and it keeps the heartbeat dramatiq's maintenance reads (60 s) fresh.
Every process that enqueues must use this broker (``eventing.delivery.jobs.make_broker`` builds
it) or
its jobs wait for that poll.

Busy: a consumer at its prefetch limit waits for an ack, not a timer, and fetches again once a
quarter of the limit is free, several jobs in one call instead of one per ack.

Stopping: from :meth:`WakingRedisBroker.stop_fetching` (the worker's first SIGTERM, or dramatiq's
shutdown at the latest), consumers stop fetching (jobs fetched then would only go back), and a
wake-up on the process's own channel ends their wait, so they notice the end
within dramatiq's ``worker_timeout`` (``WORKER_QUEUE_POLL_MAX``) as before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import redis
from dramatiq import Middleware
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message

logger = logging.getLogger(__name__)

IDLE_POLL = 1.0  #: seconds an idle consumer waits for a wake-up before it fetches anyway
_SUBSCRIBED_WITHIN = 5.0


class WakingRedisBroker(RedisBroker):
    """A :class:`~dramatiq.brokers.redis.RedisBroker` whose enqueues wake idle consumers."""

    def __init__(
        self,
        *,
        client: redis.Redis | None = None,
        url: str | None = None,
        idle_poll: float = IDLE_POLL,
    ) -> None:
        """``client`` (with its credentials and TLS) or a plain ``url``; the wake-up
        subscriptions are opened from the same client's pool."""
        super().__init__(client=client, url=url)  # type: ignore[no-untyped-call]
        self.idle_poll = idle_poll
        self.stopping = threading.Event()  #: set when the worker starts shutting down
        self.add_middleware(_StopWaiting(self))

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        enqueued: Message[Any] = super().enqueue(message, delay=delay)
        self._wake(enqueued.queue_name)
        return enqueued

    def enqueue_all(self, messages: list[Message[Any]]) -> None:
        """Enqueue ``messages``, then wake idle consumers once per queue (not per message)."""
        queues = {
            super(WakingRedisBroker, self).enqueue(message).queue_name for message in messages
        }
        for queue_name in queues:
            self._wake(queue_name)

    def stop_fetching(self) -> None:
        """Make this process's consumers fetch no more jobs (they hand out what they hold).

        Only sets a flag, so a signal handler may call it; a consumer waiting for a wake-up
        notices within ``idle_poll``.
        """
        self.stopping.set()

    def wake_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.wake"

    def _wake(self, queue_name: str) -> None:
        """Best effort: the job is enqueued, and without its wake-up it waits for the poll."""
        try:
            self.client.publish(self.wake_channel(queue_name), b"")
        except redis.RedisError as exc:
            logger.warning("could not wake the consumers of %s: %s", queue_name, exc)

    @property
    def stop_channel(self) -> str:
        """Heard by this broker's consumers only: ``broker_id`` is new in each process."""
        return f"{self.namespace}:{self.broker_id}.stop"


class _StopWaiting(Middleware):
    def __init__(self, broker: WakingRedisBroker) -> None:
        self._broker = broker

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._broker.stop_fetching()
        # With Redis away, the waits end within idle_poll all the same.
        with contextlib.suppress(redis.RedisError):
            self._broker.client.publish(self._broker.stop_channel, b"")


class _WakingConsumer(_RedisConsumer):
    """Fetches like dramatiq's consumer, but waits for a wake-up, not a timer, when idle."""

    def __init__(
        self, broker: WakingRedisBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._stopping = broker.stopping
        self._idle_poll = broker.idle_poll
        self._step = timeout / 1000
        self.timeout = 0  # dramatiq's consumer then returns at once when it finds nothing
        self._freed = threading.Event()  #: an ack or nack made room below the prefetch limit
        self._filled = False  #: reached the prefetch limit, and not a quarter below it since
        self._wakeups = broker.client.pubsub()
        try:
            self._wakeups.subscribe(broker.wake_channel(queue_name), broker.stop_channel)
            # Confirmed before the first fetch: an enqueue after that fetch wakes this consumer.
            self._wakeups.get_message(timeout=_SUBSCRIBED_WITHIN)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._wakeups.close()
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def ack(self, message: Any) -> None:
        try:
            super().ack(message)  # type: ignore[no-untyped-call]
        finally:
            self._freed.set()

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)  # type: ignore[no-untyped-call]
        finally:
            self._freed.set()

    def __next__(self) -> Any:
        if self._stopping.is_set() and not self.message_cache:
            time.sleep(self._step)  # no fetch: what it took would only go back
            return None
        full = self._full()  # on every call, to see the limit reached right after a fetch
        if full and not self.message_cache:
            self._freed.wait(self._idle_poll)
            self._freed.clear()
            return None
        try:
            message = super().__next__()  # type: ignore[no-untyped-call]
        except DecodeError:
            # Written into Redis by someone else: dramatiq would log it whole, with a traceback,
            # and restart this consumer 3 s later. It stays among this worker's fetched ids (its
            # id is inside what cannot be read) until the worker stops.
            logger.warning("dropped a message of %s that is no dramatiq message", self.queue_name)
            return None
        if message is None and not self._stopping.is_set():
            self._await_wakeup()
        return message

    def close(self) -> None:
        self._wakeups.close()

    def _full(self) -> bool:
        """Whether to wait for room before fetching: from the prefetch limit until a quarter of
        it is free again, so that a busy consumer fetches several jobs at once, not one per ack."""
        count = self.outstanding_message_count
        if count >= self.prefetch:
            self._filled = True
        elif count <= self.prefetch - max(1, self.prefetch // 4):
            self._filled = False
        return self._filled

    def _await_wakeup(self) -> None:
        """Wait until a job is enqueued (or ``idle_poll`` passes)."""
        try:
            if self._wakeups.get_message(timeout=self._idle_poll) is not None:
                while self._wakeups.get_message() is not None:
                    pass  # one fetch answers every wake-up that is waiting
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
