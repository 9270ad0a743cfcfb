"""The manager's main loop and its process: read subscriptions, reconcile, show status.

Every second the source is read; a change (or a reconnection to NATS, a consumer action due
for retry, a failed reconcile, or a periodic resync) makes the :class:`~manager.reconciler.
Reconciler` act, and the :class:`~manager.board.StatusBoard` show the result. Nothing here
blocks the event loop: source reads, broker calls and writes back to the source run in
threads. Every problem of a subscription or a manifest file is logged once, when it appears or
changes, naming the subscription and its file.

:func:`run` is the process: one ``asyncio.TaskGroup`` owns the loop and the leader's lease
renewal (an error in either stops the other, none is left running unowned), and the status API
is served on the same loop. SIGTERM/SIGINT set a stop event: the loop ends by stopping the pull
tasks, then the NATS connection drains; JetStream redelivers whatever was pulled but not yet
enqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from eventing.delivery import jobs, signatures
from eventing.errors import InvalidSubscription
from eventing.nats import streams
from eventing.nats.client import JetStreamClient
from eventing.settings import Settings, local_state_dir
from eventing.sources.cluster import api_client
from eventing.sources.snapshot import Snapshot
from eventing.sources.source import SubscriptionSource, source_for
from manager import deadletters, health, history, leader, operations, pulling, replays
from manager.api import ApiContext
from manager.board import StatusBoard
from manager.deadlettersinks import DeadLetterSinks
from manager.metrics import ManagerMetrics, labels_of
from manager.reconciler import Reconciler
from manager.status import StatusServer, api_token

logger = logging.getLogger(__name__)

POLL = 1.0  #: seconds between reads of the source
RESYNC = 15.0  #: seconds after which a reconcile runs even if nothing changed


class Manager:
    """Decides when to reconcile, and hands each outcome to the board and back to the source."""

    def __init__(
        self,
        reader: SubscriptionSource,
        client: JetStreamClient,
        dispatcher: pulling.Dispatcher,
        reconciler: Reconciler,
        board: StatusBoard,
        dead_letter_sinks: DeadLetterSinks | None = None,
    ) -> None:
        self._reader = reader
        self._dead_letter_sinks = dead_letter_sinks
        self._client = client
        self.dispatcher = self._dispatcher = dispatcher
        self._reconciler = reconciler
        self._board = board
        self._last_sync = 0.0
        self._was_connected = False
        self._dirty = True  #: the last reconcile did not reach NATS
        self._reported: frozenset[str] = frozenset()  #: problems logged, until they change
        self._read_error: str | None = None
        #: hands jobs to the workers, signed (set by :meth:`assemble`; the API's redrives use it)
        self.enqueue: jobs.Enqueue | None = None
        #: told the consumers each reconcile created, by name (a startFrom replays the archive)
        self.on_created: Callable[[tuple[str, ...]], None] | None = None

    @classmethod
    def assemble(
        cls,
        settings: Settings,
        reader: SubscriptionSource,
        client: JetStreamClient,
        broker: jobs.Broker,
        board: StatusBoard,
        metrics: ManagerMetrics,
    ) -> Manager:
        """A manager of ``reader``'s subscriptions that enqueues into ``broker``, signed.

        Raises:
            ConfigError: the job signing key cannot be read.
        """
        key = job_signing_key(settings)

        def enqueue(work: list[jobs.DeliveryJob]) -> None:
            jobs.enqueue(broker, work, key)

        def enqueue_batched(work: list[jobs.DeliveryJob], per_job: int) -> None:
            jobs.enqueue(broker, work, key, per_job=per_job)

        def of(name: str) -> tuple[str, str, str]:
            return labels_of(dispatcher.targets.get(name))

        dispatcher = pulling.Dispatcher(
            client,
            settings.stream.name,
            enqueue_batched,
            lambda name, count: metrics.enqueued.labels(*of(name)).inc(count),
            on_shed=lambda name, count: metrics.shed.labels(*of(name)).inc(count),
            on_filtered=lambda name, count: metrics.filtered.labels(*of(name)).inc(count),
            dead_letter_stream=settings.stream.dead_letter_name,
            max_backlog=settings.manager.max_backlog,
            publish_timeout=settings.stream.dead_letter_publish_timeout,
            ledger_stream=settings.stream.ledger_name if settings.stream.ledger_max_age else "",
            batch_max=settings.delivery.batch_max,
            batch_spread=settings.delivery.batch_spread,
        )
        reconciler = Reconciler.for_settings(client, dispatcher, metrics, settings)
        sinks = DeadLetterSinks(
            client, settings.stream.dead_letter_name, enqueue, settings.delivery.ack_wait
        )
        manager = cls(reader, client, dispatcher, reconciler, board, sinks)
        manager.enqueue = enqueue
        return manager

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set, then stop pulling."""
        try:
            while not stop.is_set():
                if self._reader.ready:  # until a first listing, an empty snapshot would lie
                    read = await self._read()
                    if read is not None:
                        await self._step(*read)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL)
        finally:
            await self._dispatcher.stop()
            if self._dead_letter_sinks is not None:
                await self._dead_letter_sinks.stop()

    async def _step(self, snapshot: Snapshot, changed: bool) -> None:
        connected = self._client.is_connected
        now = time.monotonic()
        retry = self._reconciler.next_retry
        due = now - self._last_sync > RESYNC or (retry is not None and now >= retry)
        if changed or due or self._dirty or (connected and not self._was_connected):
            await self.reconcile(snapshot)
        self._board.follow(self._dispatcher.backlogs)
        self._was_connected = connected

    async def reconcile(self, snapshot: Snapshot) -> None:
        """Bring consumers, pull tasks and status in line with ``snapshot``."""
        self._last_sync = time.monotonic()
        self._report(snapshot)
        outcome = await self._reconciler.reconcile(snapshot)
        if self._dead_letter_sinks is not None and outcome.problem is None:
            await self._dead_letter_sinks.reconcile(snapshot.valid)
        self._dirty = outcome.problem is not None
        if outcome.created and self.on_created is not None:
            self.on_created(outcome.created)
        view = self._board.publish(
            snapshot,
            outcome.errors,
            outcome.problem,
            self._dispatcher.backlogs,
            refused=outcome.refused,
        )
        consumers_gone = outcome.problem is None and outcome.deletions_done
        await asyncio.to_thread(self._reader.write_back, view.items, consumers_gone)

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


async def run(settings: Settings) -> bool:
    """Run the manager until SIGTERM or SIGINT; False if it stopped because it lost the Lease
    of leader election (its process should exit non-zero, to be restarted as a candidate).

    Raises:
        OSError: the status port cannot be bound.
        ConfigError: the status API would be open beyond loopback (``api_token``).
    """
    token = api_token(settings.manager)  # before anything connects anywhere
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = jetstream_client(settings)
    metrics = ManagerMetrics()
    board = StatusBoard.for_settings(settings, metrics)
    context = ApiContext(settings, client, board, stopping=stop)
    replayer = replays.Replayer(context, metrics)
    server = StatusServer(
        settings.manager.host,
        settings.manager.port,
        metrics,
        lambda: board.view,
        token=token,
        routes=[
            *operations.routes(context.operations),
            *deadletters.routes(context),
            *history.routes(context),
            *replayer.routes(),
        ],
    )
    client.start()
    try:
        await server.start()
        source = settings.source
        logger.info(
            "manager reading subscriptions from %s, status on http://%s:%d/subscriptions",
            source.directory
            if source.kind == "directory"
            else f"Kubernetes ({', '.join(source.namespaces) or 'all namespaces'})",
            settings.manager.host,
            server.port,
        )
        return await _lead_and_manage(context, metrics, stop, replayer.start_from)
    finally:
        await server.close()
        await context.stop_work()  # replays and redrives under way
        await client.close()  # after the pull tasks stopped: drains what they left
        logger.info("manager stopped")


def job_signing_key(settings: Settings) -> bytes:
    """The key jobs are signed with (``JOB_SIGNING_KEY_FILE``, or this machine's own).

    Raises:
        ConfigError: the key cannot be read or is too short.
    """
    return signatures.load_key(settings.delivery.job_signing_key_file, local_state_dir())


def jetstream_client(settings: Settings, name: str = "eventing-manager") -> JetStreamClient:
    """The manager's connection: it owns the event stream, the dead-letter stream, the replay
    archive (deleted when ``EVENT_ARCHIVE_MAX_AGE`` is 0: turned off, it would still copy every
    event and fill its disk budget) and the delivery ledger (unless ``LEDGER_MAX_AGE=0``)."""
    archive = streams.archive_config(settings.stream)
    return JetStreamClient(
        settings.nats,
        settings.stream,
        name=name,
        streams=(
            streams.stream_config(settings.stream),
            streams.dead_letter_config(settings.stream),
            *([archive] if archive is not None else []),
            *((streams.ledger_config(settings.stream),) if settings.stream.ledger_max_age else ()),
        ),
        retired=() if archive is not None else (settings.stream.archive_name,),
    )


async def _lead_and_manage(
    context: ApiContext,
    metrics: ManagerMetrics,
    stop: asyncio.Event,
    on_created: Callable[[tuple[str, ...]], None],
) -> bool:
    """Wait for the Lease if leader election is on, then manage until ``stop``; whether the
    Lease (if any) was kept to the end. Once leading, the API's operations reach the manager
    through ``context``."""
    settings, client, board = context.settings, context.client, context.board
    lease = None
    if settings.manager.leader_election:
        lease = leader.Lease(api_client(settings.source), settings.manager.lease_namespace)
        if not await leader.lead(lease, stop, metrics.leader.set):
            return True
    else:
        metrics.leader.set(1)
    reader = source_for(settings, watch=True)
    manager = Manager.assemble(
        settings,
        reader,
        client,
        jobs.make_broker(settings.delivery),
        board,
        metrics,
    )
    context.dispatcher, context.enqueue = manager.dispatcher, manager.enqueue
    manager.on_created = on_created
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(manager.run(stop), name="manager")
        if settings.stream.ledger_max_age:  # 0: no ledger to follow
            ledger = settings.stream.ledger_name
            tasks.create_task(health.follow(client, ledger, board.health, stop), name="health")
        keeping = (
            tasks.create_task(leader.keep(lease, stop, metrics.leader.set), name="lease")
            if lease is not None
            else None
        )
    return keeping is None or keeping.result()
