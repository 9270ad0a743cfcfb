"""``eventing-proxy`` as users run it: granian, two worker processes, a real nats-server."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import STREAM, read_stream
from tests.support.servers import NatsServer, free_port, wait_until

pytestmark = pytest.mark.integration

PROXY = Path(sysconfig.get_path("scripts")) / "eventing-proxy"


def _proxy_command() -> list[str]:
    if PROXY.exists():
        return [str(PROXY)]
    found = shutil.which("eventing-proxy")
    if found is None:
        pytest.fail("eventing-proxy is not installed: pip install -e .")
    return [found]


@pytest.fixture
def proxy(
    nats_server: NatsServer, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log = tmp_path / "proxy.log"
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "INGRESS_PORT": str(port),
        "PROXY_WORKERS": "2",
        "JS_STREAM_NAME": STREAM,
        "JS_STREAM_RETENTION_POLICY": "limits",
    }
    with log.open("wb") as out:
        # A session of its own, so teardown can end granian's worker processes too.
        process = subprocess.Popen(
            _proxy_command(), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return requests.get(f"{url}/healthz", timeout=0.5).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(healthy, 20, "the proxy to answer /healthz")
    yield url, process, log
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


def _publish_many(url: str, count: int, threads: int) -> list[int]:
    def send(chunk: range) -> list[int]:
        with requests.Session() as session:
            return [
                session.post(
                    f"{url}/publish",
                    headers={
                        "ce-specversion": "1.0",
                        "ce-id": f"event-{i}",
                        "ce-source": "loadtest",
                        "ce-type": "order.created.v1",
                        "content-type": "application/json",
                    },
                    data=b'{"n": %d}' % i,
                    timeout=10,
                ).status_code
                for i in chunk
            ]

    chunks = [range(start, count, threads) for start in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return [code for codes in pool.map(send, chunks) for code in codes]


def test_publishes_through_the_production_server(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    url, _, log = proxy
    codes = _publish_many(url, count=300, threads=8)
    assert codes == [204] * 300
    stored = read_stream(nats_server)
    assert len(stored) == 300
    assert {m.subject for m in stored} == {"kyma.loadtest.order.created.v1"}

    # Metrics are summed over both worker processes, whichever one answers the scrape.
    for _ in range(4):
        text = requests.get(f"{url}/metrics", timeout=5).text
        match = re.search(
            r'eventing_epp_requests_total\{code="204",method="POST",path="/publish"\} (\S+)', text
        )
        assert match is not None and float(match[1]) == 300
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
    assert "Traceback" not in log.read_text()


def test_chunked_bodies_over_the_limit_are_refused_not_cut(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    url, _, _ = proxy
    headers = {"ce-specversion": "1.0", "ce-source": "s", "ce-type": "a.b.v1", "ce-id": "big"}

    def chunks(size: int) -> Iterator[bytes]:
        for _ in range(size // 1000):
            yield b"x" * 1000

    too_big = requests.post(f"{url}/publish", headers=headers, data=chunks(70_000), timeout=10)
    assert too_big.status_code == 413
    legacy = requests.post(f"{url}/app/v1/events", data=chunks(70_000), timeout=10)
    assert legacy.status_code == 413
    assert legacy.json()["type"] == "request_body_too_large"
    assert read_stream(nats_server) == []

    small_headers = {**headers, "ce-id": "small"}
    small = requests.post(f"{url}/publish", headers=small_headers, data=chunks(60_000), timeout=10)
    assert small.status_code == 204
    [stored] = read_stream(nats_server)
    assert len(base64.b64decode(json.loads(stored.payload)["data_base64"])) == 60_000


def test_sigterm_stops_the_proxy_quickly(proxy: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    url, process, _ = proxy
    assert _publish_many(url, count=10, threads=2) == [204] * 10
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(10)
    assert time.monotonic() - started < 5
