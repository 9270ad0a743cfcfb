"""The manager's pull tasks, in process against a real nats-server: one owner, no orphans.

The enqueue callback is our own seam (a list here, dramatiq in production); the consumers,
the stream and every pull are real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import nats
import pytest
from nats.aio.msg import Msg

from eventing.delivery.jobs import DeliveryJob
from eventing.nats.client import JetStreamClient
from eventing.nats.consumers import Pull
from eventing.nats.messages import OutboundMessage
from eventing.nats.streams import dead_letter_config, stream_config
from eventing.settings import Settings
from manager import consumers, pulling, reconcile
from testing.servers import NatsServer, processed
from tests.eventing.test_subscription import manifest, parse
from tests.integration.conftest import settings_for

pytestmark = pytest.mark.integration

SUBSCRIPTION = parse(manifest({"types": ["a.b.v1", "c.d.v1"]}))
SPECS = reconcile.desired((SUBSCRIPTION,), 30.0)
TARGETS = {name: consumers.Target(SUBSCRIPTION, spec) for name, spec in SPECS.items()}
FIRST, SECOND = sorted(SPECS)


class Enqueued:
    """The jobs handed over, by consumer (the enqueue runs in a thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: list[DeliveryJob] = []

    def __call__(self, work: list[DeliveryJob], per_job: int) -> None:
        with self._lock:
            self.jobs += work

    def of(self, name: str) -> list[DeliveryJob]:
        with self._lock:
            return [job for job in self.jobs if job.consumer == name]


@asynccontextmanager
async def running(
    settings: Settings, enqueued: Enqueued, on_enqueued: Callable[[str, int], None]
) -> AsyncIterator[tuple[JetStreamClient, pulling.Dispatcher]]:
    client = JetStreamClient(
        settings.nats,
        settings.stream,
        name="test",
        streams=(stream_config(settings.stream), dead_letter_config(settings.stream)),
    )
    client.start()
    assert await client.wait_connected(10)
    actions: list[reconcile.Action] = [reconcile.Create(spec) for spec in SPECS.values()]
    assert await consumers.apply(client.jetstream, settings.stream.name, actions) == {}
    dispatcher = pulling.Dispatcher(
        client,
        settings.stream.name,
        enqueued,
        on_enqueued,
        on_shed=lambda name, count: None,
        on_filtered=lambda name, count: None,
        dead_letter_stream=settings.stream.dead_letter_name,
        max_backlog=1000,
        publish_timeout=2.0,
    )
    try:
        yield client, dispatcher
    finally:
        await dispatcher.stop()
        await client.close()


async def publish(client: JetStreamClient, name: str, event_id: str) -> None:
    subject = SPECS[name].subjects[0]
    headers = {"Nats-Msg-Id": event_id}
    await client.publish(OutboundMessage(subject, b"{}", headers, "t", "s"), 5)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None


def pull_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("pull-") and not t.done()]


def test_every_wanted_consumer_is_pulled_and_stop_leaves_no_pull_task(
    nats_server: NatsServer,
) -> None:
    settings = settings_for(nats_server)
    enqueued = Enqueued()

    async def scenario() -> tuple[int, int, int, int]:
        async with running(settings, enqueued, lambda name, count: None) as (client, dispatcher):
            dispatcher.sync(TARGETS)
            for n in range(3):
                await publish(client, FIRST, f"first-{n}")
                await publish(client, SECOND, f"second-{n}")
            await until(lambda: len(enqueued.jobs) == 6, "six jobs")
            pulling_then = len(pull_tasks())
            dispatcher.sync({FIRST: TARGETS[FIRST]})
            await until(lambda: len(pull_tasks()) == 1, "the unwanted pull to end")
            await dispatcher.stop()
            return (
                pulling_then,
                len(pull_tasks()),
                len(enqueued.of(FIRST)),
                len(enqueued.of(SECOND)),
            )

    pulling_then, left, first, second = asyncio.run(scenario())

    assert pulling_then == 2
    assert left == 0
    assert (first, second) == (3, 3)


def test_an_unexpected_failure_in_one_pull_is_retried_and_stops_no_other(
    nats_server: NatsServer,
) -> None:
    """A bug in handing over (here the callback after an enqueue) must neither end the other
    pulls nor leave its own consumer unpulled until the next change of subscriptions."""
    settings = settings_for(nats_server)
    enqueued = Enqueued()
    failed: list[str] = []

    def on_enqueued(name: str, count: int) -> None:
        if name == FIRST and not failed:
            failed.append(name)
            raise RuntimeError("a bug in the metrics callback")

    async def scenario() -> tuple[int, int]:
        async with running(settings, enqueued, on_enqueued) as (client, dispatcher):
            dispatcher.sync(TARGETS)
            await publish(client, FIRST, "first-0")
            await until(lambda: bool(failed), "the failure")
            await publish(client, SECOND, "second-0")
            await publish(client, FIRST, "first-1")
            await until(lambda: len(enqueued.of(FIRST)) == 2, "the failed pull to resume")
            await until(lambda: len(enqueued.of(SECOND)) == 1, "the other pull to go on")
            return len(pull_tasks()), len(enqueued.jobs)

    tasks, jobs = asyncio.run(scenario())

    assert tasks == 2
    assert jobs == 3


def test_pulls_go_on_over_the_connection_opened_after_nats_py_gave_one_up(
    nats_server: NatsServer,
) -> None:
    """nats-py closes a connection for good after some protocol errors; the client opens a new
    one, and the pulls must move to it instead of fetching from the dead one forever."""
    settings = settings_for(nats_server)
    enqueued = Enqueued()

    async def scenario() -> int:
        async with running(settings, enqueued, lambda name, count: None) as (client, dispatcher):
            dispatcher.sync(TARGETS)
            await publish(client, FIRST, "before")
            await until(lambda: len(enqueued.of(FIRST)) == 1, "the first job")
            given_up = client._nc
            assert given_up is not None
            await given_up.close()  # as nats-py does after a protocol error
            await until(lambda: client.is_connected and client._nc is not given_up, "reconnect")
            await publish(client, FIRST, "after")
            await until(lambda: len(enqueued.of(FIRST)) == 2, "the job after the reconnect")
            return len(enqueued.jobs)

    assert asyncio.run(scenario()) == 2


@asynccontextmanager
async def bound(
    nats_server: NatsServer, max_ack_pending: int = 100
) -> AsyncIterator[tuple[JetStreamClient, Pull, list[bytes]]]:
    """A client, a pull of FIRST (at ``max_ack_pending``), and the pull requests the server got
    for it (heard on a connection of its own)."""
    settings = settings_for(nats_server)
    async with running(settings, Enqueued(), lambda name, count: None) as (client, _):
        spec = dataclasses.replace(SPECS[FIRST], max_ack_pending=max_ack_pending)
        await client.jetstream.put(settings.stream.name, consumers.consumer(spec))
        listener = await nats.connect(nats_server.url)
        requests: list[bytes] = []

        async def heard(msg: Msg) -> None:
            requests.append(msg.data)

        await listener.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.*.{FIRST}", cb=heard)
        await processed(listener)
        pull = await client.jetstream.pull(settings.stream.name, FIRST)
        try:
            yield client, pull, requests
        finally:
            await pull.close()
            await listener.close()


def test_one_pull_request_brings_the_messages_of_several_takes(nats_server: NatsServer) -> None:
    """A streaming pull: the request a take opened stays open, so the next message is pushed
    to the next take without a request of its own."""

    async def scenario() -> tuple[list[int], int]:
        async with bound(nats_server) as (client, pull, requests):
            taken: list[int] = []
            for n in range(3):
                await publish(client, FIRST, f"first-{n}")
                taken.append(len(await pull.take(10, 5.0)))
            return taken, len(requests)

    taken, requests = asyncio.run(scenario())

    assert taken == [1, 1, 1]
    assert requests == 1


def test_a_take_without_renew_opens_no_request(nats_server: NatsServer) -> None:
    """What the pull task does before a backlog check that may shed: no delivery request may
    be open to take the events shedding makes room for."""

    async def scenario() -> tuple[int, bool, int, int]:
        async with bound(nats_server) as (client, pull, requests):
            await publish(client, FIRST, "waiting")
            without = len(await pull.take(10, 0.3, renew=False))
            heard = len(requests)
            requesting = pull.requesting
            return without, requesting, heard, len(await pull.take(10, 5.0))

    without, requesting, heard, renewed = asyncio.run(scenario())

    assert (without, requesting, heard) == (0, False, 0)
    assert renewed == 1


def test_a_consumer_at_its_max_ack_pending_gets_one_request_per_take_at_most(
    nats_server: NatsServer,
) -> None:
    """The server ends or holds the requests of a consumer with max_ack_pending messages
    unacknowledged; a take must wait out its timeout then, not ask again at once."""

    async def scenario() -> tuple[int, list[int], int]:
        async with bound(nats_server, max_ack_pending=1) as (client, pull, requests):
            for n in range(3):
                await publish(client, FIRST, f"first-{n}")
            first = len(await pull.take(10, 5.0))
            empty = [len(await pull.take(10, 0.2)) for _ in range(4)]
            return first, empty, len(requests)

    first, empty, requests = asyncio.run(scenario())

    assert first == 1
    assert empty == [0, 0, 0, 0]
    assert requests <= 5


def test_a_take_gathers_the_messages_that_follow_its_first(nats_server: NatsServer) -> None:
    """Messages published shortly after the one a take got share its answer (and its job);
    a full batch ends the wait."""

    async def scenario() -> list[str]:
        async with bound(nats_server) as (client, pull, _):
            await publish(client, FIRST, "first")
            taking = asyncio.create_task(pull.take(3, 5.0, gather=30.0))
            await asyncio.sleep(0.2)
            await publish(client, FIRST, "second")
            await publish(client, FIRST, "third")
            async with asyncio.timeout(10):
                taken = await taking
            return [message.headers["Nats-Msg-Id"] for message in taken]

    assert asyncio.run(scenario()) == ["first", "second", "third"]
