"""Jobs cannot be forged: whoever can write to Redis cannot make a worker POST or ack.

Hand-made dramatiq messages go into the real Redis queue the manager enqueues into, and a real
worker takes them beside the real jobs of a real subscription.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import dramatiq
import nats
import pytest
import redis

from eventing.delivery import jobs, signatures
from eventing.settings import DeliverySettings, StreamSettings
from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import System

pytestmark = pytest.mark.integration

CARD = "4111 1111 1111 1111"
SECRET = "forger-token-7731"
SPEC = {"source": "myapp", "types": ["order.created.v1"]}
EVENT_SUBJECT = "kyma.myapp.order.created.v1"  #: the subscription's
REFUSED = "refused a delivery job"


@pytest.fixture
def attacker() -> Any:
    server = SinkServer(RecordingSink()).start()
    yield server
    server.stop()


def forged_job(sink: str, ack_subject: str) -> dict[str, Any]:
    """A job as the manager's contract has it, made by someone else."""
    event = {
        "specversion": "1.0",
        "id": "forged-1",
        "source": "myapp",
        "type": "sap.kyma.custom.myapp.order.created.v1",
        "datacontenttype": "application/json",
        "data": {"card": CARD},
    }
    return {
        "event": json.dumps(event),
        "sink": sink,
        "subscription": "default/orders",
        "event_type": "order.created.v1",
        "consumer": "0" * 32,
        "ack_subject": ack_subject,
        "stream_sequence": 1,
        "delivery_count": 1,
        "ack_wait": 30.0,
        "policy": {
            "retry": 0,
            "backoffPolicy": "exponential",
            "backoffDelay": 1.0,
            "backoffMax": 5.0,
            "timeout": 5.0,
            "retryAfterMax": 5.0,
            "inJobWaitMax": 5.0,
        },
    }


def push(redis: RedisServer, **kwargs: Any) -> None:
    """Put one dramatiq message with ``kwargs`` into the delivery queue, as anyone could."""
    broker = jobs.make_broker(DeliverySettings(broker_url=redis.url))
    try:
        broker.enqueue(
            dramatiq.Message(
                queue_name=jobs.QUEUE, actor_name=jobs.ACTOR, args=(), kwargs=kwargs, options={}
            )
        )
    finally:
        broker.close()


def stored_count(server: NatsServer) -> int:
    """How many messages the event stream ever stored (acked ones are gone, not uncounted)."""

    async def last_sequence() -> int:
        client = await nats.connect(server.url)
        try:
            info = await client.jetstream().stream_info(StreamSettings().name)
            return int(info.state.last_seq)
        finally:
            await client.close()

    return asyncio.run(last_sequence())


def ack_subject() -> str:
    """A reply subject of the stream's form (of no consumer there)."""
    return f"$JS.ACK.{StreamSettings().name}.{'0' * 32}.1.1.1.1700000000000000000.0"


def machine_key() -> bytes:
    """The key this test's manager and worker made (the state folder is the test's own)."""
    return (Path(os.environ["XDG_STATE_HOME"]) / "eventing" / signatures.KEY_FILE_NAME).read_bytes()


def wait_for_refusals(system: System, count: int, *, or_else: SinkServer) -> None:
    """Wait until the real event is delivered and the worker took ``count`` forged jobs (refused,
    or, as on main, delivered to ``or_else``)."""
    response = system.publish_binary("real-1", "myapp", "order.created.v1", b'{"n": 1}')
    assert response.status_code == 204, response.text
    worker = system.workers[0]
    wait_until(
        lambda: (
            "real-1" in or_else.sink.ids(None)
            and (worker.log().count(REFUSED) == count or len(or_else.sink.ids(None)) > 1)
        ),
        30,
        f"the real event delivered and the forged jobs taken\n{system.logs()}",
    )


def test_a_forged_job_makes_no_request(
    system: System, redis_server: RedisServer, sink_server: SinkServer, attacker: SinkServer
) -> None:
    system.subscribe("orders", {**SPEC, "sink": f"{sink_server.url}/orders"})
    push(redis_server, job=forged_job(f"{attacker.url}?token={SECRET}", ack_subject()))
    push(redis_server, job=forged_job(attacker.url, ack_subject()), signature="hmac-sha256=00")

    wait_for_refusals(system, 2, or_else=sink_server)

    assert attacker.sink.received(None) == []
    log = system.workers[0].log()
    assert "(unsigned)" in log and "(bad-signature)" in log
    assert CARD not in log and SECRET not in log
    metrics = system.worker_metrics()
    assert 'eventing_worker_refused_jobs_total{reason="unsigned"} 1.0' in metrics
    assert 'eventing_worker_refused_jobs_total{reason="bad-signature"} 1.0' in metrics


def test_a_forged_job_acks_onto_no_event_subject(
    system: System, nats_server: NatsServer, redis_server: RedisServer, sink_server: SinkServer
) -> None:
    sink = f"{sink_server.url}/orders"
    system.subscribe("orders", {**SPEC, "sink": sink})
    push(redis_server, job=forged_job(sink, EVENT_SUBJECT))

    wait_for_refusals(system, 1, or_else=sink_server)

    assert sink_server.sink.ids(None) == ["real-1"]
    assert stored_count(nats_server) == 1  # the real event only: no "+ACK" stored as an event


def test_an_altered_job_is_refused(
    system: System, redis_server: RedisServer, sink_server: SinkServer, attacker: SinkServer
) -> None:
    system.subscribe("orders", {**SPEC, "sink": f"{sink_server.url}/orders"})
    genuine = forged_job(f"{sink_server.url}/orders", ack_subject())
    signature = signatures.sign(genuine, machine_key())  # as the manager signs
    push(redis_server, job={**genuine, "sink": attacker.url}, signature=signature)

    wait_for_refusals(system, 1, or_else=sink_server)

    assert attacker.sink.received(None) == []
    assert "(bad-signature)" in system.workers[0].log()


def test_a_message_that_is_no_dramatiq_message_is_dropped_quietly(
    system: System, redis_server: RedisServer, sink_server: SinkServer
) -> None:
    """Written into Redis by hand (dramatiq's layout: a list of ids, a hash of id -> message)."""
    system.subscribe("orders", {**SPEC, "sink": f"{sink_server.url}/orders"})
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.hset(f"dramatiq:{jobs.QUEUE}.msgs", "garbage-1", f"not json {CARD}")
        client.rpush(f"dramatiq:{jobs.QUEUE}", "garbage-1")
    finally:
        client.close()
    worker = system.workers[0]
    wait_until(
        lambda: "no dramatiq message" in worker.log() or "Consumer encountered" in worker.log(),
        30,
        f"the worker to take the message\n{system.logs()}",
    )

    response = system.publish_binary("real-1", "myapp", "order.created.v1", b'{"n": 1}')
    assert response.status_code == 204, response.text
    wait_until(lambda: sink_server.sink.ids() == ["real-1"], 30, f"delivery\n{system.logs()}")
    log = worker.log()
    assert CARD not in log and "Traceback" not in log
