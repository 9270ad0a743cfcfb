"""The worker's NATS connection as an attempt log, against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import nats
import pytest
from nats.js.api import StorageType

from eventing.delivery.steps import NOTHING_MADE, Progress
from eventing.errors import BackendUnavailable, UntrustedJob
from eventing.settings import Settings
from testing.servers import NatsServer, wait_until
from tests.eventing.test_ledger import RECORD
from tests.workers.conftest import make_job
from workers.connection import NatsAcknowledger
from workers.shutdown import GracefulStop

pytestmark = pytest.mark.integration


@pytest.fixture
def acks(nats_server: NatsServer) -> Iterator[NatsAcknowledger]:
    settings = Settings.from_environ(
        {"NATS_URL": nats_server.url, "RECONNECT_WAIT": "100ms", "JS_DLQ_MAX_AGE": "48h"}
    )
    connection = NatsAcknowledger(settings.nats, settings.stream)
    connection.before_worker_boot(None, None)
    yield connection
    connection.after_worker_shutdown(None, None)


def bucket_stream(server: NatsServer) -> tuple[float | None, str, int]:
    """(max age, storage, messages) of the stream behind the attempts bucket."""

    async def read() -> tuple[float | None, str, int]:
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().stream_info("KV_eventing-attempts")
            storage = StorageType(info.config.storage).value
            return info.config.max_age, storage, info.state.messages
        finally:
            await nc.close()

    return asyncio.run(read())


def test_counts_are_kept_per_message_and_forgotten_without_a_trace(
    acks: NatsAcknowledger, nats_server: NatsServer
) -> None:
    job, other = make_job(), make_job(stream_sequence=8)
    assert acks.progress(job) == NOTHING_MADE  # creates the bucket
    acks.record(job, Progress(2, 1700000000.25))
    acks.record(job, Progress(3, 1700000001.5))
    assert acks.progress(job) == Progress(3, 1700000001.5)
    assert acks.progress(other) == NOTHING_MADE
    assert bucket_stream(nats_server) == (48 * 3600, "file", 1)  # one value per key, no history
    acks.forget(job)
    assert acks.progress(job) == NOTHING_MADE
    assert bucket_stream(nats_server)[2] == 0  # purged: no delete marker left behind


def test_an_unreachable_bucket_never_holds_a_job_up(
    acks: NatsAcknowledger, nats_server: NatsServer
) -> None:
    job = make_job()
    acks.record(job, Progress(1, time.time()))
    nats_server.kill()
    started = time.monotonic()
    assert acks.progress(job) is None  # unknown: the job goes by the delivery count
    acks.record(job, Progress(2, time.time()))
    acks.forget(job)
    assert time.monotonic() - started < 3 * 3.5  # three calls, each bounded by its timeout


def test_acks_from_many_threads_are_all_confirmed(
    acks: NatsAcknowledger, nats_server: NatsServer
) -> None:
    """Acks travel in shared rounds; every thread returns only once its own ack is confirmed."""

    async def pull(count: int) -> list[str]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="sap", subjects=["acks.>"])  # the stream acks may go to
            for i in range(count):
                await js.publish("acks.x", str(i).encode())
            subscription = await js.pull_subscribe("acks.x", durable="d", stream="sap")
            messages = await subscription.fetch(count, timeout=5)
            return [message.reply for message in messages]
        finally:
            await nc.close()

    async def ack_pending() -> tuple[int, int]:
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().consumer_info("sap", "d")
            return info.num_ack_pending, info.ack_floor.stream_seq
        finally:
            await nc.close()

    replies = asyncio.run(pull(200))
    assert len(replies) == 200
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(acks.ack, replies))
    assert asyncio.run(ack_pending()) == (0, 200)  # confirmed: nothing left to redeliver


def test_an_ack_nats_does_not_confirm_is_tried_again_until_the_stop_bounds_it(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_environ({"NATS_URL": nats_server.url, "RECONNECT_WAIT": "100ms"})
    stop = GracefulStop()
    acks = NatsAcknowledger(settings.nats, settings.stream, stop)
    acks.before_worker_boot(None, None)
    try:
        nats_server.kill()
        stop.since = time.monotonic()  # stopping: tries end 2 s after that, not after 15 s
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="not confirmed in time"):
            acks.ack("$JS.ACK.sap.c0ffee.1.7.7.0.0")
        assert time.monotonic() - started < 15
        # each try failed as an ack, not as a round of them (which warns every try)
        assert not [r for r in caplog.records if "round of" in r.getMessage()]
    finally:
        acks.after_worker_shutdown(None, None)


@pytest.mark.parametrize(
    "reply", ["kyma.orders.order.created.v1", "$JS.ACK.other-stream.c0ffee.1.7.7.0.0"]
)
def test_nothing_is_published_outside_the_streams_reply_subjects(
    acks: NatsAcknowledger, reply: str
) -> None:
    for settle in (acks.ack, lambda r: acks.nak(r, 1.0), acks.keepalive):
        with pytest.raises(UntrustedJob, match="ack subject"):
            settle(reply)


async def _one_message(url: str) -> str:
    """The reply subject of a message pulled from a stream ``sap`` (an ack subject of it)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="sap", subjects=["acks.>"])
        await js.publish("acks.x", b"0")
        subscription = await js.pull_subscribe("acks.x", durable="d", stream="sap")
        [message] = await subscription.fetch(1, timeout=5)
        return str(message.reply)
    finally:
        await nc.close()


async def _stored(url: str, stream: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        if not info.state.messages:
            return []
        first, last = info.state.first_seq, info.state.last_seq
        return [(await js.get_msg(stream, seq)).data or b"" for seq in range(first, last + 1)]
    finally:
        await nc.close()


def test_a_delivery_record_goes_with_its_ack(
    acks: NatsAcknowledger, nats_server: NatsServer
) -> None:
    reply = asyncio.run(_one_message(nats_server.url))
    acks.ack(reply, RECORD)
    wait_until(
        lambda: asyncio.run(_stored(nats_server.url, "sap-ledger")) == [RECORD.to_bytes()],
        5,
        "the record in the ledger stream",
    )


def test_a_record_that_cannot_be_stored_never_fails_the_ack(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def squat() -> None:  # another stream holds the ledger's subjects: records are refused
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(name="squatter", subjects=["ledger.>"])
        finally:
            await nc.close()

    asyncio.run(squat())
    reply = asyncio.run(_one_message(nats_server.url))
    settings = Settings.from_environ({"NATS_URL": nats_server.url, "RECONNECT_WAIT": "100ms"})
    failures: list[None] = []
    acks = NatsAcknowledger(settings.nats, settings.stream, None, lambda: failures.append(None))
    acks.before_worker_boot(None, None)
    try:
        acks.ack(reply, RECORD)  # confirmed, or this raises
        acks.write(RECORD)
        wait_until(lambda: len(failures) == 2, 10, "both records counted as not stored")
    finally:
        acks.after_worker_shutdown(None, None)
    [warning] = [r for r in caplog.records if "ledger record(s) not stored" in r.getMessage()]
    assert warning.levelname == "WARNING"  # once: the second waits for the next report


def test_with_the_ledger_off_no_record_is_published(nats_server: NatsServer) -> None:
    async def ledger_stream() -> None:  # left from when the ledger was on
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(name="sap-ledger", subjects=["ledger.>"])
        finally:
            await nc.close()

    asyncio.run(ledger_stream())
    reply = asyncio.run(_one_message(nats_server.url))
    settings = Settings.from_environ({"NATS_URL": nats_server.url, "LEDGER_MAX_AGE": "0"})
    acks = NatsAcknowledger(settings.nats, settings.stream)
    acks.before_worker_boot(None, None)
    try:
        acks.write(RECORD)
        acks.ack(reply, RECORD)  # a record would have gone out before this ack's confirmation
    finally:
        acks.after_worker_shutdown(None, None)
    assert asyncio.run(_stored(nats_server.url, "sap-ledger")) == []
