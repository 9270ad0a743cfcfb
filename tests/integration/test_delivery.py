"""End to end with every process real: publish over HTTP, receive at a sink."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from werkzeug.wrappers import Request

from testing.servers import NatsServer, RabbitServer, RedisServer, free_port, wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import Process, System, script
from tests.integration.conftest import read_stream

pytestmark = pytest.mark.integration

TIME = "2020-04-02T21:37:00Z"
EVENTMESH_NAMESPACE = "/default/sap.kyma/tunas-develop"

# Kyma's e2e fixtures (kyma-eventing.md §8.1): exact subscriptions have source "".
SUBSCRIPTIONS = {
    "exact-commerce": ("exact", "", ["sap.kyma.custom.commerce.order.created.v1"]),
    "exact-app": (
        "exact",
        "",
        [
            "sap.kyma.custom.app.event.created.v1",
            "sap.kyma.custom.app.event.updated.v1",
            "sap.kyma.custom.app.event.deleted.v1",
        ],
    ),
    "noapp": ("standard", "noapp", ["order.modified.v1"]),
    "test-app": ("standard", "test-app", ["Order-$.third.R-e-c-e-i-v-e-d.v1"]),
    "test-evnt": (
        "standard",
        "test-evnt",
        ["or-der.crea-ted.one.two.three.four.v4", "order.testing.v1"],
    ),
    "test-evnt-2": (
        "standard",
        "test-evnt",
        [
            "New.Some-Other.Order-äöüÄÖÜβ.Final.C-r-e-a-t-e-d.v1",
            "DocuSing_BO.Account_DocuSign.Updated.v1",
        ],
    ),
}


def _header(delivery_headers: dict[str, str], name: str) -> str:
    return unquote(delivery_headers.get(name, ""))


def test_kyma_e2e_matrix(system: System, sink_server: SinkServer) -> None:
    for name, (matching, source, types) in SUBSCRIPTIONS.items():
        spec = {
            "sink": f"{sink_server.url}/{name}",
            "source": source,
            "types": types,
            "typeMatching": matching,
        }
        system.subscribe(name, spec)

    expected: dict[str, tuple[str, str, bytes, str]] = {}  # id -> (path, type, data bytes, source)
    for name, (matching, source, types) in SUBSCRIPTIONS.items():
        for index, event_type in enumerate(types):
            data = f"data of {name} {index}"
            json_data = json.dumps(data).encode()
            if matching == "exact":
                app, event_name, version = (
                    event_type.split(".")[3],
                    ".".join(event_type.split(".")[4:-1]),
                    event_type.split(".")[-1],
                )
                legacy_app, ce_source = app, EVENTMESH_NAMESPACE
            else:
                event_name, _, version = event_type.rpartition(".")
                legacy_app, ce_source = source, source
            legacy = system.publish_legacy(
                legacy_app,
                {
                    "event-type": event_name,
                    "event-type-version": version,
                    "event-time": TIME,
                    "data": data,
                },
            )
            assert legacy.status_code == 200, legacy.text
            legacy_id = legacy.json()["event-id"]
            expected[legacy_id] = (f"/events/{name}", event_type, json_data, legacy_app)

            structured_id = f"{name}-{index}-structured"
            response = system.publish_structured(
                {
                    "id": structured_id,
                    "source": ce_source,
                    "type": event_type,
                    "time": TIME,
                    "datacontenttype": "application/json",
                    "data": data,
                }
            )
            assert response.status_code == 204, response.text
            expected[structured_id] = (f"/events/{name}", event_type, json_data, ce_source)

            binary_id = f"{name}-{index}-binary"
            response = system.publish_binary(binary_id, ce_source, event_type, json_data)
            assert response.status_code == 204, response.text
            expected[binary_id] = (f"/events/{name}", event_type, json_data, ce_source)

    sink = sink_server.sink
    wait_until(
        lambda: set(expected) <= set(sink.ids()),
        30,
        f"all {len(expected)} events at the sink\n{system.logs()}",
    )
    for delivery in sink.received():
        path, event_type, data, source = expected[delivery.event_id]
        assert delivery.path == path
        assert _header(delivery.headers, "ce-type") == event_type
        assert _header(delivery.headers, "ce-originaltype")
        assert _header(delivery.headers, "ce-source") == source
        assert delivery.body == data
        assert delivery.headers["content-type"] == "application/json"
    assert len(sink.received()) == len(expected), (
        "no event reached a subscription it does not match"
    )


def _subscription(sink_url: str, **spec: object) -> dict[str, object]:
    return {"sink": sink_url, "source": "shop", "types": ["order.created.v1"], **spec}


def test_failing_sink_is_retried_until_it_accepts(system: System, sink_server: SinkServer) -> None:
    answers = iter([500, 500, 500])
    sink_server.sink.answer = lambda request: next(answers, 200)
    system.subscribe("orders", _subscription(sink_server.url, delivery={"backoffDelay": "PT0.2S"}))
    assert system.publish_binary("retry-me", "shop", "order.created.v1").status_code == 204
    wait_until(lambda: "retry-me" in sink_server.sink.ids(200), 20, "the fourth attempt to succeed")
    assert [d.status for d in sink_server.sink.received(None)] == [500, 500, 500, 200]

    def counted() -> dict[str, float]:
        return {
            code: float(value)
            for code, value in re.findall(
                r"eventing_ec_nats_delivery_per_subscription_total"
                r'\{[^}]*response_code="(\d+)"[^}]*\} (\S+)',
                system.worker_metrics(),
            )
        }

    # The sink records a request before it answers, and the worker counts the answer once it
    # has it: the last attempt may not be counted yet when the sink shows it.
    wait_until(lambda: counted() == {"500": 3.0, "200": 1.0}, 10, "the four attempts counted")


def test_refused_event_is_dead_lettered_after_one_attempt(
    system: System, sink_server: SinkServer, nats_server: NatsServer
) -> None:
    sink_server.sink.answer = lambda request: 400
    system.subscribe("orders", _subscription(sink_server.url))
    assert system.publish_binary("poison", "shop", "order.created.v1").status_code == 204
    wait_until(
        lambda: len(read_stream(nats_server, "sap-dlq")) == 1, 20, f"a dead letter\n{system.logs()}"
    )
    [letter] = read_stream(nats_server, "sap-dlq")
    assert letter.headers["Eventing-Dead-Letter-Status"] == "400"
    assert letter.headers["Eventing-Dead-Letter-Attempts"] == "1"
    assert letter.headers["Eventing-Dead-Letter-Subscription"] == "default/orders"
    assert "refused" in letter.headers["Eventing-Dead-Letter-Reason"]
    assert json.loads(letter.payload)["id"] == "poison"
    assert len(sink_server.sink.received(None)) == 1


def test_sink_down_for_30_seconds_gets_the_event_when_back(system: System) -> None:
    sink = RecordingSink()
    server = SinkServer(sink).start()
    port = server.port
    system.subscribe(
        "orders",
        _subscription(
            server.url, delivery={"retry": 12, "backoffDelay": "PT1S", "timeout": "PT2S"}
        ),
    )
    server.stop()
    down_since = time.monotonic()
    assert system.publish_binary("patient", "shop", "order.created.v1").status_code == 204
    wait_until(lambda: time.monotonic() - down_since > 30, 40, "30 seconds")
    revived = SinkServer(sink, port=port).start()
    try:
        wait_until(
            lambda: "patient" in sink.ids(),
            90,
            f"delivery after the sink returned\n{system.logs()}",
        )
    finally:
        revived.stop()


def test_max_in_flight_one_delivers_one_at_a_time_in_order(
    system: System, sink_server: SinkServer
) -> None:
    def slow(request: Request) -> int:
        time.sleep(0.05)
        return 204

    sink_server.sink.answer = slow
    system.subscribe("ordered", _subscription(sink_server.url, config={"maxInFlightMessages": "1"}))
    ids = [f"ordered-{i:02d}" for i in range(20)]
    for event_id in ids:
        assert system.publish_binary(event_id, "shop", "order.created.v1").status_code == 204
    wait_until(lambda: len(sink_server.sink.ids()) >= 20, 30, "20 deliveries")
    assert sink_server.sink.most_in_flight == 1
    assert sink_server.sink.ids() == ids


def test_max_in_flight_twenty_delivers_concurrently(
    system: System, sink_server: SinkServer
) -> None:
    def slow(request: Request) -> int:
        time.sleep(0.3)
        return 204

    sink_server.sink.answer = slow
    system.subscribe(
        "parallel", _subscription(sink_server.url, config={"maxInFlightMessages": "20"})
    )
    for i in range(40):
        assert system.publish_binary(f"parallel-{i}", "shop", "order.created.v1").status_code == 204
    wait_until(lambda: len(set(sink_server.sink.ids())) >= 40, 30, "40 deliveries")
    assert 1 < sink_server.sink.most_in_flight <= 20


def test_subscription_changes_take_effect_while_running(
    system: System, sink_server: SinkServer
) -> None:
    sink = sink_server.sink
    system.subscribe("live", _subscription(f"{sink_server.url}/a"))
    assert system.publish_binary("one", "shop", "order.created.v1").status_code == 204
    wait_until(lambda: "one" in sink.ids(), 20, "first event")

    system.subscribe(
        "live",
        _subscription(
            f"{sink_server.url}/b",
            types=["order.created.v1", "order.paid.v1"],
            config={"maxInFlightMessages": "2"},
            delivery={"retry": 1},
        ),
    )
    assert system.publish_binary("two", "shop", "order.paid.v1").status_code == 204
    assert system.publish_binary("three", "shop", "order.created.v1").status_code == 204
    wait_until(lambda: {"two", "three"} <= set(sink.ids()), 20, "events after the change")
    paths = {d.event_id: d.path for d in sink.received()}
    assert paths == {"one": "/events/a", "two": "/events/b", "three": "/events/b"}
    status = system.status("default", "live")
    assert status is not None and [t["originalType"] for t in status["status"]["types"]] == [
        "order.created.v1",
        "order.paid.v1",
    ]

    system.subscribe("live", _subscription(f"{sink_server.url}/b", types=["order.paid.v1"]))
    assert system.publish_binary("four", "shop", "order.created.v1").status_code == 204
    assert system.publish_binary("five", "shop", "order.paid.v1").status_code == 204
    wait_until(lambda: "five" in sink.ids(), 20, "event of the remaining type")

    system.unsubscribe("live")
    assert system.publish_binary("six", "shop", "order.paid.v1").status_code == 204
    time.sleep(2)  # give a wrongly kept consumer the chance to deliver
    assert "four" not in sink.ids() and "six" not in sink.ids()


def test_per_subscription_delivery_policy_gives_the_documented_schedule(
    system: System, sink_server: SinkServer
) -> None:
    sink_server.sink.answer = lambda request: 503
    policy = {"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT1S"}
    system.subscribe("scheduled", _subscription(sink_server.url, delivery=policy))
    assert system.publish_binary("timed", "shop", "order.created.v1").status_code == 204
    wait_until(lambda: len(sink_server.sink.received(None)) == 4, 20, "four attempts")
    times = [d.at for d in sink_server.sink.received(None)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # linear PT1S: 1 s, 2 s, 3 s between attempts, ±10 % jitter, plus request overhead
    for gap, expected in zip(gaps, [1.0, 2.0, 3.0], strict=True):
        assert expected * 0.9 - 0.05 <= gap <= expected * 1.1 + 0.5, gaps
    time.sleep(1)
    assert len(sink_server.sink.received(None)) == 4


def test_invalid_manifest_is_reported_and_changes_nothing(
    system: System, sink_server: SinkServer
) -> None:
    system.subscribe("good", _subscription(sink_server.url))
    (system.subscriptions / "bad.yaml").write_text(
        "apiVersion: eventing.kyma-project.io/v1alpha2\nkind: Subscription\nmetadata: {name: bad}\n"
        "spec: {sink: 'not a url', source: shop, types: [x]}\n"
    )
    (system.subscriptions / "broken.yaml").write_text("{{{ not yaml")
    wait_until(
        lambda: system.status("default", "bad") is not None,
        10,
        "status of the invalid subscription",
    )
    bad = system.status("default", "bad")
    assert bad is not None and bad["status"]["ready"] is False
    [condition] = bad["status"]["conditions"]
    assert condition["type"] == "Subscription spec valid" and condition["status"] == "False"
    assert "spec.sink" in condition["message"] and "spec.types" in condition["message"]
    assert system.publish_binary("still", "shop", "order.created.v1").status_code == 204
    wait_until(
        lambda: "still" in sink_server.sink.ids(), 20, "the valid subscription keeps working"
    )
    assert system.manager.running


def test_two_workers_share_deliveries_and_stopping_one_loses_nothing(
    system: System, sink_server: SinkServer
) -> None:
    second = system.add_worker()
    wait_until(lambda: "ready for action" in second.log(), 30, "the second worker")

    def slow(request: Request) -> int:
        time.sleep(0.02)
        return 204

    sink_server.sink.answer = slow
    system.subscribe("shared", _subscription(sink_server.url, config={"maxInFlightMessages": "16"}))
    ids = [f"shared-{i}" for i in range(200)]
    for index, event_id in enumerate(ids):
        assert system.publish_binary(event_id, "shop", "order.created.v1").status_code == 204
        if index == 100:
            system.workers[0].stop()
    wait_until(
        lambda: set(ids) <= set(sink_server.sink.ids()), 90, f"all 200 events\n{system.logs()}"
    )
    assert "delivered default/shared" in second.log()


def test_two_managers_deliver_each_event_once(system: System, sink_server: SinkServer) -> None:
    second = Process(
        "manager2",
        [script("eventing-manager")],
        {**system.env, "MANAGER_PORT": str(free_port())},
        system.workdir,
    )
    second.start()
    try:
        system.subscribe(
            "both", _subscription(sink_server.url, config={"maxInFlightMessages": "50"})
        )
        wait_until(
            lambda: (
                "created consumer" in system.manager.log() or "created consumer" in second.log()
            ),
            10,
            "a consumer",
        )
        ids = [f"once-{i}" for i in range(100)]
        for event_id in ids:
            assert system.publish_binary(event_id, "shop", "order.created.v1").status_code == 204
        wait_until(lambda: set(ids) <= set(sink_server.sink.ids()), 30, "all events")
        time.sleep(1)
        assert sorted(sink_server.sink.ids()) == sorted(ids), "an event was delivered twice"
        assert second.running and system.manager.running
    finally:
        second.stop()


def test_processes_wait_for_nats_and_redis_at_start(
    nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path, sink_server: SinkServer
) -> None:
    nats_server.stop()
    redis_server.stop()
    system = System(nats_server, redis_server, tmp_path)
    system.proxy.start()
    system.manager.start()
    worker = system.add_worker()
    try:
        time.sleep(3)
        assert system.proxy.running and system.manager.running and worker.running
        nats_server.start()
        redis_server.start()
        wait_until(lambda: "ready for action" in worker.log(), 30, "the worker")
        system.subscribe("late", _subscription(sink_server.url))
        assert system.publish_binary("late-1", "shop", "order.created.v1").status_code == 204
        wait_until(lambda: "late-1" in sink_server.sink.ids(), 30, f"delivery\n{system.logs()}")
    finally:
        system.stop()


def test_rabbitmq_as_the_broker(
    nats_server: NatsServer,
    redis_server: RedisServer,
    rabbitmq_server: RabbitServer,
    tmp_path: Path,
    sink_server: SinkServer,
) -> None:
    system = System(nats_server, redis_server, tmp_path, BROKER_URL=rabbitmq_server.url).start()
    try:
        system.subscribe("rabbit", _subscription(sink_server.url))
        ids = [f"rabbit-{i}" for i in range(20)]
        for event_id in ids:
            assert system.publish_binary(event_id, "shop", "order.created.v1").status_code == 204
        wait_until(
            lambda: set(ids) <= set(sink_server.sink.ids()),
            30,
            f"delivery through RabbitMQ\n{system.logs()}",
        )
    finally:
        system.stop()


def test_fan_out_to_ten_subscriptions_of_one_type(system: System, sink_server: SinkServer) -> None:
    for i in range(10):
        system.subscribe(f"fan-{i}", _subscription(f"{sink_server.url}/{i}"))
    for i in range(5):
        assert (
            system.publish_binary(f"fan-event-{i}", "shop", "order.created.v1").status_code == 204
        )
    wait_until(
        lambda: len(sink_server.sink.received()) >= 50, 30, f"50 deliveries\n{system.logs()}"
    )
    paths = {(d.path, d.event_id) for d in sink_server.sink.received()}
    assert paths == {(f"/events/{i}", f"fan-event-{e}") for i in range(10) for e in range(5)}
