"""The worker's own NATS connection: acks, keepalives, dead letters and attempt counts.

Each worker process connects in ``before_worker_boot`` (never at import: dramatiq forks worker
processes, and threads do not survive a fork) on a private loop thread, and drains in
``after_worker_shutdown``. Delivery threads call the synchronous methods of
:class:`NatsAcknowledger`; :mod:`workers.actors` is the only caller.

Acks and keepalives travel in :class:`eventing.nats.loop.Rounds`: a delivery thread adds its ack to
the round being gathered and waits until the server confirmed it; the loop thread wakes once per
round. Handing each ack over on its own was a quarter of a worker's CPU per event. The loop
publishes a round's acks together and awaits their confirmations together, with one timeout
(:class:`eventing.nats.replies.Replies`); a nats-py request per ack was most of what was left of
the loop thread's CPU.

Delivery ledger records (:mod:`workers.ledger`) ride the same rounds, fire and forget: a
record's publish is sent in its round before the ack or NAK it comes with (so once the ack is
confirmed the record normally is stored too), but nobody waits for its PubAck (a round's
PubAcks are counted as they arrive, on the same reply subscription), and a record that
cannot be stored is logged (at most every ``_LEDGER_REPORT_EVERY``) and counted
(``on_ledger_failure``), never failing or holding up the ack. Nothing is written when
``LEDGER_MAX_AGE=0``.

Attempt counts (:class:`workers.attempts.AttemptLog`) live in a JetStream key-value bucket, one
key per consumer and stream sequence, so they survive the worker that wrote them. They are
best effort: a bucket that does not answer within a second or two makes a job fall back to the
delivery count, and never holds it up for longer.

Why :class:`eventing.nats.loop.LoopThread` and not dramatiq's ``AsyncIO`` middleware
(``dramatiq.asyncio.EventLoopThread``): its ``run_coroutine`` takes no timeout, and every call
here must end in time (an ack, a count or a dead letter that hangs would hold a stopping worker
past honcho's 5 s); it polls its future every 0.1 s so that dramatiq's asynchronously raised
``Interrupt`` (``Shutdown``, ``TimeLimit``) lands, which these jobs avoid on purpose (they stop
cooperatively, see :mod:`workers.shutdown`); and it is one process-wide loop that only a
dramatiq worker starts, while the proxy needs the same bridge. Measured on the 2-core CI machine
(5,000 calls of a coroutine that returns at once, then 16 threads waiting 2 s each on one):
35 µs a call and 32 µs of CPU with ``LoopThread.run`` against 74 µs and 63 µs with
``run_coroutine``; 5.5 ms against 11.6 ms of CPU for the waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from dramatiq import Middleware

from eventing.delivery import jobs, signatures
from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.ledger import Record
from eventing.delivery.steps import NOTHING_MADE, Progress
from eventing.errors import BackendUnavailable, NotFound, UntrustedJob
from eventing.nats import streams
from eventing.nats.client import JetStreamClient
from eventing.nats.loop import LoopThread, Rounds
from eventing.nats.messages import OutboundMessage
from eventing.nats.replies import NoResponders, Replies
from eventing.settings import NatsSettings, StreamSettings
from workers.attempts import ACK_TRIES_LAST
from workers.shutdown import GracefulStop

logger = logging.getLogger(__name__)

_ACK_TIMEOUT = 2.0  # one try at an ack; the server answers in milliseconds when it can
_SETTLE_WITHIN = ACK_TRIES_LAST  # tries go on this long: a leader election takes seconds
_SETTLE_PAUSE = 0.25
_SETTLE_WHILE_STOPPING = 2.0  # seconds after the worker began stopping that tries go on
_CLOSE_TIMEOUT = 2.5  # seconds the connection may take to close (JetStreamClient bounds it)
_KV_TIMEOUT = 2.0
_LEDGER_TIMEOUT = 5.0  # seconds a ledger record's PubAck may take; nobody waits for it
_LEDGER_REPORT_EVERY = 30.0  # seconds between warnings of records that were not stored

T = TypeVar("T")
#: What a round carries: an ack-type message (reply subject, payload), or a ledger record
_Item = tuple[str, bytes] | Record


class Acknowledger(Protocol):
    """What a delivery job may tell JetStream about its message."""

    ledger: bool  #: whether delivery ledger records are written (``LEDGER_MAX_AGE`` > 0)

    def ack(self, reply: str, record: Record | None = None) -> None:
        """Ack; ``record`` (the delivery's ledger record) is published first, best effort."""
        ...

    def nak(self, reply: str, delay: float, record: Record | None = None) -> None: ...

    def keepalive(self, reply: str) -> None: ...

    def write(self, record: Record) -> None:
        """Publish a ledger record without waiting (best effort)."""
        ...

    def dead_letter(
        self, job: DeliveryJob, reason: str, status: int | None, attempts: int, *, answer: bytes
    ) -> None: ...

    def store_dead_letter(self, message: OutboundMessage) -> None: ...

    def dead_letter_headers(self, sequence: int) -> dict[str, str] | None: ...

    def remove_dead_letter(self, sequence: int) -> None: ...

    def progress(self, job: DeliveryJob) -> Progress | None: ...

    def record(self, job: DeliveryJob, progress: Progress) -> None: ...

    def forget(self, job: DeliveryJob) -> None: ...


class NatsAcknowledger(Middleware):
    """A dramatiq middleware owning one NATS connection per worker process."""

    def __init__(
        self,
        nats: NatsSettings,
        stream: StreamSettings,
        stop: GracefulStop | None = None,
        on_ledger_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._nats = nats
        self._stream = stream
        self._attempts = streams.attempts_bucket(stream)
        self._connection: _Connection | None = None
        self._stop = stop
        self.ledger = stream.ledger_max_age > 0  #: whether records are written at all
        self._on_ledger_failure = on_ledger_failure
        self._unstored = 0  #: records not stored since the last warning
        self._reported_at: float | None = None  #: monotonic time of the last warning

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        loop = LoopThread("worker-nats")
        loop.start()
        client = JetStreamClient(
            self._nats,
            self._stream,
            name="eventing-worker",
            streams=(
                streams.dead_letter_config(self._stream),
                *((streams.ledger_config(self._stream),) if self.ledger else ()),
            ),
        )

        async def connect() -> None:
            client.start()
            await client.wait_connected(self._nats.connect_timeout)

        loop.run(connect(), timeout=self._nats.connect_timeout + 1)

        replies = Replies(client)

        async def confirm(items: list[_Item]) -> list[BaseException | None]:
            records = [item for item in items if isinstance(item, Record)]
            if records:
                await self._publish_records(client, replies, records)
            acks = [(item[0], item[1], None) for item in items if not isinstance(item, Record)]
            if not acks:
                return [None] * len(items)
            try:
                confirmed = await replies.confirm(acks, _ACK_TIMEOUT)
            except BackendUnavailable as exc:  # not connected: each ack is tried again
                confirmed = [exc] * len(acks)
            results = iter(confirmed)
            return [None if isinstance(item, Record) else next(results) for item in items]

        async def keep_alive(replies: list[str]) -> list[None]:
            for reply in replies:
                await client.in_progress(reply)
            return [None] * len(replies)

        acks, keepalives = Rounds(loop, confirm), Rounds(loop, keep_alive)
        self._connection = _Connection(loop, client, replies, acks, keepalives)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self._connection is not None:
            try:
                self._connection.loop.run(self._records_stored(), _CLOSE_TIMEOUT)
                self._connection.loop.run(self._connection.client.close(), _CLOSE_TIMEOUT)
            except TimeoutError:
                logger.warning("NATS connection did not close within %gs", _CLOSE_TIMEOUT)
            self._connection.loop.close()

    def ack(self, reply: str, record: Record | None = None) -> None:
        self._send(reply, b"+ACK", record)

    def nak(self, reply: str, delay: float, record: Record | None = None) -> None:
        self._send(reply, b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode(), record)

    def write(self, record: Record) -> None:
        if self.ledger:
            self._require().acks.post([record])

    async def _publish_records(
        self, client: JetStreamClient, replies: Replies, records: list[Record]
    ) -> None:
        """Send ``records`` (on the loop, ahead of the round's acks); their PubAcks are
        counted when they arrive, never waited for."""
        headers = {"Nats-Expected-Stream": self._stream.ledger_name}
        messages = [(record.subject, record.to_bytes(), headers) for record in records]

        def stored(results: list[BaseException | None]) -> None:
            failures = [result for result in results if result is not None]
            if failures:
                self._records_unstored(client, failures)

        try:
            await replies.send(messages, _LEDGER_TIMEOUT, stored)
        except BackendUnavailable as exc:
            self._records_unstored(client, [exc] * len(messages))

    def _records_unstored(self, client: JetStreamClient, failures: list[BaseException]) -> None:
        """Count and report (at most every ``_LEDGER_REPORT_EVERY``) records not stored; a
        stream that nobody answers for may be gone (a wiped server): it is created again."""
        if any(isinstance(failure, NoResponders) for failure in failures):
            client.ensure_stream_soon()
        for _ in failures:
            self._on_ledger_failure()
        self._unstored += len(failures)
        now = time.monotonic()
        if self._reported_at is None or now - self._reported_at >= _LEDGER_REPORT_EVERY:
            logger.warning(
                "%d delivery ledger record(s) not stored (deliveries go on; the ledger misses"
                " them): %s",
                self._unstored,
                failures[-1],
            )
            self._unstored, self._reported_at = 0, now

    async def _records_stored(self) -> None:
        """Give the records under way a moment to be stored before the connection closes."""
        if self._connection is None:
            return
        replies, until = self._connection.replies, time.monotonic() + _CLOSE_TIMEOUT / 2
        while replies.pending and time.monotonic() < until:
            await asyncio.sleep(0.01)

    def keepalive(self, reply: str) -> None:
        # Fire and forget: a keepalive only restarts the ack wait, and a lost one costs at most
        # a redelivery, so the delivery thread does not wait for the loop to send it.
        self._refuse_foreign(reply)
        self._require().keepalives.post([reply])

    def dead_letter(
        self, job: DeliveryJob, reason: str, status: int | None, attempts: int, *, answer: bytes
    ) -> None:
        """Store the event in the dead-letter stream with why it ends there.

        Raises:
            PublishError: the dead letter was not stored (the caller must not ack then).
        """
        self.store_dead_letter(jobs.dead_letter(job, reason, status, attempts, answer=answer))

    def store_dead_letter(self, message: OutboundMessage) -> None:
        """Store a dead letter as built (a redrive's replacement, :mod:`workers.redrives`).

        Raises:
            PublishError: it was not stored.
        """
        connection = self._require()
        timeout = self._stream.dead_letter_publish_timeout
        stream = self._stream.dead_letter_name
        connection.loop.run(connection.client.publish(message, timeout, stream=stream), timeout + 1)

    def dead_letter_headers(self, sequence: int) -> dict[str, str] | None:
        """The headers of the dead letter at ``sequence``; None if it is gone.

        Raises:
            ConsumerError: the stream did not answer.
        """
        connection = self._require()
        stream = self._stream.dead_letter_name
        try:
            stored = connection.loop.run(
                connection.client.stored.get(stream, sequence), _KV_TIMEOUT
            )
        except NotFound:
            return None
        return stored.headers

    def remove_dead_letter(self, sequence: int) -> None:
        """Delete the dead letter at ``sequence`` (redriven); one already gone is fine.

        Raises:
            ConsumerError: the stream did not answer.
        """
        connection = self._require()
        stream = self._stream.dead_letter_name
        connection.loop.run(connection.client.stored.delete(stream, sequence), _KV_TIMEOUT)

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
        connection = self._require()
        try:
            return connection.loop.run(call(connection.client), _KV_TIMEOUT + 1)
        except TimeoutError as exc:
            raise BackendUnavailable(f"the attempts bucket did not answer: {exc}") from exc

    def _send(self, reply: str, payload: bytes, record: Record | None = None) -> None:
        """Send an ack or NAK, trying again for a while: while NATS reconnects or the consumer
        elects a new leader, acks go unanswered, and an ack that never arrives costs a
        duplicate delivery after the ack wait. Sending one twice is harmless. Once the worker
        is stopping, tries end ``_SETTLE_WHILE_STOPPING`` after that began: a NATS that went
        away first would otherwise hold the process past honcho's 5 s.

        ``record`` goes with the first try only (a second try would store it twice).

        Raises:
            BackendUnavailable: no try was confirmed in time.
            UntrustedJob: ``reply`` is no reply subject of the stream's consumers.
        """
        self._refuse_foreign(reply)
        acks = self._require().acks
        started = time.monotonic()
        ack: _Item = (reply, payload)
        items = [record, ack] if record is not None and self.ledger else [ack]
        while True:
            try:
                *_, failure = acks.call(items, timeout=_ACK_TIMEOUT + 1)
            except (BackendUnavailable, TimeoutError) as exc:  # the whole round failed
                failure = exc
            if failure is None:
                return
            if not isinstance(failure, BackendUnavailable | TimeoutError):
                raise failure
            if self._out_of_time(started):
                raise BackendUnavailable(f"not confirmed in time: {failure}") from failure
            time.sleep(_SETTLE_PAUSE)
            items = [ack]

    def _out_of_time(self, started: float) -> bool:
        """Whether another try after ``_SETTLE_PAUSE`` would end past the time tries have."""
        give_up = started + _SETTLE_WITHIN
        if self._stop is not None and self._stop.since is not None:
            give_up = min(give_up, self._stop.since + _SETTLE_WHILE_STOPPING)
        return time.monotonic() + _SETTLE_PAUSE >= give_up

    def _refuse_foreign(self, reply: str) -> None:
        """The last line against a forged job (the actor admits none): this connection
        publishes to reply subjects of the stream's consumers only, never onto an event subject.

        Raises:
            UntrustedJob: ``reply`` is no such subject.
        """
        problem = signatures.ack_subject_problem(reply, streams=streams.job_streams(self._stream))
        if problem is not None:
            raise UntrustedJob("bad-ack-subject", problem)

    def _require(self) -> _Connection:
        if self._connection is None:
            raise BackendUnavailable("the worker's NATS connection is not started")
        return self._connection


@dataclass(frozen=True, slots=True)
class _Connection:
    """What ``before_worker_boot`` starts in each worker process."""

    loop: LoopThread
    client: JetStreamClient
    replies: Replies  #: acks' confirmations and records' PubAcks, pipelined
    acks: Rounds[_Item, BaseException | None]  #: confirmed: the result per ack (None: a record)
    keepalives: Rounds[str, None]  #: posted, never waited for


def _key(job: DeliveryJob) -> str:
    # The reading consumer, not the job's: a replay's sequence is the archive's, a redrive's the
    # dead-letter stream's, and neither may take the count of a live event.
    return f"{jobs.reading_consumer(job.consumer, job.origin)}.{job.stream_sequence}"


def _at(job: DeliveryJob) -> str:
    return f"{job.subscription} seq {job.stream_sequence}"
