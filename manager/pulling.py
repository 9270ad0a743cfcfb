"""Pulling: one task per wanted consumer turns its messages into delivery jobs.

The manager never acks a delivery. It pulls messages in batches bounded by each consumer's
in-flight limit, turns each one into a :class:`~eventing.delivery.jobs.DeliveryJob` and enqueues
them, several of a fetch to a dramatiq message (:func:`eventing.delivery.jobs.events_per_job`);
a worker acks later from its own connection. A job that cannot be enqueued is simply not
acked, so JetStream redelivers the message after its ack wait. Between two fetches a pull task
has its backlog checked (:mod:`manager.shedding`).

The pull tasks have one owner: the :class:`Dispatcher`'s task group. A pull task retries every
failure itself, so no failure of one consumer ever ends the group, and :meth:`Dispatcher.stop`
ends them all. After a failure it binds anew (tenacity: a second after the consumer was not
there or an unexpected error, half a second after a failed fetch): a fetch fails for good on a
connection nats-py gave up, and the client's next connection has the consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exception

from eventing.delivery import jobs
from eventing.errors import ConsumerError
from eventing.nats.client import JetStreamClient
from eventing.nats.messages import PulledMessage
from eventing.tasks import cancel_and_wait
from manager.consumers import Target
from manager.shedding import Backlog, Limit, Shedding

logger = logging.getLogger(__name__)

# A pull task keeps a pull request open (Pull.take, a streaming pull): the server pushes each
# message the moment it has one, and what arrived while a batch was being enqueued is taken
# together. Fetches cost a round trip per event when paced, and nats-py's fetch(n) held the
# first message of a lingering batch fetch until its timeout (50 ms) waiting for the other n - 1.
# A request expires after a second; one that ended early (a status: the consumer at its
# max_ack_pending) is not renewed before that second is up.
_IDLE_FETCH_TIMEOUT = 1.0
# How long a take waits after its first message for more: paced events a few milliseconds apart
# share a hand-over to the enqueue thread and a job (each costs the manager and the workers per
# job, not per event), for at most this much latency.
_GATHER = 0.005
_MAX_BATCH = 100
_BIND_PAUSE = 1.0  # seconds before binding again to a consumer not there (yet)
_FETCH_PAUSE = 0.5  # seconds before pulling again after a failed fetch
_BUG_PAUSE = 1.0  # seconds before pulling again after an unexpected error
_ACK = b"+ACK"


class Dispatcher:
    """One pull task per consumer, started and stopped as the wanted consumers change."""

    def __init__(
        self,
        client: JetStreamClient,
        stream: str,
        enqueue: Callable[[list[jobs.DeliveryJob], int], None],
        on_enqueued: Callable[[str, int], None],
        *,
        on_shed: Callable[[str, int], None],
        on_filtered: Callable[[str, int], None],
        dead_letter_stream: str,
        max_backlog: int,
        publish_timeout: float,
        ledger_stream: str = "",
        batch_max: int = 1,
        batch_spread: int = 1,
    ) -> None:
        """``enqueue`` takes jobs and how many of them one dramatiq message may carry
        (:func:`jobs.events_per_job` of ``batch_max`` and ``batch_spread``)."""
        self._client = client
        self._batch_max = batch_max
        self._batch_spread = batch_spread
        self._stream = stream
        self._enqueue = enqueue
        self._on_enqueued = on_enqueued
        self._on_filtered = on_filtered
        self._ack_timeout = publish_timeout
        limit = Limit(max_backlog, dead_letter_stream, publish_timeout, ledger_stream)
        self._shedding = Shedding(client, stream, limit, on_shed)
        self._targets: dict[str, Target] = {}
        self._pulls: dict[str, asyncio.Task[None]] = {}  #: children of the owner's task group
        self._wanted = asyncio.Event()  #: the targets changed: the owner starts what is missing
        self._owner: asyncio.Task[None] | None = None

    @property
    def targets(self) -> dict[str, Target]:
        """Where each consumer pulled delivers now, by consumer name."""
        return self._targets

    @property
    def backlogs(self) -> dict[str, Backlog]:
        """The latest backlog of each consumer pulled, by name, for status and metrics."""
        return self._shedding.backlogs

    def sync(self, targets: dict[str, Target]) -> None:
        """Pull exactly the consumers in ``targets`` from now on."""
        self._targets = dict(targets)
        for name in list(self._pulls):
            if name not in targets:
                self._pulls.pop(name).cancel()
                self._shedding.forget(name)
        if self._owner is None:
            self._owner = asyncio.get_running_loop().create_task(self._own(), name="pulls")
        self._wanted.set()

    async def stop(self) -> None:
        """Cancel every pull task and wait for them to end (each pull task directly too: its
        task group cancels it only once, and Python 3.11 can swallow that, see
        :mod:`eventing.tasks`)."""
        owner, self._owner = self._owner, None
        if owner is not None:
            await cancel_and_wait([owner, *self._pulls.values()])
        self._pulls.clear()

    async def _own(self) -> None:
        """Hold the task group of the pull tasks until cancelled; whenever the targets change,
        start a pull task for each wanted consumer that has none."""
        async with asyncio.TaskGroup() as group:
            while True:
                await self._wanted.wait()
                self._wanted.clear()
                for name in self._targets:
                    task = self._pulls.get(name)
                    if task is None or task.done():
                        self._pulls[name] = group.create_task(self._pull(name), name=f"pull-{name}")

    async def _pull(self, name: str) -> None:
        """Pull ``name`` into jobs while it is wanted, starting over after any failure."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exception(_pause_after),
            before_sleep=_log_failure,
        )
        await retrying(self._pull_bound, name)

    async def _pull_bound(self, name: str) -> None:
        """Bind to ``name`` and pull it until it is no longer wanted (or a failure)."""
        try:
            pull = await self._client.jetstream.pull(self._stream, name)
        except ConsumerError as exc:
            raise _NotBound(name) from exc
        try:
            while (target := self._targets.get(name)) is not None:
                # A backlog check may shed, raising the consumer's max_ack_pending for a
                # moment: no delivery request may be open then to take those events.
                due = self._shedding.due(name)
                if due and not pull.requesting:
                    await self._shedding.check(name, target)
                    due = False
                if target.held is not None:
                    # Its events wait for the sink or the policy to change, their backlog
                    # bounded by the check above like any other.
                    await asyncio.sleep(_IDLE_FETCH_TIMEOUT)
                    continue
                batch = max(1, min(target.spec.max_ack_pending, _MAX_BATCH))
                messages = await pull.take(
                    batch, _IDLE_FETCH_TIMEOUT, gather=_GATHER, renew=not due
                )
                if messages:
                    await self._hand_over(name, messages)
        finally:
            await pull.close()

    async def _hand_over(self, name: str, messages: list[PulledMessage]) -> None:
        target = self._targets.get(name)
        if target is None:
            return  # unsubscribed meanwhile; the messages return after their ack wait
        per_job = jobs.events_per_job(
            target.spec.max_ack_pending, self._batch_max, self._batch_spread
        )

        def split_and_enqueue() -> tuple[int, list[PulledMessage], Exception | None]:
            # Matching reads each event (a JSON parse), and the enqueue blocks: both off the
            # event loop, in one hand-over to a thread per fetch rather than two.
            work, strangers = split_received(target, messages)
            try:
                if work:
                    self._enqueue(work, per_job)
            except Exception as exc:  # any broker failure: JetStream redelivers after ack wait
                return len(work), strangers, exc
            return len(work), strangers, None

        enqueued, strangers, failure = await asyncio.to_thread(split_and_enqueue)
        if strangers:
            await self._drop(name, strangers)
        if failure is not None:
            logger.warning("could not enqueue %d job(s) of %s: %s", enqueued, name, failure)
        elif enqueued:
            self._on_enqueued(name, enqueued)

    async def _drop(self, name: str, strangers: list[PulledMessage]) -> None:
        """Ack events that only share the consumer's subject: they were never this
        subscription's, so they are neither delivered nor dead-lettered. One not acked now
        comes back after the ack wait and is dropped then."""
        outcomes = await asyncio.gather(
            *(self._client.acknowledge(m.reply, _ACK, self._ack_timeout) for m in strangers),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            logger.warning(
                "could not ack %d filtered event(s) of %s: %s", len(failed), name, failed[0]
            )
        logger.debug("filtered %d event(s) of %s: another source or type", len(strangers), name)
        self._on_filtered(name, len(strangers) - len(failed))


def split_received(
    target: Target, messages: list[PulledMessage]
) -> tuple[list[jobs.DeliveryJob], list[PulledMessage]]:
    """The jobs of the messages ``target`` receives, and the messages it does not (a replay's
    pulls split alike)."""
    work: list[jobs.DeliveryJob] = []
    strangers: list[PulledMessage] = []
    for message in messages:
        if target.receives(message):
            work.append(target.job(message))
        else:
            strangers.append(message)
    return work, strangers


class _NotBound(Exception):
    """The consumer cannot be bound to (not created yet, or no connection)."""


def _pause_after(exc: BaseException) -> float:
    if isinstance(exc, _NotBound):
        return _BIND_PAUSE
    if isinstance(exc, ConsumerError):
        return _FETCH_PAUSE
    return _BUG_PAUSE


def _log_failure(state: RetryCallState) -> None:
    name = state.args[0]
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, _NotBound):
        logger.debug("cannot bind consumer %s yet: %s", name, exc.__cause__)
    elif isinstance(exc, ConsumerError):
        logger.debug("fetch from %s failed: %s", name, exc)
    else:
        logger.error("pulling %s failed unexpectedly; retrying", name, exc_info=exc)
