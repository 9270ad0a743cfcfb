"""The manager's main loop: read subscriptions, reconcile consumers, pull, report status.

Every second the subscription folder is checked; a change (or a reconnection to NATS, or a
periodic resync) reconciles the consumers, restarts the pull tasks that changed, and publishes a
fresh status view. Nothing here blocks the event loop: file reads and broker calls run in
threads. Every problem of a subscription or a manifest file is logged once, when it appears or
changes, naming the subscription and its file; consumer actions that fail are retried with
back-off (:class:`~manager.reconcile.Retries`). SIGTERM/SIGINT stop the pull tasks first, then
drain the NATS connection; JetStream redelivers whatever was pulled but not yet enqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from eventing.delivery import jobs
from eventing.errors import InvalidSubscription
from eventing.nats import streams
from eventing.nats.client import JetStreamClient
from eventing.settings import Settings
from eventing.sources.cluster import api_client
from eventing.sources.snapshot import Snapshot
from eventing.sources.source import SubscriptionSource, source_for
from eventing.subscriptions.subscription import (
    API_VERSION,
    KIND,
    Subscription,
    keep_transition_times,
    status_invalid,
    status_of,
)
from manager import consumers, leader, pulling, reconcile
from manager.reconcile import Action
from manager.status import ManagerMetrics, StatusServer, View

logger = logging.getLogger(__name__)

_POLL = 1.0
_RESYNC = 15.0
_SHEDDING_SHOWN = 300.0  # how long a subscription's status reports that it shed events


class Manager:
    """Reconciles subscriptions into consumers and pulls them into delivery jobs."""

    def __init__(
        self,
        settings: Settings,
        reader: SubscriptionSource,
        client: JetStreamClient,
        broker: jobs.Broker,
        server: StatusServer,
        metrics: ManagerMetrics,
    ) -> None:
        self._settings = settings
        self._client = client
        self._broker = broker
        self._server = server
        self._metrics = metrics
        self._reader = reader
        self._dispatcher = pulling.Dispatcher(
            client,
            settings.stream.name,
            lambda work: jobs.enqueue(broker, work),
            lambda name, count: metrics.enqueued.labels(name).inc(count),
            on_shed=lambda name, count: metrics.shed.labels(name).inc(count),
            dead_letter_stream=settings.stream.dead_letter_name,
            max_backlog=settings.manager.max_backlog,
            publish_timeout=settings.stream.dead_letter_publish_timeout,
        )
        self._last_view: tuple[Snapshot, dict[str, str], str | None] | None = None
        self._shedding_shown: dict[str, str] = {}
        self._last_sync = 0.0
        self._was_connected = False
        self._dirty = True
        self._retries = reconcile.Retries()
        self._reported: frozenset[str] = frozenset()  #: problems logged, until they change
        self._read_error: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set, then stop pulling."""
        try:
            while not stop.is_set():
                if not self._reader.ready:  # nothing listed yet: an empty snapshot would lie
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), _POLL)
                    continue
                read = await self._read()
                if read is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), _POLL)
                    continue
                snapshot, changed = read
                connected = self._client.is_connected
                now = time.monotonic()
                due = now - self._last_sync > _RESYNC
                retry = self._retries.next_attempt
                due = due or (retry is not None and now >= retry)
                if changed or due or self._dirty or (connected and not self._was_connected):
                    await self.reconcile(snapshot)
                elif self._last_view is not None and self._shedding() != self._shedding_shown:
                    self._publish_view(*self._last_view)
                self._record_backlogs()
                self._was_connected = connected
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _POLL)
        finally:
            await self._dispatcher.stop()

    async def _read(self) -> tuple[Snapshot, bool] | None:
        """The reader's snapshot; None if reading failed in a way no file rule foresaw (logged
        once), which must not stop the manager: the last snapshot stays in force."""
        try:
            read = await asyncio.to_thread(self._reader.read)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            if error != self._read_error:
                logger.exception("reading the subscriptions failed; the last ones stay in force")
            self._read_error = error
            return None
        self._read_error = None
        return read

    async def reconcile(self, snapshot: Snapshot) -> None:
        """Bring consumers, pull tasks and status in line with ``snapshot``."""
        self._last_sync = time.monotonic()
        self._report(snapshot)
        valid = snapshot.valid
        wanted = reconcile.desired(valid, self._settings.delivery.ack_wait)
        errors: dict[str, str] = {}
        deletions_done = False
        problem: str | None = None
        if not self._client.is_connected:
            problem = "NATS connection not ready"
        else:
            try:
                js = self._client.jetstream
                stream = self._settings.stream.name
                actual = await consumers.actual_consumers(js, stream)
                actions = reconcile.plan(
                    wanted, actual, snapshot.invalid_keys, snapshot.unreadable_files
                )
                errors = await self._apply(js, stream, actions)
                deletions_done = not any(
                    isinstance(a, reconcile.Delete) and a.name in errors for a in actions
                )
            except Exception as exc:  # NATS trouble of any kind: report it, retry on the next poll
                problem = f"{type(exc).__name__}: {exc}"
                logger.warning("reconcile failed: %s", problem)
        self._dirty = problem is not None
        if problem is None:
            # After a failed reconcile the pulls go on as they were: the consumers they read
            # still exist, and stopping them would only delay delivery until the next success.
            by_name = {s.name: s for s in wanted.values()}
            self._dispatcher.sync(
                {
                    name: consumers.Target(subscription, by_name[name])
                    for subscription in valid
                    for name in (b.consumer_name for b in subscription.bindings)
                    if name not in errors
                }
            )
        self._publish_view(snapshot, errors, problem)
        consumers_gone = problem is None and deletions_done
        await asyncio.to_thread(self._reader.write_back, self._server.view.items, consumers_gone)

    async def _apply(self, js: Any, stream: str, actions: list[Action]) -> dict[str, str]:
        """Carry out the actions that are due; the error of each consumer not set up (held
        back or failed now), by name."""
        self._retries.forget_except({reconcile.target_of(a) for a in actions})
        attempt, errors = self._retries.due(actions, time.monotonic())
        failed = await consumers.apply(js, stream, attempt)
        for failure in self._retries.record(attempt, failed, time.monotonic()):
            action = failure.action
            what = (
                f"deleting consumer {action.name}"
                if isinstance(action, reconcile.Delete)
                else f"consumer {action.spec.name} of {action.spec.subscription}"
                f" ({action.spec.event_type})"
            )
            logger.warning("%s failed: %s", what, failure.error)
        if failed:
            pause = min(self._retries.failures[name].pause for name in failed)
            logger.warning(
                "%d consumer action(s) failed; each is retried with back-off, the next in %g s",
                len(failed),
                pause,
            )
        for spec in consumers.created(attempt):
            if spec.name not in failed:
                namespace, _, name = spec.subscription.partition("/")
                self._metrics.subscribed.labels(name, namespace, spec.event_type, spec.name).inc()
        return {**errors, **failed}

    def _report(self, snapshot: Snapshot) -> None:
        """Log each problem of the snapshot once: when it appears, or after it changed."""
        problems = {
            f"manifest file {bad.file} is unreadable: {bad.problem}; the consumers of its"
            " subscriptions stay, every other file is served"
            for bad in snapshot.unreadable
        }
        problems.update(
            f"subscription {entry.key}{f' (file {entry.origin})' if entry.origin else ''}"
            f" is invalid: {'; '.join(entry.problems)}"
            for entry in snapshot.entries
            if isinstance(entry, InvalidSubscription)
        )
        for problem in sorted(problems - self._reported):
            logger.warning("%s", problem)
        self._reported = frozenset(problems)

    def _shedding(self) -> dict[str, str]:
        """Why each consumer that shed events within ``_SHEDDING_SHOWN`` did, by name."""
        now = time.time()
        return {
            name: (
                f"{backlog.shed} oldest waiting events moved to the dead-letter stream "
                f"{self._settings.stream.dead_letter_name} (last at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(backlog.last_shed))}): "
                f"more than MAX_BACKLOG={self._settings.manager.max_backlog} events were waiting"
            )
            for name, backlog in self._dispatcher.backlogs.items()
            if backlog.last_shed is not None and now - backlog.last_shed < _SHEDDING_SHOWN
        }

    def _record_backlogs(self) -> None:
        for name, backlog in self._dispatcher.backlogs.items():
            self._metrics.pending.labels(name).set(backlog.pending)

    def _publish_view(
        self, snapshot: Snapshot, errors: dict[str, str], problem: str | None
    ) -> None:
        self._last_view = (snapshot, errors, problem)
        self._shedding_shown = shedding = self._shedding()
        shown = self._server.view.by_key
        items: list[dict[str, Any]] = []
        for entry in snapshot.entries:
            if isinstance(entry, Subscription):
                failure = problem or next(
                    (errors[b.consumer_name] for b in entry.bindings if b.consumer_name in errors),
                    None,
                )
                shed = "; ".join(
                    f"{b.original_type}: {shedding[b.consumer_name]}"
                    for b in entry.bindings
                    if b.consumer_name in shedding
                )
                status = status_of(entry, failure, shedding=shed or None)
                items.append(_item(entry.namespace, entry.name, entry.spec_as_written(), status))
                for binding in entry.bindings:
                    self._metrics.status.labels(
                        entry.name,
                        entry.namespace,
                        binding.consumer_name,
                        "NATS_Jetstream",
                        self._settings.stream.name,
                    ).set(0 if failure else 1)
            else:
                namespace, _, name = entry.key.partition("/")
                items.append(_item(namespace, name, None, status_invalid(entry)))
        for item in items:
            before = shown.get(f"{item['metadata']['namespace']}/{item['metadata']['name']}")
            if before is not None:
                item["status"] = keep_transition_times(before["status"], item["status"])
        self._server.view = View(
            items=tuple(items),
            ready=problem is None,
            by_key={f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items},
            unreadable=tuple({"file": b.file, "problem": b.problem} for b in snapshot.unreadable),
        )


def _item(
    namespace: str, name: str, spec: dict[str, Any] | None, status: dict[str, Any]
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"namespace": namespace, "name": name},
    }
    if spec is not None:
        item["spec"] = spec
    item["status"] = status
    return item


async def run(settings: Settings) -> bool:
    """Run the manager until SIGTERM or SIGINT; False if it stopped because it lost the Lease
    of leader election (its process should exit non-zero, to be restarted as a candidate)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = JetStreamClient(
        settings.nats,
        settings.stream,
        name="eventing-manager",
        streams=(
            streams.stream_config(settings.stream),
            streams.dead_letter_config(settings.stream),
        ),
    )
    client.start()
    metrics = ManagerMetrics()
    server = StatusServer(settings.manager.host, settings.manager.port, metrics)
    server.start()
    source = settings.source
    logger.info(
        "manager reading subscriptions from %s, status on http://%s:%d/subscriptions",
        source.directory
        if source.kind == "directory"
        else f"Kubernetes ({', '.join(source.namespaces) or 'all namespaces'})",
        settings.manager.host,
        server.port,
    )
    try:
        lease = None
        if settings.manager.leader_election:
            lease = leader.Lease(api_client(source), settings.manager.lease_namespace)
            if not await leader.lead(lease, stop, metrics.leader.set):
                return True
        else:
            metrics.leader.set(1)
        manager = Manager(
            settings,
            source_for(settings, watch=True),
            client,
            jobs.make_broker(settings.delivery.broker_url),
            server,
            metrics,
        )
        if lease is None:
            await manager.run(stop)
            return True
        keeping = asyncio.create_task(leader.keep(lease, stop, metrics.leader.set))
        await manager.run(stop)
        return await keeping
    finally:
        server.close()
        await client.close()
        logger.info("manager stopped")
