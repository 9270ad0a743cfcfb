"""The egress policy, end to end: sinks at link-local or metadata addresses get nothing, and a
refused address tells nothing about its ports.

The manager shows a refused sink in the subscription's status and pulls nothing for it; the
worker checks the address it connects to, which is what holds when the manager's view and the
worker's differ (a name resolved anew, another policy).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from testing.servers import NatsServer, RedisServer, free_port, wait_until
from testing.sink import SinkServer
from testing.system import System
from tests.integration.conftest import read_stream

pytestmark = pytest.mark.integration


def write_subscription(system: System, name: str, spec: dict[str, Any]) -> None:
    """A manifest, written without waiting for it to be ready (a refused one never is)."""
    document = {
        "apiVersion": "eventing.kyma-project.io/v1alpha2",
        "kind": "Subscription",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    path = system.subscriptions / f"default-{name}.yaml"
    path.with_suffix(".tmp").write_text(yaml.safe_dump(document))
    path.with_suffix(".tmp").rename(path)


def sink_condition(system: System, name: str) -> dict[str, str] | None:
    try:
        item = system.status("default", name)
    except requests.ConnectionError:
        return None
    if item is None or item["status"]["ready"]:
        return None
    conditions = {c["type"]: c for c in item["status"]["conditions"]}
    return conditions.get("Sink allowed")


@pytest.mark.parametrize(
    "sink",
    ["http://169.254.169.254/latest/meta-data/", "http://169.254.10.1:8080/", "http://[fe80::1]/"],
)
def test_a_link_local_sink_is_not_ready_and_says_why(system: System, sink: str) -> None:
    write_subscription(system, "metadata", {"sink": sink, "source": "shop", "types": ["a.b.v1"]})
    wait_until(
        lambda: sink_condition(system, "metadata") is not None,
        20,
        f"the subscription not ready because of its sink\n{system.logs()}",
    )
    condition = sink_condition(system, "metadata")
    assert condition is not None and condition["status"] == "False"
    assert "egress policy" in condition["message"] and "link-local" in condition["message"]

    assert system.publish_binary("waits", "shop", "a.b.v1").status_code == 204
    waiting = (  # labels as Prometheus shows them: sorted
        'eventing_manager_consumer_pending{event_type="a.b.v1",subscription_name="metadata",'
        'subscription_namespace="default"} 1.0'
    )
    wait_until(
        lambda: waiting in manager_metrics(system), 20, f"the event waiting\n{system.logs()}"
    )
    assert "eventing_manager_jobs_enqueued_total{" not in manager_metrics(system)


def manager_metrics(system: System) -> str:
    return requests.get(f"{system.manager_url}/metrics", timeout=5).text


@pytest.fixture
def denying_worker(
    nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path
) -> Iterator[System]:
    """A system whose worker refuses loopback (SINK_DENY) while its manager allows it."""
    system = System(nats_server, redis_server, tmp_path).start(workers=0)
    worker = system.add_worker(SINK_DENY="127.0.0.0/8,::1")
    wait_until(lambda: "ready for action" in worker.log(), 30, f"a worker\n{worker.log()}")
    yield system
    system.stop()


def test_a_refused_address_gets_no_request_and_its_ports_look_alike(
    denying_worker: System, sink_server: SinkServer, nats_server: NatsServer
) -> None:
    system = denying_worker
    closed = f"http://127.0.0.1:{free_port()}/"
    system.subscribe("open", {"sink": sink_server.url, "source": "shop", "types": ["a.b.v1"]})
    system.subscribe("closed", {"sink": closed, "source": "shop", "types": ["a.b.v1"]})
    assert system.publish_binary("probe", "shop", "a.b.v1").status_code == 204
    wait_until(
        lambda: (
            len(read_stream(nats_server, "sap-dlq")) == 2 or bool(sink_server.sink.received(None))
        ),
        20,
        f"two dead letters\n{system.logs()}",
    )
    assert sink_server.sink.received(None) == []
    letters = {
        letter.headers["Eventing-Dead-Letter-Subscription"]: letter
        for letter in read_stream(nats_server, "sap-dlq")
    }
    told = {
        key: {
            name: value
            for name, value in letter.headers.items()
            if name.startswith("Eventing-Dead-Letter-")
            and not name.endswith(("-Sink", "-Subscription"))
        }
        for key, letter in letters.items()
    }
    assert told["default/open"] == told["default/closed"]
    assert "egress policy" in told["default/open"]["Eventing-Dead-Letter-Reason"]
    assert "SINK_DENY" in told["default/open"]["Eventing-Dead-Letter-Reason"]
    assert told["default/open"]["Eventing-Dead-Letter-Status"] == ""
    assert told["default/open"]["Eventing-Dead-Letter-Attempts"] == "1"
    assert json.loads(letters["default/open"].payload)["id"] == "probe"
