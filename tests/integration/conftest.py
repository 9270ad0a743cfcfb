"""The proxy app wired to a real nats-server, and a way to read back what JetStream stored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import requests
from flask import Flask
from nats.js.errors import NotFoundError

from eventing.settings import Settings
from proxy import create_app
from proxy.publisher import JetStreamPublisher
from testing.servers import NatsServer, RedisServer, free_port, wait_until
from testing.system import System, stop_group
from tests.conftest import stop_showing_logs

pytestmark = pytest.mark.integration

STREAM = "events"
_ESTABLISHED = "01"  #: a connection's state in /proc/net/tcp
PROXY = Path(sysconfig.get_path("scripts")) / "eventing-proxy"


def proxy_command() -> list[str]:
    if PROXY.exists():
        return [str(PROXY)]
    found = shutil.which("eventing-proxy")
    if found is None:
        pytest.fail("eventing-proxy is not installed: pip install -e .")
    return [found]


@contextlib.contextmanager
def served_proxy(log: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``eventing-proxy`` (granian) with ``env`` on a free port, its output in ``log``; its URL
    and process once it answers ``/healthz``. ``env`` has at least ``NATS_URL``."""
    port = free_port()
    full = {
        **os.environ,
        "INGRESS_PORT": str(port),
        "JS_STREAM_NAME": STREAM,
        "JS_STREAM_RETENTION_POLICY": "limits",
        **env,
    }
    with log.open("wb") as out:
        # A session of its own, so teardown can end granian's worker processes too.
        process = subprocess.Popen(
            proxy_command(), env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        # Granian listens before its workers serve: a request then waits for one (0.24 s
        # measured beside two CPU hogs), and one past the timeout is a Timeout: ask again.
        try:
            return requests.get(f"{url}/healthz", timeout=0.5).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False

    try:
        wait_until(healthy, 20, "the proxy to answer /healthz")
        yield url, process
    finally:
        # SIGTERM first: the launcher then removes its metrics folder, which SIGKILL left in /tmp
        stop_group(process)


@dataclass(frozen=True)
class StoredMessage:
    subject: str
    headers: dict[str, str]
    payload: bytes


def settings_for(server: NatsServer, **env: str) -> Settings:
    """Settings pointing at ``server``; limits retention so tests can read every message back."""
    base = {
        "NATS_URL": server.url,
        "JS_STREAM_NAME": STREAM,
        "JS_STREAM_RETENTION_POLICY": "limits",
        "REQUEST_TIMEOUT": "2s",
        "RECONNECT_WAIT": "100ms",
        "NATS_CONNECT_TIMEOUT": "1s",
    }
    return Settings.from_environ({**base, **env})


def late_beside_a_held_batch(
    server: NatsServer, post: Callable[..., tuple[int, str | None]]
) -> tuple[int, str | None]:
    """With ``server`` stopped, ``post`` the batch held-1, held-2, then late-1, late-2 while the
    first waits for its PubAcks; the late batch's status and Retry-After. The held batch must
    be stored (204) once ``server`` goes on."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, "held-1", "held-2")
            # Its publishes sent (and so its events in flight) once they wait unread at the
            # stopped server; half a second's sleep only made that likely on a busy machine.
            wait_until(
                lambda: _unread_bytes(server.port) > 0, 10, "the held batch at the stopped server"
            )
            late = post("late-1", "late-2")
            server.process.send_signal(signal.SIGCONT)
            assert held.result(10) == (204, None)
    finally:
        server.process.send_signal(signal.SIGCONT)
    return late


def _unread_bytes(port: int) -> int:
    """What the loopback connections to ``port`` received that the server has not read yet (the
    receive queues of /proc/net/tcp)."""
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == _ESTABLISHED and int(local.rpartition(":")[2], 16) == port:
            unread += int(queues.rpartition(":")[2], 16)
    return unread


def read_stream(server: NatsServer, stream: str = STREAM) -> list[StoredMessage]:
    """Every message the stream holds, in order."""

    async def read() -> list[StoredMessage]:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return []
            messages: list[StoredMessage] = []
            if info.state.messages == 0:
                return messages
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                raw = await js.get_msg(stream, seq)
                messages.append(
                    StoredMessage(raw.subject or "", dict(raw.headers or {}), raw.data or b"")
                )
            return messages
        finally:
            await nc.close()

    return asyncio.run(read())


@pytest.fixture
def make_app() -> Iterator[Callable[[Settings], Flask]]:
    """Build proxy apps with real publishers; their connections are closed afterwards."""
    publishers: list[JetStreamPublisher] = []

    def make(settings: Settings) -> Flask:
        publisher = JetStreamPublisher(settings)
        publishers.append(publisher)
        return create_app(settings, publisher=publisher)

    yield make
    for publisher in publishers:
        publisher.close()


@pytest.fixture
def system(
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[System]:
    """Proxy, manager and one worker, started; stopped after the test (logs printed on failure)."""
    running = System(nats_server, redis_server, tmp_path).start()
    yield running
    stop_showing_logs(request, running)
