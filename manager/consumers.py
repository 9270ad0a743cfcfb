"""JetStream consumers: apply the reconcile plan, and pull each consumer into delivery jobs.

The manager never acks a delivery. It pulls messages in batches bounded by each consumer's
in-flight limit, turns each one into a :class:`~eventing.delivery.jobs.DeliveryJob` and enqueues
it; a
worker acks later from its own connection. A job that cannot be enqueued is simply not acked, so
JetStream redelivers the message after its ack wait.

The one exception is a backlog over ``MAX_BACKLOG``: every stored event stays in the shared
interest stream until each subscription that wants it is done with it, so one dead sink would
otherwise fill the stream and refuse every publisher (Kyma's fleet-wide 507). The pull task of
such a consumer moves its oldest waiting events to the dead-letter stream, acking each only once
its dead letter is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventing.delivery import jobs
from eventing.nats.jetstream import JetStreamClient
from eventing.subscriptions.model import Subscription
from manager.reconcile import (
    MANAGED_BY,
    Action,
    ActualConsumer,
    ConsumerSpec,
    Create,
    Delete,
)

logger = logging.getLogger(__name__)

_PAGE = 256
# nats-py's fetch(n) takes what is waiting at once, but when nothing is, it long-polls and, once
# a first message arrives, waits for the other n - 1 until its timeout. So an idle consumer
# fetches one message (returned the moment it arrives; a batch fetch with the idle timeout held
# a lone event up to a second), and a busy one a batch with a short timeout: a consumer at its
# max_ack_pending says nothing, and one slow event among 20 in flight made every batch fetch
# with the long timeout wait all of it (measured: 19 deliveries/s).
_IDLE_FETCH_TIMEOUT = 1.0
_BUSY_FETCH_TIMEOUT = 0.05
_MAX_BATCH = 100
_BACKLOG_CHECK_INTERVAL = 1.0
_SHED_CHUNK = 500  # events dead-lettered per round trip while shedding
_SHED_TIMEOUT = 5.0
_SWEEP_TIMEOUT = 0.5  # what was under way when the limit went back arrives within this


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a consumer's last backlog check found, and what shedding has done so far."""

    pending: int = 0  #: events stored for the consumer and not yet handed out
    shed: int = 0  #: events moved to the dead-letter stream since the manager started
    last_shed: float | None = None  #: wall-clock time of the latest shedding


@dataclass(frozen=True, slots=True)
class Target:
    """Where a consumer's messages go right now (a sink change applies to the next job)."""

    subscription: Subscription
    spec: ConsumerSpec


async def actual_consumers(js: JetStreamContext, stream: str) -> dict[str, ActualConsumer]:
    """Every consumer of ``stream``, as JetStream reports it."""
    found: dict[str, ActualConsumer] = {}
    offset = 0
    while True:
        page = await js.consumers_info(stream, offset=offset)
        for info in page:
            config = info.config
            subjects = tuple(
                config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
            )
            found[info.name] = ActualConsumer(
                name=info.name,
                subjects=subjects,
                max_ack_pending=config.max_ack_pending or 0,
                ack_wait=config.ack_wait or 0.0,
                managed=(config.metadata or {}).get("managed-by") == MANAGED_BY,
                subscription=(config.metadata or {}).get("subscription", ""),
                origin=(config.metadata or {}).get("origin"),
            )
        if len(page) < _PAGE:
            return found
        offset += len(page)


async def apply(js: JetStreamContext, stream: str, actions: list[Action]) -> dict[str, str]:
    """Carry out ``actions``; the error of each consumer that could not be set up, by name
    (logged by the caller, once per change: past the consumer limit thousands fail alike)."""
    errors: dict[str, str] = {}
    for action in actions:
        try:
            if isinstance(action, Delete):
                await js.delete_consumer(stream, action.name)
                logger.info("deleted consumer %s", action.name)
            else:
                await js.add_consumer(stream, _config(action.spec))
                verb = "created" if isinstance(action, Create) else "updated"
                logger.info(
                    "%s consumer %s for %s %s",
                    verb,
                    action.spec.name,
                    action.spec.subscription,
                    action.spec.event_type,
                )
        except nats.js.errors.NotFoundError:
            if not isinstance(action, Delete):
                errors[action.spec.name] = f"stream {stream} not found"
        except (nats.errors.Error, TimeoutError) as exc:
            name = action.name if isinstance(action, Delete) else action.spec.name
            errors[name] = _describe(exc)
    return errors


def created(actions: list[Action]) -> list[ConsumerSpec]:
    """The specs of the consumers ``actions`` create."""
    return [a.spec for a in actions if isinstance(a, Create)]


class Dispatcher:
    """One pull task per consumer, started and stopped as the wanted consumers change."""

    def __init__(
        self,
        client: JetStreamClient,
        stream: str,
        enqueue: Callable[[list[jobs.DeliveryJob]], None],
        on_enqueued: Callable[[str, int], None],
        *,
        on_shed: Callable[[str, int], None],
        dead_letter_stream: str,
        max_backlog: int,
        publish_timeout: float,
    ) -> None:
        self._client = client
        self._stream = stream
        self._enqueue = enqueue
        self._on_enqueued = on_enqueued
        self._on_shed = on_shed
        self._dead_letter_stream = dead_letter_stream
        self._max_backlog = max_backlog
        self._publish_timeout = publish_timeout
        self._targets: dict[str, Target] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.backlogs: dict[str, Backlog] = {}  #: by consumer name, for status and metrics

    def sync(self, targets: dict[str, Target]) -> None:
        """Pull exactly the consumers in ``targets`` from now on."""
        self._targets = dict(targets)
        for name in list(self._tasks):
            if name not in targets:
                self._tasks.pop(name).cancel()
                self.backlogs.pop(name, None)
        for name in targets:
            if name not in self._tasks or self._tasks[name].done():
                self._tasks[name] = asyncio.get_running_loop().create_task(
                    self._pull(name), name=f"pull-{name}"
                )

    async def stop(self) -> None:
        """Cancel every pull task and wait for them to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pull(self, name: str) -> None:
        subscription: JetStreamContext.PullSubscription | None = None
        idle = True
        next_check = 0.0
        try:
            while True:
                target = self._targets.get(name)
                if target is None:
                    return
                if subscription is None:
                    try:
                        subscription = await self._client.jetstream.pull_subscribe_bind(
                            durable=name, stream=self._stream
                        )
                    except (nats.errors.Error, TimeoutError) as exc:
                        logger.debug("cannot bind consumer %s yet: %s", name, exc)
                        await asyncio.sleep(1)
                        continue
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + _BACKLOG_CHECK_INTERVAL
                    await self._check_backlog(name, target)
                batch = 1 if idle else max(1, min(target.spec.max_ack_pending, _MAX_BATCH))
                try:
                    messages = await subscription.fetch(
                        batch, timeout=_IDLE_FETCH_TIMEOUT if idle else _BUSY_FETCH_TIMEOUT
                    )
                except (nats.errors.TimeoutError, TimeoutError):
                    idle = True
                    continue
                except nats.errors.Error as exc:
                    logger.debug("fetch from %s failed: %s", name, exc)
                    await asyncio.sleep(0.5)
                    continue
                except Exception:
                    logger.exception("pulling %s failed unexpectedly; retrying", name)
                    await asyncio.sleep(1)
                    continue
                # An empty batch: the pull request ended with a status (no messages, or the
                # consumer at its max_ack_pending); long-poll again instead of asking at once.
                idle = not messages
                if messages:
                    await self._hand_over(name, messages)
        finally:
            if subscription is not None:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await subscription.unsubscribe()

    async def _check_backlog(self, name: str, target: Target) -> None:
        """Record the consumer's backlog, and shed what exceeds ``MAX_BACKLOG``."""
        try:
            info = await self._client.jetstream.consumer_info(self._stream, name)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.debug("backlog of %s unknown: %s", name, exc)
            return
        pending = info.num_pending or 0
        backlog = self.backlogs.get(name, Backlog())
        self.backlogs[name] = replace(backlog, pending=pending)
        if pending > self._max_backlog:
            await self._shed(name, target, pending - self._max_backlog)

    async def _shed(self, name: str, target: Target, excess: int) -> None:
        """Move the ``excess`` oldest waiting events of ``name`` to the dead-letter stream.

        The consumer's ``max_ack_pending`` is full of events its sink is not taking, so it is
        raised by one chunk while shedding and set back afterwards (a crash in between is undone
        by the next reconcile, which sees the difference). Shedding pulls through a
        subscription of its own, swept empty before it closes: a fetch that times out leaves
        its pull request open on the server, and what that delivers late must be shed too.
        Pulled through the delivery subscription, it would become jobs beyond the sink's
        in-flight bound, each holding a worker thread through its retries (found by
        tests/faults/test_backlog.py). Shed events never reach the sink.
        """
        js = self._client.jetstream
        reason = (
            f"backlog limit: more than MAX_BACKLOG={self._max_backlog} events were waiting for "
            f"{target.subscription.sink}; the oldest are dead-lettered"
        )
        chunk = min(excess, _SHED_CHUNK)
        shed = 0
        shedding: JetStreamContext.PullSubscription | None = None
        try:
            shedding = await js.pull_subscribe_bind(durable=name, stream=self._stream)
            await js.add_consumer(
                self._stream,
                _config(target.spec, max_ack_pending=target.spec.max_ack_pending + chunk),
            )
            while shed < excess:
                messages = await shedding.fetch(min(chunk, excess - shed), timeout=_SHED_TIMEOUT)
                stored = await self._dead_letter(messages, target, reason)
                shed += stored
                if stored < len(messages):
                    break  # the dead-letter stream refused some; the rest come back later
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("shedding the backlog of %s stopped: %s", name, exc)
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await js.add_consumer(self._stream, _config(target.spec))
            if shedding is not None:
                shed += await self._sweep(shedding, target, reason)
        if shed:
            self._on_shed(name, shed)
            backlog = self.backlogs.get(name, Backlog())
            self.backlogs[name] = replace(backlog, shed=backlog.shed + shed, last_shed=time.time())
            logger.warning(
                "dead-lettered the %d oldest waiting events of %s (%s): over MAX_BACKLOG=%d",
                shed,
                target.subscription.key,
                target.spec.event_type,
                self._max_backlog,
            )

    async def _sweep(
        self, shedding: JetStreamContext.PullSubscription, target: Target, reason: str
    ) -> int:
        """Shed what the server still delivers to ``shedding`` now that the consumer's limit
        is back (nothing new comes then, only what was under way), then close it."""
        swept = 0
        try:
            while True:
                messages = await shedding.fetch(_SHED_CHUNK, timeout=_SWEEP_TIMEOUT)
                swept += await self._dead_letter(messages, target, reason)
        except (nats.errors.TimeoutError, TimeoutError):
            pass  # swept empty
        except nats.errors.Error as exc:
            logger.warning("sweeping the shed events of %s stopped: %s", target.spec.name, exc)
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await shedding.unsubscribe()
        return swept

    async def _dead_letter(self, messages: list[Msg], target: Target, reason: str) -> int:
        """Store a dead letter for each message, then ack it; how many were both."""
        work = [_job(message, target) for message in messages]
        letters = [jobs.dead_letter(job, reason, None, job.delivery_count - 1) for job in work]
        outcomes = await self._client.publish_many(
            letters, self._publish_timeout, stream=self._dead_letter_stream
        )
        stored = [m for m, outcome in zip(messages, outcomes, strict=True) if outcome is None]
        await asyncio.gather(
            *(message.ack_sync(timeout=self._publish_timeout) for message in stored)
        )
        for outcome in outcomes:
            if outcome is not None:
                logger.warning("a dead letter was not stored: %s", outcome)
                break
        return len(stored)

    async def _hand_over(self, name: str, messages: list[Msg]) -> None:
        target = self._targets.get(name)
        if target is None:
            return  # unsubscribed meanwhile; the messages return after their ack wait
        work = [_job(message, target) for message in messages]
        try:
            await asyncio.to_thread(self._enqueue, work)
        except Exception as exc:  # any broker failure: JetStream redelivers after the ack wait
            logger.warning("could not enqueue %d job(s) of %s: %s", len(work), name, exc)
            return
        self._on_enqueued(name, len(work))


def _job(message: Msg, target: Target) -> jobs.DeliveryJob:
    metadata = message.metadata
    return jobs.DeliveryJob(
        # Bytes that are no UTF-8 (stored past the proxy) stay as surrogates, not replaced: the
        # worker dead-letters such an event with its bytes as they were.
        event=message.data.decode("utf-8", errors="surrogateescape"),
        sink=target.subscription.sink,
        subscription=target.subscription.key,
        event_type=target.spec.event_type,
        consumer=target.spec.name,
        ack_subject=message.reply,
        stream_sequence=metadata.sequence.stream,
        delivery_count=metadata.num_delivered,
        ack_wait=target.spec.ack_wait,
        policy=target.subscription.delivery,
    )


def _config(spec: ConsumerSpec, *, max_ack_pending: int | None = None) -> ConsumerConfig:
    return ConsumerConfig(
        name=spec.name,
        durable_name=spec.name,
        description=f"{spec.subscription}/{spec.subjects[0]}",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=spec.ack_wait,
        max_deliver=-1,
        max_ack_pending=max_ack_pending or spec.max_ack_pending,
        filter_subjects=list(spec.subjects),
        metadata={
            "managed-by": MANAGED_BY,
            "subscription": spec.subscription,
            "type": spec.event_type,
            "origin": spec.origin,
        },
    )


def _describe(exc: BaseException) -> str:
    description = getattr(exc, "description", None)
    return str(description or exc or type(exc).__name__)
