"""The delivery ledger with every process real: GET /events, the tail, pending, the ledger off.

One system serves the module (proxy, manager, worker as subprocesses against real NATS and
Redis); each test subscribes its own subscription and type, so none sees another's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import requests
from nats.js.errors import NotFoundError
from werkzeug import Request

from testing.servers import wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import System, whole_system

pytestmark = pytest.mark.integration

QUICK_RETRIES = {"retry": 20, "backoffPolicy": "linear", "backoffDelay": "PT0.3S"}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with whole_system(tmp_path_factory.mktemp("history")) as running:
        yield running


@pytest.fixture(scope="module")
def sink() -> Iterator[SinkServer]:
    server = SinkServer(RecordingSink()).start()
    yield server
    server.stop()


def _events(system: System, source: str, event_id: str) -> requests.Response:
    params = {"source": source, "id": event_id}
    return requests.get(f"{system.manager_url}/events", params=params, timeout=10)


def _at(system: System, source: str, event_id: str, subscription: str) -> dict[str, Any] | None:
    answer = _events(system, source, event_id)
    if answer.status_code != 200:
        return None
    found: dict[str, Any] | None = answer.json()["subscriptions"].get(subscription)
    return found


class Tail:
    """``GET .../tail`` read on a thread over a socket of its own, so the test can hang up at
    once (``requests`` closes a streamed answer only after its blocked read times out)."""

    def __init__(self, system: System, subscription: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self._socket = socket.create_connection(("127.0.0.1", system.manager_port), timeout=30)
        path = f"/subscriptions/{subscription}/tail"
        self._socket.sendall(f"GET {path} HTTP/1.1\r\nHost: manager\r\n\r\n".encode())
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._receive()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"Content-Type: application/x-ndjson" in head, head
        assert b"Transfer-Encoding: chunked" in head, head
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _receive(self) -> bytes:
        data = self._socket.recv(65536)
        if not data:
            raise ConnectionError("the manager ended the tail")
        return data

    def _read(self) -> None:
        body = b""
        try:
            while True:
                while b"\r\n" not in self._buffer:
                    self._buffer += self._receive()
                size_line, rest = self._buffer.split(b"\r\n", 1)
                size = int(size_line, 16)
                while len(rest) < size + 2:
                    rest += self._receive()
                body, self._buffer = body + rest[:size], rest[size + 2 :]
                *lines, body = body.split(b"\n")
                self.lines += [json.loads(line) for line in lines]
                if size == 0:
                    return
        except OSError:
            return  # hung up by the test, or by the manager

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)


def test_an_event_to_a_sink_that_fails_then_recovers_is_visible_attempt_by_attempt(
    system: System, sink: SinkServer
) -> None:
    recovered = threading.Event()

    def answer(request: Request) -> int:
        if request.headers.get("ce-id") == "journey-1" and not recovered.is_set():
            return 503
        return 204

    sink.sink.answer = answer
    system.subscribe(
        "flaky",
        {"sink": sink.url, "source": "shop", "types": ["journey.v1"], "delivery": QUICK_RETRIES},
    )
    # Only the tail's reading is looked for. The manager's own follower of the ledger
    # (manager.health) is an ordered consumer that may not exist yet here (it was counted as
    # missing, then found, on a loaded machine), and that nats-py replaces under another name
    # whenever it misses two heartbeats.
    readings = asyncio.run(_readings(system.nats_url, "sap-ledger"))
    tail = Tail(system, "default/flaky")
    try:
        assert system.publish_binary("journey-1", "shop", "journey.v1").status_code == 204

        def retried_twice() -> bool:
            shown = _at(system, "shop", "journey-1", "default/flaky")
            return shown is not None and len(shown["attempts"]) >= 2

        wait_until(retried_twice, 20, f"two failed attempts in the ledger\n{system.logs()}")
        retrying = _at(system, "shop", "journey-1", "default/flaky")
        assert retrying is not None
        assert (retrying["outcome"], retrying["reason"]) == ("retrying", "sink answered 503")
        recovered.set()

        def delivered() -> bool:
            shown = _at(system, "shop", "journey-1", "default/flaky")
            return shown is not None and shown["outcome"] == "delivered"

        wait_until(delivered, 20, f"the delivery in the ledger\n{system.logs()}")
        answer_ = _events(system, "shop", "journey-1").json()
        assert (answer_["source"], answer_["id"], answer_["type"]) == (
            "shop",
            "journey-1",
            "journey.v1",
        )
        shown = answer_["subscriptions"]["default/flaky"]
        attempts = shown["attempts"]
        statuses = [attempt["status"] for attempt in attempts]
        assert statuses == [503] * (len(attempts) - 1) + [204]
        assert [attempt["number"] for attempt in attempts] == list(range(1, len(attempts) + 1))
        assert all(attempt["kind"] == "answered" for attempt in attempts)
        assert all(attempt["error"] == "sink answered 503" for attempt in attempts[:-1])
        assert "error" not in attempts[-1]
        assert shown["sequence"] >= 1

        def tailed() -> bool:
            return any(line["outcome"] == "delivered" for line in tail.lines)

        wait_until(tailed, 10, "the tail to show the delivery")
        seen = [(line["outcome"], line["attempt"]["number"]) for line in tail.lines]
        assert seen == [("retrying", n) for n in range(1, len(attempts))] + [
            ("delivered", len(attempts))
        ]
        assert all(line["id"] == "journey-1" for line in tail.lines)
    finally:
        tail.close()
    wait_until(
        lambda: asyncio.run(_readings(system.nats_url, "sap-ledger")) == readings,
        10,
        "the tail's consumer to go with its client",
    )


def test_a_subscription_whose_sink_holds_the_event_shows_it_pending(
    system: System, sink: SinkServer
) -> None:
    release = threading.Event()

    def answer(request: Request) -> int:
        if request.path == "/events/slow":
            release.wait(20)
        return 204

    sink.sink.answer = answer
    spec = {"source": "shop", "types": ["held.v1"]}
    system.subscribe("prompt", {**spec, "sink": sink.url})
    system.subscribe("slow", {**spec, "sink": sink.url + "/slow"})
    try:
        assert system.publish_binary("held-1", "shop", "held.v1").status_code == 204

        def prompt_delivered() -> bool:
            shown = _at(system, "shop", "held-1", "default/prompt")
            return shown is not None and shown["outcome"] == "delivered"

        wait_until(prompt_delivered, 20, f"the prompt delivery\n{system.logs()}")
        answer_ = _events(system, "shop", "held-1").json()
        slow = answer_["subscriptions"]["default/slow"]
        assert (slow["outcome"], slow["attempts"]) == ("pending", [])
        assert slow["sequence"] == answer_["subscriptions"]["default/prompt"]["sequence"]
    finally:
        release.set()

    def slow_delivered() -> bool:
        shown = _at(system, "shop", "held-1", "default/slow")
        return shown is not None and shown["outcome"] == "delivered"

    wait_until(slow_delivered, 20, f"the slow delivery\n{system.logs()}")


def test_bad_questions_get_problems(system: System) -> None:
    base = system.manager_url
    missing = requests.get(f"{base}/events", params={"id": "x"}, timeout=10)
    assert missing.status_code == 400
    assert missing.json()["field"] == "source"
    unknown = _events(system, "shop", "never-published")
    assert unknown.status_code == 404
    assert "never-published" in unknown.json()["detail"]
    no_subscription = requests.get(f"{base}/subscriptions/default/nobody/tail", timeout=10)
    assert no_subscription.status_code == 404
    system.subscribe("quiet", {"sink": "http://127.0.0.1:9/", "source": "shop", "types": ["q.v1"]})
    bad_since = requests.get(
        f"{base}/subscriptions/default/quiet/tail", params={"since": "yesterday"}, timeout=10
    )
    assert bad_since.status_code == 400
    assert bad_since.json()["field"] == "since"


def test_with_the_ledger_off_nothing_is_written(tmp_path: Path, sink_server: SinkServer) -> None:
    with whole_system(tmp_path, LEDGER_MAX_AGE="0") as off:
        off.subscribe("orders", {"sink": sink_server.url, "source": "shop", "types": ["o.v1"]})
        assert off.publish_binary("off-1", "shop", "o.v1").status_code == 204
        wait_until(lambda: "off-1" in sink_server.sink.ids(), 20, f"delivery\n{off.logs()}")
        answer = _events(off, "shop", "off-1")
        assert answer.status_code == 409 and "LEDGER_MAX_AGE=0" in answer.json()["detail"]
        assert not asyncio.run(_has_stream(off.nats_url, "sap-ledger"))


def test_the_manager_stops_promptly_and_quietly_with_a_tail_open_and_a_replay_running(
    system: System,
) -> None:
    system.subscribe(
        "watched", {"sink": "http://127.0.0.1:9/", "source": "shop", "types": ["w.v1"]}
    )
    # A replay under way too: its one event cannot reach the sink, so it is still running.
    assert system.publish_binary("watched-1", "shop", "w.v1").status_code == 204
    replay = requests.post(
        f"{system.manager_url}/subscriptions/default/watched/replay", json={"since": "10m"}
    )
    assert replay.status_code == 202, replay.text
    operation = requests.get(
        f"{system.manager_url}/operations/{replay.json()['operation']['id']}", timeout=5
    ).json()
    assert operation["state"] == "running", operation
    tail = Tail(system, "default/watched")
    try:
        system.manager.stop(timeout=8)  # SIGTERM; SIGKILL only if it outlives 8 s
        assert system.manager.popen is not None and system.manager.popen.returncode == 0
    finally:
        tail.close()
    log = system.manager.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    # The manager and the workers both own the ledger stream, configured alike: whichever
    # connects second finds nothing to update.
    assert not [p.name for p in [system.manager, *system.workers] if "updated stream" in p.log()]


async def _readings(url: str, stream: str) -> set[str]:
    """The names of the stream's consumers that are readings of eventing.nats.stored (a tail's,
    a listing's), not ordered consumers."""
    nc = await nats.connect(url)
    try:
        consumers = await nc.jetstream().consumers_info(stream)
    finally:
        await nc.close()
    return {c.name for c in consumers if c.name.startswith("eventing-reader-")}


async def _has_stream(url: str, name: str) -> bool:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().stream_info(name)
    except NotFoundError:
        return False
    finally:
        await nc.close()
    return True
