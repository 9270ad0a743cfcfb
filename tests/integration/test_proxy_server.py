"""``eventing-proxy`` as users run it: granian, two worker processes, a real nats-server."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from proxy import admission
from testing import fuzzing
from testing.servers import NatsServer, free_port, wait_until
from tests.integration.conftest import (
    STREAM,
    late_beside_a_held_batch,
    proxy_command,
    read_stream,
    served_proxy,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """More environment for the proxy; a test parametrizes it to change settings."""
    return {}


@pytest.fixture
def proxy(
    nats_server: NatsServer, tmp_path: Path, proxy_env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    env = {"NATS_URL": nats_server.url, "PROXY_WORKERS": "2", **proxy_env}
    with served_proxy(tmp_path / "proxy.log", env) as (url, process):
        yield url, process, tmp_path / "proxy.log"


def _publish_many(url: str, count: int, threads: int, *, types: int = 1) -> list[int]:
    """``count`` binary-mode publishes from ``threads`` threads, of ``types`` event types."""

    def send(chunk: range) -> list[int]:
        with requests.Session() as session:
            return [
                session.post(
                    f"{url}/publish",
                    headers={
                        "ce-specversion": "1.0",
                        "ce-id": f"event-{i}",
                        "ce-source": "loadtest",
                        "ce-type": "order.created.v1" if types == 1 else f"kind{i % types}.v1",
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

    # Metrics are summed over both worker processes, whichever one answers the scrape (the
    # other's values as of its last snapshot, a fraction of a second ago).
    def published() -> float:
        text = requests.get(f"{url}/metrics", timeout=5).text
        match = re.search(
            r'eventing_epp_requests_total\{code="204",method="POST",path="/publish"\} (\S+)', text
        )
        return float(match[1]) if match else 0.0

    # four scrapes in a row, so that each worker answers one most likely
    wait_until(lambda: [published() for _ in range(4)] == [300] * 4, 10, "both workers counted")
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
    assert "Traceback" not in log.read_text()


def test_no_process_of_the_proxy_loads_what_its_settings_do_not_use(
    proxy: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    """aiohttp, which nats-py would import for ws:// URLs alone, cost each process 9 MiB, and
    PyJWT with cryptography, needed for JWTs alone (none are configured here), as much."""
    url, process, _ = proxy
    assert _publish_many(url, count=20, threads=4) == [204] * 20  # both workers connected
    group = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _process_group(int(entry.name)) == process.pid
    ]
    assert len(group) == 3  # the launcher and its two workers
    for pid in group:
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert "aiohttp" not in mapped and "cryptography" not in mapped, pid


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


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


def test_sigterm_right_after_start_stops_the_proxy(nats_server: NatsServer, tmp_path: Path) -> None:
    """A SIGTERM that reached a granian worker while it was still starting was swallowed (it had
    the launcher's handler), and the launcher then waited for that worker for good: most starts
    stopped right after /healthz first answered hung."""
    for attempt in range(5):
        port = free_port()
        healthz = f"http://127.0.0.1:{port}/healthz"
        env = {**os.environ, "NATS_URL": nats_server.url, "INGRESS_PORT": str(port)}
        with (tmp_path / f"proxy-{attempt}.log").open("wb") as out:
            process = subprocess.Popen(
                proxy_command(),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(functools.partial(_answers, healthz), 20, "the proxy to answer")
            process.send_signal(signal.SIGTERM)
            assert process.wait(5) == 0, f"attempt {attempt}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 within half a second now. Granian listens before its workers
    serve: a request then waits for one (0.24 s measured beside two CPU hogs), and one past the
    timeout is a ReadTimeout, no ConnectionError: it failed the test instead of asking again."""
    try:
        return requests.get(url, timeout=0.5).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def test_a_subject_too_long_for_nats_leaves_the_proxy_connected(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    """Such a publish made nats-server close the worker's connection, which nats-py never
    reopens: every later publish of that worker answered 502 (found by bench/fuzz.py)."""
    url, _, log = proxy
    long_type = {"ce-specversion": "1.0", "ce-source": "s", "ce-type": "t" * 5000 + ".v1"}
    for n in range(8):  # enough to reach both workers
        response = requests.post(
            f"{url}/publish", headers={**long_type, "ce-id": f"long-{n}"}, data=b"{}", timeout=10
        )
        assert response.status_code == 400
    assert _publish_many(url, count=40, threads=4) == [204] * 40
    assert len(read_stream(nats_server)) == 40
    assert "disconnected from NATS" not in log.read_text()


def test_a_body_cut_short_is_not_stored(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    """Granian hands over what arrived when the client goes away mid-body; it was stored."""
    url, _, _ = proxy
    host, port = url.removeprefix("http://").split(":")
    head = (
        b"POST /publish HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: cut\r\n"
        b"ce-source: s\r\nce-type: a.b.v1\r\nContent-Length: 100\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b'{"orderId": 4')
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert _publish_many(url, count=1, threads=1) == [204]  # the stream exists, and holds …
    assert [m.headers["ce-id"] for m in read_stream(nats_server)] == ["event-0"]  # … only this


def _raw_publish(url: str, path: str, head: bytes, body: bytes = b"{}") -> tuple[int, bytes]:
    """One request written byte for byte, for header lines no HTTP client would send."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + head
        + b"\r\n"
        + body
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_header_values_granian_cannot_pass_on_are_refused_naming_the_header(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    """Granian hands the app "" for a value with non-ASCII bytes and joins repeated
    lines with ','; both were stored (as "" and "first,second") and answered 204."""
    url, _, log = proxy
    event = b"ce-specversion: 1.0\r\nce-source: s\r\nce-type: a.b.v1\r\n"
    refused = [  # what the problem's "attribute" names, the request's headers
        ("ce-subject", event + b"ce-id: utf8\r\nce-subject: caf\xc3\xa9\r\n"),
        ("ce-id", event + b"ce-id: first\r\nce-id: second\r\n"),
        ("content-type", event + b"ce-id: ct\r\nContent-Type: text/plain; a=\xc3\xa9\r\n"),
        ("traceparent", event + b"ce-id: tp\r\ntraceparent: 00-junk\r\n"),
        ("traceparent", event + b"ce-id: cetp\r\nce-traceparent: caf%C3%A9\r\n"),
    ]
    for header, head in refused:
        status, body = _raw_publish(url, "/publish", head)
        assert status == 400, (header, body)
        assert json.loads(body)["attribute"] == header
    legacy_body = json.dumps(
        {
            "event-type": "order.created",
            "event-type-version": "v1",
            "event-time": "2020-04-02T21:37:00Z",
            "data": {"a": 1},
        }
    ).encode()
    status, body = _raw_publish(url, "/app/v1/events", b"traceparent: x\r\n", legacy_body)
    assert (status, json.loads(body)["type"]) == (400, "bad_payload_syntax")

    status, _ = _raw_publish(url, "/publish", event + b"ce-id: ok\r\nce-subject: caf%C3%A9\r\n")
    assert status == 204
    [stored] = read_stream(nats_server)
    assert json.loads(stored.payload)["subject"] == "café"
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("proxy_env", [{"PROXY_THREADS": "4", "PROXY_BODY_TIMEOUT": "4s"}])
def test_trickled_bodies_get_408_and_leave_threads_to_other_publishers(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    """Under granian's WSGI interface a body being read held its thread (and its turn to
    publish) for as long as the client kept trickling: as many tricklers as threads locked
    every publisher out (503). Bodies are now read before a thread sees them, within a deadline
    and at a minimum rate (proxy.bodies)."""
    url, _, log = proxy
    host, port = url.removeprefix("http://").split(":")
    threads = 2 * admission.thread_count(4)  # of both worker processes
    tricklers = []
    for index in range(threads + 8):
        sock = socket.create_connection((host, int(port)), timeout=15)
        sock.sendall(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-source: s\r\n"
            b"ce-type: a.b.v1\r\nce-id: trickle-%d\r\nContent-Length: 200\r\n\r\n" % index
        )
        tricklers.append(sock)
    stop = threading.Event()

    def trickle() -> None:  # a byte per socket every 0.2 s: far below the minimum rate
        while not stop.wait(0.2):
            for sock in tricklers:
                with contextlib.suppress(OSError):  # answered and closed by now
                    sock.send(b"x")

    def answer(sock: socket.socket) -> bytes:
        received = b""
        while chunk := sock.recv(4096):  # until the proxy closes the connection
            received += chunk
        return received

    with ThreadPoolExecutor(1) as pool:
        trickling = pool.submit(trickle)
        try:
            time.sleep(1)  # every trickler's headers are in
            assert _publish_many(url, count=8, threads=2) == [204] * 8
            answers = [answer(sock) for sock in tricklers]
        finally:
            stop.set()
            trickling.result()
            for sock in tricklers:
                sock.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    assert b"PROXY_BODY_MIN_RATE" in answers[0]
    assert sorted(m.headers["ce-id"] for m in read_stream(nats_server)) == [
        f"event-{i}" for i in range(8)
    ]
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("proxy_env", [{"PROXY_METRICS_MAX_EVENT_TYPES": "20"}])
def test_metrics_bound_the_event_types_they_name(
    proxy: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    """Every distinct event type was a series for good, in memory and in each process's file:
    62,000 types made /metrics 6.4 MB and doubled the proxy's memory."""
    url, _, _ = proxy
    assert _publish_many(url, count=300, threads=4, types=150) == [204] * 300

    def series() -> list[tuple[str, str]]:
        text = requests.get(f"{url}/metrics", timeout=5).text
        found = r'eventing_epp_event_type_published_total\{.*event_type="([^"]*)"\} (\S+)'
        return re.findall(found, text)

    # the rest counted as "other"; the other worker's values as of its last snapshot
    wait_until(lambda: sum(float(count) for _, count in series()) == 300, 10, "every event")
    named = {event_type for event_type, _ in series()} - {"other"}
    assert len(named) <= 2 * 20  # at most 20 for each of the two worker processes


def test_hostile_requests_get_no_5xx_and_store_only_what_was_accepted(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    """A short run of bench/fuzz.py's cases (the seed is printed on failure)."""
    url, process, log = proxy
    seed = random.randrange(2**32)
    outcomes = fuzzing.run(url, seed, 2000, limit=65536, threads=8)
    verdict = fuzzing.judge(outcomes, fuzzing.stored_ids(nats_server.url, STREAM), seed)
    assert verdict.problems() == [], f"seed {seed}"
    assert verdict.accepted_events > 0
    assert process.poll() is None
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
    text = log.read_text()
    assert "Traceback" not in text and "disconnected from NATS" not in text, f"seed {seed}"


def test_idle_connections_do_not_lock_new_clients_out(
    proxy: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    """Granian's default served 512 connections a worker, idle ones included, and a socket that
    never sends a byte is never timed out: 1,100 of them locked every new client out for good
    (found by bench/overload.py, whose 2,000 connections half starved)."""
    url, _, _ = proxy
    host, port = url.removeprefix("http://").split(":")
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)  # the proxy's too: it inherited it
    if limit != resource.RLIM_INFINITY and limit < 1500:
        pytest.skip(f"needs 1,500 file descriptors, the limit is {limit}")
    with contextlib.ExitStack() as stack:
        for _ in range(1100):
            stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
        assert _publish_many(url, count=4, threads=4) == [204] * 4


def test_open_publishing_is_warned_about_once_at_start(
    proxy: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    _, _, log = proxy
    warned = [line for line in log.read_text().splitlines() if "publishing is open" in line]
    assert len(warned) == 1, log.read_text()
    assert " WARNING " in warned[0]
    assert "PROXY_API_KEYS_FILE" in warned[0] and "PROXY_JWKS" in warned[0]


def test_the_served_proxy_requires_a_key_once_a_keys_file_is_set(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    from testing.system import start_proxy

    keys = tmp_path / "keys.yaml"
    keys.write_text("- {name: loadtest, key: load-key, sources: [loadtest], types: ['*']}\n")
    environ = {"JS_STREAM_NAME": STREAM, "JS_STREAM_RETENTION_POLICY": "limits"}
    served, url = start_proxy(nats_server.url, tmp_path, PROXY_API_KEYS_FILE=str(keys), **environ)
    try:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "loadtest",
            "ce-type": "order.created.v1",
        }
        refused = requests.post(f"{url}/publish", headers=headers, data=b"{}", timeout=10)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        headers["Authorization"] = "Bearer load-key"
        stored = requests.post(f"{url}/publish", headers=headers, data=b"{}", timeout=10)
        assert stored.status_code == 204
        assert len(read_stream(nats_server)) == 1
        assert "publishing is open" not in served.log()
    finally:
        served.stop()


def test_a_broken_keys_file_stops_the_proxy_at_start_naming_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("- {name: loadtest, key: load-key}\n")  # no sources, no types
    env = {**os.environ, "PROXY_API_KEYS_FILE": str(keys), "INGRESS_PORT": str(free_port())}
    result = subprocess.run(proxy_command(), env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(keys) in result.stderr and "sources: expected" in result.stderr


_EVENT = {"specversion": "1.0", "source": "myapp", "type": "order.created.v1", "data": {"a": 1}}


def _batch(url: str, *ids: str) -> requests.Response:
    """A batch-mode publish of one event per id."""
    return requests.post(
        f"{url}/publish",
        data=json.dumps([{**_EVENT, "id": event_id} for event_id in ids]),
        headers={"content-type": "application/cloudevents-batch+json"},
        timeout=10,
    )


@pytest.mark.parametrize(
    "proxy_env",
    # one slot and three events in flight: a turn or an event the loop kept would 503 the rest
    [{"JS_STREAM_MAX_MSGS": "4", "PROXY_THREADS": "1", "PROXY_MAX_IN_FLIGHT": "3"}],
)
def test_events_the_loop_failed_to_store_get_each_endpoints_answer_and_release_their_turn(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    """The views leave their events to granian's loop (proxy.pending), which answers after the
    PubAcks: a refusal by JetStream still gets the answer a view gives inside Flask, counted
    in the metrics, and gives back what the request held."""
    url, _, _ = proxy

    def binary(event_id: str) -> requests.Response:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "myapp",
            "ce-type": "order.created.v1",
            "content-type": "application/json",
        }
        return requests.post(f"{url}/publish", headers=headers, data=b"{}", timeout=10)

    assert [binary(f"fits-{i}").status_code for i in range(4)] == [204] * 4
    refused = binary("full")
    assert refused.status_code == 507
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["title"] == "Event not stored"
    legacy = requests.post(
        f"{url}/app/v1/events",
        json={
            "event-type": "order.created",
            "event-type-version": "v1",
            "event-time": "2020-04-02T21:37:00Z",
            "data": "x",
        },
        timeout=10,
    )
    assert legacy.status_code == 507
    assert legacy.json() == {"status": 507, "message": legacy.json()["message"]}
    batch = _batch(url, "batch-0", "batch-1", "batch-2")
    assert batch.status_code == 507
    assert [error["index"] for error in batch.json()["errors"]] == [0, 1, 2]
    assert [binary(f"again-{i}").status_code for i in range(8)] == [507] * 8  # never 503
    assert len(read_stream(nats_server)) == 4

    def counted() -> dict[str, float]:
        text = requests.get(f"{url}/metrics", timeout=5).text
        found = r'eventing_epp_requests_total\{code="(\d+)",method="POST",path="([^"]*)"\} (\S+)'
        return {f"{code} {path}": float(n) for code, path, n in re.findall(found, text)}

    expected = {"204 /publish": 4.0, "507 /publish": 10.0, "507 /{application}/v1/events": 1.0}
    wait_until(lambda: counted() == expected, 10, f"requests counted as {expected}")


@pytest.mark.parametrize("proxy_env", [{"PROXY_WORKERS": "1", "PROXY_MAX_IN_FLIGHT": "3"}])
def test_events_waiting_on_the_loop_for_their_pubacks_count_in_flight(
    proxy: tuple[str, subprocess.Popen[bytes], Path], nats_server: NatsServer
) -> None:
    url, _, _ = proxy

    def post(*ids: str) -> tuple[int, str | None]:
        response = _batch(url, *ids)
        return response.status_code, response.headers.get("Retry-After")

    assert post("first-1", "first-2") == (204, None)  # connected; now hold a batch in flight
    assert late_beside_a_held_batch(nats_server, post)[0] == 503
    assert post("after-1", "after-2") == (204, None)  # the held events were released
    stored = [json.loads(m.payload)["id"] for m in read_stream(nats_server)]
    assert "late-1" not in stored and "held-1" in stored and "after-1" in stored
