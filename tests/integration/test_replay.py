"""Replay with every process real: the archive's events once more, to the subscription's
current sink; a new subscription that starts in the past; what retention removed, counted.

One system for the module (short ack waits and timeouts); each test has subscriptions and
event types of its own, so what one replays is no other's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import requests
from werkzeug.wrappers import Request

from testing.counting import Load, report
from testing.servers import wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import System, whole_system

pytestmark = pytest.mark.integration

SOURCE = "faults"  #: testing.counting.Load's source
RELEASE = threading.Event()  #: lets the /slow sink answer


def _answer(request: Request) -> int:
    if request.path.endswith("/slow"):
        RELEASE.wait(30)
    return 204


@pytest.fixture(scope="module")
def sink() -> Iterator[SinkServer]:
    server = SinkServer(RecordingSink(answer=_answer)).start()
    yield server
    RELEASE.set()
    server.stop()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, sink: SinkServer) -> Iterator[System]:
    with whole_system(tmp_path_factory.mktemp("replay")) as running:
        yield running


@pytest.fixture(autouse=True)
def _logs_on_failure(system: System, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report_ = getattr(request.node, "rep_call", None)
    if report_ is not None and report_.failed:
        print(system.logs())


def _spec(sink: SinkServer, path: str, event_type: str, **delivery: str) -> dict[str, Any]:
    return {
        "sink": f"{sink.url}/{path}",
        "source": SOURCE,
        "types": [event_type],
        "delivery": {"timeout": "PT1S", "backoffDelay": "PT0.2S", **delivery},
    }


def _publish(system: System, prefix: str, event_type: str, count: int) -> list[str]:
    ids = [f"{prefix}-{number}" for number in range(count)]
    for event_id in ids:
        assert system.publish_binary(event_id, SOURCE, event_type).status_code == 204
    return ids


def _at(sink: SinkServer, path: str) -> Counter[str]:
    return Counter(d.event_id for d in sink.sink.received() if d.path.endswith(f"/{path}"))


def _replay(system: System, name: str, body: Any) -> requests.Response:
    return requests.post(
        f"{system.manager_url}/subscriptions/default/{name}/replay", json=body, timeout=10
    )


def _finished(system: System, operation: dict[str, Any]) -> dict[str, Any]:
    url = f"{system.manager_url}/operations/{operation['id']}"
    shown: dict[str, Any] = {}

    def done() -> bool:
        shown.update(requests.get(url, timeout=5).json())
        return shown["state"] != "running"

    wait_until(done, 60, f"{operation['id']} to finish", interval=0.2)
    return shown


def test_a_subscription_replays_the_last_minutes_events_to_its_current_sink(
    system: System, sink: SinkServer
) -> None:
    """The replay reaches this subscription only (another of the same type gets nothing
    twice), at the sink it has now, and not an event that only shares its subject."""
    system.subscribe("replayed", _spec(sink, "before", "order.created.v1"))
    system.subscribe("bystander", _spec(sink, "bystander", "order.created.v1"))
    ids = _publish(system, "replayed", "order.created.v1", 20)
    # Source "fau.lts" shares the subject kyma.faults.order.created.v1, not the subscription.
    assert system.publish_binary("stranger", "fau.lts", "order.created.v1").status_code == 204
    wait_until(lambda: len(_at(sink, "before")) == 20, 20, "the live deliveries")
    wait_until(lambda: len(_at(sink, "bystander")) == 20, 20, "the bystander's deliveries")
    system.subscribe("replayed", _spec(sink, "now", "order.created.v1"))

    answer = _replay(system, "replayed", {"since": "10m"})
    assert answer.status_code == 202, answer.text
    operation = _finished(system, answer.json()["operation"])

    replayed, bystander = _at(sink, "now"), _at(sink, "bystander")
    sent, delivered = len(ids), len(set(ids) & replayed.keys())
    duplicates = sum(count - 1 for count in replayed.values())
    print(f"replay: sent {sent} | delivered again {delivered} | duplicates {duplicates}")
    assert set(replayed) == set(ids)  # lost: none; the stranger is not replayed
    assert duplicates == 0
    assert bystander == Counter(ids)  # each once, live: the replay is not its
    assert _at(sink, "before") == Counter(ids)  # the old sink gets nothing more
    assert (operation["state"], operation["done"], operation["total"]) == ("done", 20, 20)
    assert operation["expired"] == 0


def test_a_new_subscription_starts_from_a_past_time_with_nothing_lost_at_the_seam(
    system: System, sink: SinkServer
) -> None:
    """Events published before the subscription existed (no consumer then: the event stream
    kept none of them) arrive, and so does every event published while its consumers are
    created and after."""
    load = Load(system.proxy_url, "seam", rate=100, threads=2, event_type="order.shipped.v1")
    before = _publish(system, "past", "order.shipped.v1", 10)
    load.start()
    time.sleep(1)
    system.subscribe("latecomer", _spec(sink, "latecomer", "order.shipped.v1", startFrom="10m"))
    time.sleep(2)
    load.stop()

    def arrived() -> bool:
        received = _at(sink, "latecomer").keys()
        return received >= set(before) and received >= load.snapshot()[1]

    wait_until(arrived, 30, "every event at the late subscription's sink")
    # Only this subscription's deliveries count (others share the recording sink).
    latecomer = RecordingSink()
    latecomer.deliveries = [d for d in sink.sink.received() if d.path.endswith("/latecomer")]
    counts = report(load, latecomer)
    print(f"startFrom seam: {counts} | published before the subscription {len(before)}")
    assert counts.lost == 0
    assert counts.accepted > 100
    assert set(before) <= _at(sink, "latecomer").keys()


def test_a_second_replay_while_one_runs_and_unknown_subscriptions_get_problems(
    system: System, sink: SinkServer
) -> None:
    system.subscribe("slow", _spec(sink, "slow", "order.slowed.v1"))
    RELEASE.set()
    _publish(system, "slow", "order.slowed.v1", 3)
    wait_until(lambda: len(_at(sink, "slow")) == 3, 20, "the live deliveries")
    RELEASE.clear()  # the replay's deliveries wait at the sink
    first = _replay(system, "slow", {"sequence": 1})
    assert first.status_code == 202, first.text

    second = _replay(system, "slow", {"since": "1h"})
    unknown = _replay(system, "nobody", {"since": "1h"})
    bad = _replay(system, "slow", {"since": "yesterday"})
    RELEASE.set()
    operation = _finished(system, first.json()["operation"])

    assert second.status_code == 409
    assert first.json()["operation"]["id"] in second.json()["detail"]
    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("no subscription default/nobody")
    assert bad.status_code == 400
    assert bad.json()["field"] == "since"
    assert (operation["state"], operation["done"]) == ("done", 3)


def test_a_replay_from_before_what_retention_kept_counts_what_expired(
    system: System, sink: SinkServer
) -> None:
    """Retention removes the oldest archived events (EVENT_ARCHIVE_MAX_AGE, _MAX_BYTES) by
    moving the archive's first sequence on; a purge up to a sequence does exactly that, at
    once, where the age limit would take a test minutes."""
    system.subscribe("expiring", _spec(sink, "expiring", "order.expired.v1"))
    ids = _publish(system, "expiring", "order.expired.v1", 6)
    wait_until(lambda: len(_at(sink, "expiring")) == 6, 20, "the live deliveries")
    kept_from = _purge_archive_before_the_last(system, 3)

    answer = _replay(system, "expiring", {"since": "1h"})
    assert answer.status_code == 202, answer.text
    operation = _finished(system, answer.json()["operation"])
    metrics = requests.get(f"{system.manager_url}/metrics", timeout=5).text

    expected = kept_from - 1  # every event retention removed: JetStream keeps no subjects
    assert operation["expired"] == expected
    assert "expired from the archive" in operation["detail"]
    assert (
        'eventing_archive_expired_total{subscription_name="expiring",'
        f'subscription_namespace="default"}} {float(expected)}'
    ) in metrics
    assert operation["done"] == 3
    assert _at(sink, "expiring") == Counter(ids) + Counter(ids[3:])


def _purge_archive_before_the_last(system: System, keep: int) -> int:
    """Remove all but the last ``keep`` archived events; the archive's new first sequence."""

    async def purge() -> int:
        client = await nats.connect(system.nats_url)
        try:
            js = client.jetstream()
            published = (await js.stream_info("sap")).state.last_seq
            while (await js.stream_info("sap-archive")).state.last_seq < published:
                await asyncio.sleep(0.05)  # the archive copies a moment later
            await js.purge_stream("sap-archive", keep=keep)
            return int((await js.stream_info("sap-archive")).state.first_seq)
        finally:
            await client.close()

    return asyncio.run(purge())
