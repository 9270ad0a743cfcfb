"""The whole system reading Subscriptions from a real API server (SUBSCRIPTIONS_SOURCE=kubernetes).

Proxy, manager and a worker run as subprocesses against real NATS and Redis; Subscriptions are
applied to the session's kube-apiserver; what the manager did is read back from JetStream (the
consumers) and from the API server (status, finalizers).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import requests

from testing.kube import ControlPlane, Kube
from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import SinkServer
from testing.system import System

pytestmark = pytest.mark.integration

CRD = Path(__file__).resolve().parents[2] / "deploy" / "base" / "crd-subscriptions.yaml"
API_VERSION = "eventing.kyma-project.io/v1alpha2"
STREAM = "sap"


@pytest.fixture(scope="module")
def crd(kube_control_plane: ControlPlane) -> None:
    admin = Kube(kube_control_plane)
    admin.apply(CRD.read_text())
    admin.close()


@pytest.fixture
def system(
    crd: None,
    kube: Kube,
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> Iterator[System]:
    """The system reading the test's namespace, sink rule off (sinks are on loopback)."""
    running = System(
        nats_server, redis_server, tmp_path, **reading(kube, KUBE_SINK_RULE="off")
    ).start()
    yield running
    running.stop()


def reading(kube: Kube, **env: str) -> dict[str, str]:
    """The environment of processes that read Subscriptions from ``kube``'s namespace."""
    return {
        "SUBSCRIPTIONS_SOURCE": "kubernetes",
        "KUBECONFIG": str(kube.kubeconfig),
        "KUBE_NAMESPACES": kube.namespace,
        "SINK_ALLOW": "127.0.0.0/8,::1",  # the test's sinks are on loopback, refused by default
        **env,
    }


def subscription(name: str, sink: str, *types: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Subscription",
        "metadata": {"name": name},
        "spec": {"sink": sink, "source": "myapp", "types": list(types), **spec},
    }


def test_an_applied_subscription_gets_its_consumer_a_finalizer_and_kyma_status(
    system: System, kube: Kube, sink_server: SinkServer
) -> None:
    kube.apply(subscription("orders", sink_server.url, "order.created.v1"))

    stored = wait_ready(kube, "orders")

    status = stored["status"]
    assert status["types"] == [
        {"originalType": "order.created.v1", "cleanType": "order.created.v1"}
    ]
    consumer = status["backend"]["types"][0]["consumerName"]
    assert consumer_names(system) == [consumer]
    assert {(c["type"], c["status"], c["reason"]) for c in status["conditions"]} == {
        ("Subscription spec valid", "True", "Subscription spec has no validation errors"),
        ("Subscription active", "True", "NATS Subscription active"),
        ("Backlog within limit", "True", "Backlog within limit"),
        ("Sink allowed", "True", "Sink allowed by the egress policy"),
        ("Sink delivering", "True", "Sink accepts events"),
    }
    # A merge patch stores no nulls: no lastError, no failingSince yet.
    assert status["delivery"] == {"delivered": 0, "deadLettered": 0, "pending": 0, "retrying": 0}
    assert stored["metadata"]["finalizers"] == ["eventing.kyma-project.io"]
    # Defaults come from the CRD, as in Kyma.
    assert stored["spec"]["typeMatching"] == "standard"
    assert stored["spec"]["config"] == {"maxInFlightMessages": "10"}
    # A written status is not rewritten while nothing changes.
    version = stored["metadata"]["resourceVersion"]
    time.sleep(3)
    assert get(kube, "orders")["metadata"]["resourceVersion"] == version


def test_an_event_published_to_the_proxy_reaches_the_sink_of_a_kubernetes_subscription(
    system: System, kube: Kube, sink_server: SinkServer
) -> None:
    kube.apply(subscription("orders", sink_server.url, "order.created.v1"))
    wait_ready(kube, "orders")
    event_id = str(uuid.uuid4())

    # A prefixed type (sap.kyma.custom.myapp.…) reaches exact subscriptions only, as in Kyma.
    answer = system.publish_binary(event_id, "myapp", "order.created.v1")

    assert answer.status_code == 204, answer.text
    wait_until(lambda: event_id in sink_server.sink.ids(), 20, f"delivery\n{system.logs()}")
    listed = requests.get(f"{system.proxy_url}/myapp/v1/events/subscribed", timeout=10)
    assert listed.json() == {"eventsInfo": [{"name": "order.created", "version": "v1"}]}


def test_an_invalid_spec_is_reported_and_changes_nothing(
    system: System, kube: Kube, sink_server: SinkServer
) -> None:
    kube.apply(subscription("orders", sink_server.url, "order.created.v1"))
    consumer = wait_ready(kube, "orders")["status"]["backend"]["types"][0]["consumerName"]

    # Accepted by the CRD's schema (only shapes), refused by the manager's rules.
    kube.apply(subscription("orders", "not a url", "order"))

    stored = wait_until_value(
        lambda: condition(get(kube, "orders"), "Subscription spec valid"),
        lambda found: found is not None and found["status"] == "False",
        "the validation condition",
    )
    assert "spec.sink" in stored["message"] and "spec.types" in stored["message"]
    assert get(kube, "orders")["status"]["ready"] is False
    # The consumer of the last valid spec stays: a typo must not drop a backlog.
    assert consumer_names(system) == [consumer]


def test_changing_types_moves_the_consumers(
    system: System, kube: Kube, sink_server: SinkServer
) -> None:
    kube.apply(subscription("orders", sink_server.url, "order.created.v1"))
    before = set(consumer_names_when(system, 1))

    kube.apply(subscription("orders", sink_server.url, "order.created.v1", "order.paid.v1"))
    both = wait_ready(kube, "orders", types=2)
    assert set(consumer_names_when(system, 2)) >= before

    kube.apply(subscription("orders", sink_server.url, "order.paid.v1"))
    wait_ready(kube, "orders", types=1)
    after = consumer_names_when(system, 1)
    assert after == [both["status"]["backend"]["types"][1]["consumerName"]]
    assert not before & set(after)


def test_deleting_removes_the_consumers_then_the_object(
    system: System, kube: Kube, sink_server: SinkServer
) -> None:
    kube.apply(subscription("orders", sink_server.url, "order.created.v1"))
    kube.apply(subscription("payments", sink_server.url, "payment.failed.v1"))
    wait_ready(kube, "orders")
    payments = wait_ready(kube, "payments")["status"]["backend"]["types"][0]["consumerName"]
    assert len(consumer_names(system)) == 2

    kube.delete(API_VERSION, "Subscription", "orders")

    wait_until(
        lambda: not kube.exists(API_VERSION, "Subscription", "orders"),
        20,
        f"the finalizer released\n{system.manager.log()[-3000:]}",
    )
    assert consumer_names(system) == [payments]


def test_a_restarted_manager_catches_up_without_duplicate_consumers(
    system: System, kube: Kube, sink_server: SinkServer
) -> None:
    kube.apply(subscription("kept", sink_server.url, "kept.created.v1"))
    kube.apply(subscription("changed", sink_server.url, "changed.created.v1"))
    kube.apply(subscription("deleted", sink_server.url, "deleted.created.v1"))
    for name in ("kept", "changed", "deleted"):
        wait_ready(kube, name)
    kept = get(kube, "kept")["status"]["backend"]["types"][0]["consumerName"]

    system.manager.stop()
    kube.apply(subscription("changed", sink_server.url, "changed.updated.v1"))
    kube.delete(API_VERSION, "Subscription", "deleted")  # waits on the finalizer
    kube.apply(subscription("added", sink_server.url, "added.created.v1"))
    system.manager.start()

    wait_until(
        lambda: not kube.exists(API_VERSION, "Subscription", "deleted"),
        30,
        f"the deletion made while down\n{system.manager.log()[-3000:]}",
    )
    changed = wait_ready(kube, "changed", original="changed.updated.v1")
    added = wait_ready(kube, "added")
    expected = {
        kept,
        changed["status"]["backend"]["types"][0]["consumerName"],
        added["status"]["backend"]["types"][0]["consumerName"],
    }
    assert sorted(consumer_names_when(system, 3)) == sorted(expected)


def test_the_sink_rule_wants_an_existing_service_in_the_subscriptions_namespace(
    crd: None, kube: Kube, nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    system = System(nats_server, redis_server, tmp_path, **reading(kube)).start(workers=0)
    try:
        elsewhere = "http://display.other.svc.cluster.local/events"
        kube.apply(subscription("foreign", elsewhere, "order.created.v1"))
        local = f"http://display.{kube.namespace}.svc.cluster.local/events"
        kube.apply(subscription("local", local, "order.created.v1"))

        foreign = wait_until_value(
            lambda: condition(get(kube, "foreign"), "Subscription spec valid"),
            lambda found: found is not None and found["status"] == "False",
            "the sink rule condition",
        )
        missing = wait_until_value(
            lambda: condition(get(kube, "local"), "Subscription spec valid"),
            lambda found: found is not None and found["status"] == "False",
            "the missing Service condition",
        )
        assert "must be the subscription's namespace" in foreign["message"]
        assert f"service display.{kube.namespace} not found" in missing["message"]
        assert consumer_names(system) == []

        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "display"},
                "spec": {"ports": [{"port": 80}], "selector": {"app": "display"}},
            }
        )
        wait_ready(kube, "local")
        assert len(consumer_names(system)) == 1
    finally:
        system.stop()


# helpers


def get(kube: Kube, name: str) -> dict[str, Any]:
    return kube.get(API_VERSION, "Subscription", name, kube.namespace)


def condition(stored: dict[str, Any], kind: str) -> dict[str, Any] | None:
    conditions = (stored.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def wait_ready(
    kube: Kube, name: str, *, types: int = 1, original: str | None = None
) -> dict[str, Any]:
    """The object once its status says ready for ``types`` types (the first ``original``)."""

    def done(stored: dict[str, Any]) -> bool:
        status = stored.get("status") or {}
        found = status.get("types") or []
        return (
            status.get("ready") is True
            and len(found) == types
            and (original is None or found[0]["originalType"] == original)
        )

    return wait_until_value(lambda: get(kube, name), done, f"subscription {name} ready")


def wait_until_value(read: Any, good: Any, what: str, timeout: float = 30) -> Any:
    found: list[Any] = []

    def check() -> bool:
        found[:] = [read()]
        return bool(good(found[0]))

    wait_until(check, timeout, f"{what}; last seen: {found}")
    return found[0]


def consumer_names(system: System) -> list[str]:
    """The subscriptions' consumers (not the one the archive sources the stream with)."""

    async def read() -> list[str]:
        client = await nats.connect(servers=system.nats_url.split(","))
        try:
            infos = await client.jetstream().consumers_info(STREAM)
            return sorted(c.name for c in infos if (c.config.metadata or {}).get("managed-by"))
        except nats.js.errors.NotFoundError:
            return []
        finally:
            await client.close()

    return asyncio.run(read())


def consumer_names_when(system: System, count: int) -> list[str]:
    """The consumers once there are ``count`` of them (reconciling is asynchronous)."""
    return wait_until_value(  # type: ignore[no-any-return]
        lambda: consumer_names(system), lambda names: len(names) == count, f"{count} consumers"
    )
