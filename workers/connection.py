"""The worker's own NATS connection: acks, keepalives, dead letters and attempt counts.

Each worker process connects in ``before_worker_boot`` (never at import: dramatiq forks worker
processes, and threads do not survive a fork) on a private loop thread, and drains in
``after_worker_shutdown``. Delivery threads call the synchronous methods of
:class:`NatsAcknowledger`; :mod:`workers.actors` is the only caller.

Acks and keepalives travel in rounds (:class:`_Outbox`): a delivery thread adds its ack to the
round being gathered and waits for that round's confirmation; the loop thread wakes once per
round, sends everything in it and confirms each ack with the server. Under load a round holds
many acks, so a delivery costs a list append and an Event wait instead of a coroutine, a future
and a loop wake-up of its own: that handoff was a quarter of a worker's CPU per event.

Attempt counts (:class:`workers.delivery.AttemptLog`) live in a JetStream key-value bucket, one
key per consumer and stream sequence, so they survive the worker that wrote them. They are
best effort: a bucket that does not answer within a second or two makes a job fall back to the
delivery count, and never holds it up for longer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import nats.errors
from dramatiq import Middleware

from eventing import jetstream, jobs
from eventing.config import Settings
from eventing.errors import BackendUnavailable
from eventing.jetstream import JetStreamClient
from eventing.jobs import DeliveryJob
from eventing.loop import LoopThread
from workers.delivery import NOTHING_MADE, Progress

logger = logging.getLogger(__name__)

_ACK_TIMEOUT = 2.0  # one try at an ack; the server answers in milliseconds when it can
_SETTLE_WITHIN = 15.0  # tries go on this long: a consumer's leader election takes seconds
_SETTLE_PAUSE = 0.25
_KV_TIMEOUT = 2.0

T = TypeVar("T")


class Acknowledger(Protocol):
    """What a delivery job may tell JetStream about its message."""

    def ack(self, reply: str) -> None: ...

    def nak(self, reply: str, delay: float) -> None: ...

    def keepalive(self, reply: str) -> None: ...

    def dead_letter(
        self, job: DeliveryJob, reason: str, status: int | None, attempts: int
    ) -> None: ...

    def progress(self, job: DeliveryJob) -> Progress | None: ...

    def record(self, job: DeliveryJob, progress: Progress) -> None: ...

    def forget(self, job: DeliveryJob) -> None: ...


class NatsAcknowledger(Middleware):
    """A dramatiq middleware owning one NATS connection per worker process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._attempts = jetstream.attempts_bucket(settings.stream)
        self._loop: LoopThread | None = None
        self._client: JetStreamClient | None = None
        self._outbox: _Outbox | None = None

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        loop = LoopThread("worker-nats")
        loop.start()
        client = JetStreamClient(
            self._settings.nats,
            self._settings.stream,
            name="eventing-worker",
            streams=(jetstream.dead_letter_config(self._settings.stream),),
        )

        async def connect() -> None:
            client.start()
            await client.wait_connected(self._settings.nats.connect_timeout)

        loop.run(connect(), timeout=self._settings.nats.connect_timeout + 1)
        self._loop, self._client = loop, client
        self._outbox = _Outbox(loop, client)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self._loop is not None and self._client is not None:
            try:
                self._loop.run(self._client.close(), timeout=5.0)
            except TimeoutError:
                logger.warning("NATS connection did not drain within 5s")
            self._loop.close()

    def ack(self, reply: str) -> None:
        self._send(reply, b"+ACK")

    def nak(self, reply: str, delay: float) -> None:
        self._send(reply, b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode())

    def keepalive(self, reply: str) -> None:
        # Fire and forget: a keepalive only restarts the ack wait, and a lost one costs at most
        # a redelivery, so the delivery thread does not wait for the loop to send it.
        self._require_outbox().keepalive(reply)

    def dead_letter(self, job: DeliveryJob, reason: str, status: int | None, attempts: int) -> None:
        """Store the event in the dead-letter stream with why it ends there.

        Raises:
            PublishError: the dead letter was not stored (the caller must not ack then).
        """
        loop, client = self._require()
        message = jobs.dead_letter(job, reason, status, attempts)
        timeout = self._settings.proxy.request_timeout
        stream = self._settings.stream.dead_letter_name
        loop.run(client.publish(message, timeout, stream=stream), timeout + 1)

    def progress(self, job: DeliveryJob) -> Progress | None:
        """The failed attempts counted for ``job``'s message; None if the bucket cannot say."""
        try:
            value = self._kv(lambda client: client.kv_get(self._attempts, _key(job), _KV_TIMEOUT))
        except BackendUnavailable as exc:
            logger.warning("attempts at %s unknown, going by the delivery count: %s", _at(job), exc)
            return None
        if value is None:
            return NOTHING_MADE
        try:
            document = json.loads(value)
            return Progress(int(document["made"]), float(document["at"]))
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("attempts at %s unreadable (%r): %s", _at(job), value[:100], exc)
            return None

    def record(self, job: DeliveryJob, progress: Progress) -> None:
        """Count ``progress.made`` failed attempts for ``job``'s message (best effort)."""
        value = json.dumps({"made": progress.made, "at": round(progress.at, 3)}).encode()
        try:
            self._kv(lambda client: client.kv_put(self._attempts, _key(job), value, _KV_TIMEOUT))
        except BackendUnavailable as exc:
            logger.warning("could not count the attempts at %s: %s", _at(job), exc)

    def forget(self, job: DeliveryJob) -> None:
        """Delete the count of a settled message (best effort: the bucket's TTL ends the rest)."""
        try:
            self._kv(lambda client: client.kv_purge(self._attempts, _key(job), _KV_TIMEOUT))
        except BackendUnavailable as exc:
            logger.warning("could not forget the attempts at %s: %s", _at(job), exc)

    def _kv(self, call: Callable[[JetStreamClient], Coroutine[Any, Any, T]]) -> T:
        """Run ``call`` against the attempts bucket on the loop.

        Raises:
            BackendUnavailable: not connected, or no answer in time.
        """
        loop, client = self._require()
        try:
            return loop.run(call(client), _KV_TIMEOUT + 1)
        except TimeoutError as exc:
            raise BackendUnavailable(f"the attempts bucket did not answer: {exc}") from exc

    def _send(self, reply: str, payload: bytes) -> None:
        """Send an ack or NAK, trying again for a while: while NATS reconnects or the consumer
        elects a new leader, acks go unanswered, and an ack that never arrives costs a
        duplicate delivery after the ack wait. Sending one twice is harmless.

        Raises:
            BackendUnavailable: no try was confirmed within ``_SETTLE_WITHIN`` seconds.
        """
        outbox = self._require_outbox()
        give_up = time.monotonic() + _SETTLE_WITHIN
        while True:
            try:
                outbox.confirm(reply, payload)
                return
            except (BackendUnavailable, TimeoutError) as exc:
                if time.monotonic() + _SETTLE_PAUSE >= give_up:
                    raise BackendUnavailable(
                        f"not confirmed within {_SETTLE_WITHIN:.0f}s: {exc}"
                    ) from exc
            time.sleep(_SETTLE_PAUSE)

    def _require(self) -> tuple[LoopThread, JetStreamClient]:
        if self._loop is None or self._client is None:
            raise BackendUnavailable("the worker's NATS connection is not started")
        return self._loop, self._client

    def _require_outbox(self) -> _Outbox:
        if self._outbox is None:
            raise BackendUnavailable("the worker's NATS connection is not started")
        return self._outbox


class _Round:
    """The acks and keepalives gathered while the loop thread was busy; sent together."""

    __slots__ = ("acks", "failures", "keepalives", "sent")

    def __init__(self) -> None:
        self.acks: list[tuple[str, bytes]] = []
        self.keepalives: list[str] = []
        self.failures: dict[int, BaseException] = {}  #: by index in ``acks``
        self.sent = threading.Event()  #: every ack in the round confirmed or failed


class _Outbox:
    """Carries acks and keepalives from delivery threads to the loop thread in rounds."""

    def __init__(self, loop: LoopThread, client: JetStreamClient) -> None:
        self._loop = loop
        self._client = client
        self._lock = threading.Lock()
        self._gathering: _Round | None = None

    def confirm(self, reply: str, payload: bytes) -> None:
        """Send an ack-type message and wait until the server confirmed it.

        Raises:
            BackendUnavailable: the server did not confirm it (not connected, or no answer).
            TimeoutError: the round was not sent in time.
        """
        with self._lock:
            round_ = self._join()
            index = len(round_.acks)
            round_.acks.append((reply, payload))
        if not round_.sent.wait(_ACK_TIMEOUT + 1):
            raise TimeoutError(f"no confirmation within {_ACK_TIMEOUT + 1:g}s")
        failure = round_.failures.get(index)
        if failure is not None:
            raise failure

    def keepalive(self, reply: str) -> None:
        """Send a keepalive with the next round; nobody waits for it."""
        with self._lock:
            self._join().keepalives.append(reply)

    def _join(self) -> _Round:
        """The round being gathered; a new one wakes the loop thread (call with the lock)."""
        if self._gathering is None:
            self._gathering = _Round()
            self._loop.loop.call_soon_threadsafe(self._close_round)
        return self._gathering

    def _close_round(self) -> None:
        with self._lock:
            round_, self._gathering = self._gathering, None
        if round_ is not None:
            self._loop.loop.create_task(self._send(round_))

    async def _send(self, round_: _Round) -> None:
        try:
            for reply in round_.keepalives:
                try:
                    await self._client.in_progress(reply)
                except nats.errors.Error as exc:  # a lost keepalive costs a redelivery at most
                    logger.debug("keepalive not sent: %r", exc)
            results = await asyncio.gather(
                *(self._client.acknowledge(r, p, _ACK_TIMEOUT) for r, p in round_.acks),
                return_exceptions=True,
            )
            round_.failures = {
                i: result for i, result in enumerate(results) if isinstance(result, BaseException)
            }
        finally:
            round_.sent.set()


def _key(job: DeliveryJob) -> str:
    return f"{job.consumer}.{job.stream_sequence}"


def _at(job: DeliveryJob) -> str:
    return f"{job.subscription} seq {job.stream_sequence}"
