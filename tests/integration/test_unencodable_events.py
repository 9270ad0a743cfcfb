"""Events a worker can never send as an HTTP request, put straight into the stream.

A publisher from before the proxy validated trace context, or a hostile one with NATS access,
can store what no sink request can carry: CR/LF in ``traceparent``, bytes that are no UTF-8,
``data_base64`` that is no base64. Each such event must be dead-lettered at once, with the
reason, and must not hold its subscription's in-flight window: the ack wait here is ten
minutes, so an event the worker failed to settle would block the subscription for the test.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import pytest

from eventing.events.eventtypes import standard_subject
from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import SinkServer
from testing.system import System
from tests.conftest import stop_showing_logs
from tests.integration.conftest import read_stream

pytestmark = pytest.mark.integration

SOURCE, TYPE = "shop", "order.created.v1"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _stored(event_id: str, **changes: Any) -> bytes:
    document = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": TYPE,
        "time": "2020-04-02T21:37:00Z",
        "datacontenttype": "application/json",
        "data": {"n": 1},
        **changes,
    }
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


#: id → (payload as stored, a word the dead letter's reason must name)
UNENCODABLE: dict[str, tuple[bytes, str]] = {
    "traceparent-crlf": (
        _stored("traceparent-crlf", traceparent=TRACEPARENT + "\r\nX-Injected: 1"),
        "traceparent",
    ),
    "traceparent-non-ascii": (
        _stored("traceparent-non-ascii", traceparent="00-0af7651916cd43dd8448eb211c80319c-ä-01"),
        "traceparent",
    ),
    "tracestate-control": (_stored("tracestate-control", tracestate="vendor=a\x01b"), "tracestate"),
    "bad-base64": (_stored("bad-base64", data=None, data_base64="!! not base64 !!"), "base64"),
    "lone-surrogate": (_stored("lone-surrogate", myext="\ud800"), "surrogate"),
    "not-utf8": (_stored("not-utf8").replace(b'"n"', b'"\xff\xfe"'), "UTF-8"),
}


def _publish_raw(server: NatsServer, payloads: list[bytes]) -> None:
    """Store ``payloads`` in the events stream as they are, bypassing the proxy."""

    async def publish() -> None:
        connection = await nats.connect(server.url)
        try:
            js = connection.jetstream()
            for payload in payloads:
                await js.publish(standard_subject(SOURCE, TYPE), payload, stream="sap")
        finally:
            await connection.close()

    asyncio.run(publish())


@pytest.fixture
def patient_system(
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Any:
    """A system whose ack wait is far longer than the test: nothing is redelivered in it."""
    running = System(nats_server, redis_server, tmp_path, DELIVERY_ACK_WAIT="10m").start()
    yield running
    stop_showing_logs(request, running)


def test_unencodable_events_are_dead_lettered_at_once_and_hold_nothing_up(
    patient_system: System, sink_server: SinkServer, nats_server: NatsServer
) -> None:
    system = patient_system
    spec = {
        "sink": sink_server.url,
        "source": SOURCE,
        "types": [TYPE],
        "config": {"maxInFlightMessages": "2"},
    }
    system.subscribe("orders", spec)
    _publish_raw(nats_server, [payload for payload, _ in UNENCODABLE.values()])
    good = [f"good-{i}" for i in range(5)]
    for event_id in good:
        assert system.publish_binary(event_id, SOURCE, TYPE).status_code == 204

    wait_until(
        lambda: set(good) <= set(sink_server.sink.ids()),
        30,
        f"the good events past the unencodable ones\n{system.logs()}",
    )
    wait_until(
        lambda: len(read_stream(nats_server, "sap-dlq")) == len(UNENCODABLE),
        30,
        f"a dead letter for each unencodable event\n{system.logs()}",
    )
    letters = {
        letter.headers["Eventing-Dead-Letter-Stream-Sequence"]: letter
        for letter in read_stream(nats_server, "sap-dlq")
    }
    by_payload = {letter.payload: letter for letter in letters.values()}
    for event_id, (payload, word) in UNENCODABLE.items():
        letter = by_payload.get(payload)
        assert letter is not None, f"{event_id}: no dead letter holds the event as stored"
        reason = letter.headers["Eventing-Dead-Letter-Reason"]
        assert word.lower() in reason.lower(), f"{event_id}: {reason}"
        assert letter.headers["Eventing-Dead-Letter-Attempts"] == "0", event_id
    assert not set(UNENCODABLE) & set(sink_server.sink.ids(None)), "sent to the sink after all"
    worker_log = system.workers[0].log()
    assert "Traceback" not in worker_log, worker_log[-3000:]
