"""The load of the publish suite (:mod:`bench.publish`): raw nats-py publishing, wrk, and a
paced client, each returning one :class:`Result`.

Apart from the scenarios and their report because these run elsewhere: the nats-py baseline
and the paced client in a freshly spawned interpreter each (:func:`in_child_process`, so they
have a GIL and a core of their own), wrk as a program of its own. Every event they send has a
unique id, since JetStream stores a repeated (source, id) once.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import itertools
import json
import math
import multiprocessing
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from eventing.nats.streams import archive_config, stream_config
from eventing.settings import Settings
from testing import tokens

LUA_SCRIPT = Path(__file__).resolve().with_name("publish.lua")
STREAM = "sap"
RAW_STREAM = "raw"  # the baseline's stream, deleted before the proxy creates its own on kyma.>
SUBJECT = "kyma.bench.order.created.v1"  # where the proxy puts source bench, order.created.v1
DATA_BYTES = 1024
BATCH_SIZE = 50  # about 58 KB per request, under the default MAX_REQUEST_SIZE of 64 KiB
BINARY_HEADERS = {
    "Content-Type": "application/json",
    "ce-specversion": "1.0",
    "ce-source": "bench",
    "ce-type": "order.created.v1",
}


#: How the proxy may require credentials: none (open), an API key, a JWT (RS256, JWKS file).
AUTH_MODES = ("none", "apikey", "jwt")
_BENCH_KEY = "bench-publisher-key-0123456789abcdef"


def auth_environ(mode: str, workdir: Path) -> tuple[dict[str, str], str]:
    """The proxy's settings for an :data:`AUTH_MODES` mode, and the Authorization header a
    publisher of source ``bench`` then sends (empty: none); files go into ``workdir``."""
    if mode == "none":
        return {}, ""
    if mode == "apikey":
        keys = workdir / "api-keys.yaml"
        digest = hashlib.sha256(_BENCH_KEY.encode()).hexdigest()
        keys.write_text(
            f"- {{name: bench, sha256: '{digest}', sources: [bench], types: ['order.*']}}\n"
        )
        return {"PROXY_API_KEYS_FILE": str(keys)}, f"Bearer {_BENCH_KEY}"
    issuer = tokens.Issuer(workdir)
    environ = issuer.environ(workdir / "jwt-rules.yaml", sources="bench", types="order.*")
    return environ, f"Bearer {issuer.token(lifetime=3600)}"


@dataclass(frozen=True)
class Result:
    """What one scenario measured."""

    stored: int  #: events acknowledged as stored
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  #: failed publishes or requests

    @property
    def rate(self) -> float:
        """Events stored per second."""
        return self.stored / self.seconds


def event_data(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes, the data of every benchmark event."""
    return b'{"order":"' + b"x" * (size - 12) + b'"}'


def stream_environ(nats_url: str) -> dict[str, str]:
    """Settings of the bench streams, shared by baseline and proxy so both write alike."""
    return {
        "NATS_URL": nats_url,
        "JS_STREAM_NAME": STREAM,
        "JS_STREAM_STORAGE_TYPE": "file",
        "JS_STREAM_RETENTION_POLICY": "limits",
        "JS_STREAM_MAX_BYTES": "-1",  # a long run must not fill the 1 GiB default and get 507s
        "JS_STREAM_MAX_MSGS_PER_TOPIC": "-1",  # every bench event goes to the same subject
    }


async def archive_streams(nats_url: str, environ: Mapping[str, str]) -> None:
    """Create the replay archive as the manager does (the proxy alone would not), unless
    ``environ`` turns it off (``EVENT_ARCHIVE_MAX_AGE=0``): the proxy's figures then include
    the sourcing's work on the same nats-server, as in a deployment."""
    archive = archive_config(Settings.from_environ({**environ, **stream_environ(nats_url)}).stream)
    if archive is None:
        return
    connection = await nats.connect(nats_url)
    try:
        await connection.jetstream().add_stream(archive)
    finally:
        await connection.close()


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds (NaN with fewer than two values)."""
    if len(seconds) < 2:
        return math.nan, math.nan
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def in_child_process(function: Callable[..., Result], *args: Any) -> Result:
    """``function(*args)``, run in a freshly spawned interpreter.

    Load generators run apart from this driver so they have a GIL, and a core, of their own;
    spawn rather than fork keeps them free of the driver's state.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, function, args))
    child.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = RuntimeError(f"{function.__name__} exited without a result")
    except BaseException:
        child.terminate()
        raise
    finally:
        child.join()
        receiver.close()
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, Result)
    return outcome


def _child_main(sender: Connection, function: Callable[..., Result], args: tuple[Any, ...]) -> None:
    try:
        outcome: Result | Exception = function(*args)
    except Exception as exc:  # reported to the parent, which raises it
        outcome = RuntimeError(f"{function.__name__}: {type(exc).__name__}: {exc}")
    sender.send(outcome)


def raw_publish(nats_url: str, concurrency: int, duration: int) -> Result:
    """(child process) Publish for ``duration`` s from ``concurrency`` concurrent publishers."""
    return asyncio.run(_raw_publish(nats_url, concurrency, duration))


async def _raw_publish(nats_url: str, concurrency: int, duration: int) -> Result:
    """Into a stream configured like the proxy's, which is deleted afterwards (same subjects)."""
    settings = Settings.from_environ(stream_environ(nats_url))
    connection = await nats.connect(nats_url)
    js = connection.jetstream()
    await js.add_stream(stream_config(replace(settings.stream, name=RAW_STREAM)))
    try:
        result = await _publish_for(js, concurrency, duration)
        in_stream = (await js.stream_info(RAW_STREAM)).state.messages
        if in_stream < result.stored:
            raise RuntimeError(f"{result.stored} publishes acknowledged, {in_stream} stored")
        return result
    finally:
        await js.delete_stream(RAW_STREAM)
        await connection.close()


async def _publish_for(js: JetStreamContext, concurrency: int, duration: int) -> Result:
    payload = event_data(DATA_BYTES)
    ids = itertools.count()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def publisher() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            headers = {"Nats-Msg-Id": f"raw-{concurrency}-{next(ids)}"}  # dedup, as the proxy
            sent = time.perf_counter()
            try:
                await js.publish(SUBJECT, payload, timeout=5, stream=RAW_STREAM, headers=headers)
            except (nats.errors.Error, TimeoutError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)

    start = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return Result(len(latencies), seconds, *percentiles_ms(latencies), errors)


def run_wrk(
    url: str, tag: str, mode: str, connections: int, duration: int, authorization: str = ""
) -> Result:
    """Closed-loop load with wrk; ``tag`` keeps event ids unique across runs, ``authorization``
    is sent as the Authorization header (empty: none)."""
    command = ["wrk", "-t", str(min(2, connections)), "-c", str(connections)]
    command += ["-d", f"{duration}s", "--timeout", "10s", "--latency", "-s", str(LUA_SCRIPT)]
    command += [f"{url}/publish", "--", tag, mode, str(DATA_BYTES), str(BATCH_SIZE), authorization]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    reports = [
        json.loads(line.removeprefix("BENCH_RESULT "))
        for line in completed.stdout.splitlines()
        if line.startswith("BENCH_RESULT ")
    ]
    if not reports:
        raise RuntimeError(f"wrk reported nothing:\n{completed.stdout}{completed.stderr}")
    report = reports[0]
    succeeded = report["requests"] - report["status_errors"]  # wrk: status > 399 is an error
    return Result(
        stored=succeeded * (BATCH_SIZE if mode == "batch" else 1),
        seconds=report["duration_us"] / 1e6,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        errors=report["status_errors"] + report["socket_errors"],
    )


def paced_publish(
    url: str, rate: int, duration: int, connections: int, authorization: str = ""
) -> Result:
    """(child process) POST binary events at ``rate``/s from one thread per connection, with
    ``authorization`` as the Authorization header (empty: none).

    Request ``n`` is due at ``start + n / rate``; the next free thread sends it then (or late, if
    all are busy) and its latency counts from when it was due. A proxy over capacity falls ever
    further behind, so requests still unsent after twice ``duration`` are dropped, which bounds
    the run and shows as a rate below the target.
    """
    host, port = url.removeprefix("http://").split(":")
    body = event_data(DATA_BYTES)
    headers = {**BINARY_HEADERS, **({"Authorization": authorization} if authorization else {})}
    tickets = itertools.count()  # next() is atomic under the GIL
    latencies: list[float] = []
    failures: list[int] = []
    total = rate * duration
    start = time.perf_counter() + 0.1
    give_up = start + 2 * duration

    def send() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        while (ticket := next(tickets)) < total and time.perf_counter() < give_up:
            due = start + ticket / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            try:
                connection.request(
                    "POST", "/publish", body, {**headers, "ce-id": f"paced{rate}-{ticket}"}
                )
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()  # reconnects on the next request
                failures.append(ticket)
                continue
            if response.status == 204:
                latencies.append(time.perf_counter() - due)
            else:
                failures.append(ticket)
        connection.close()

    threads = [threading.Thread(target=send) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return Result(len(latencies), seconds, *percentiles_ms(latencies), len(failures))


class StreamState(NamedTuple):
    """What a stream holds at one moment."""

    messages: int
    bytes: int


async def stream_state(nats_url: str, stream: str) -> StreamState | None:
    """What ``stream`` holds (None: there is no such stream), to tell the size of a stored
    message."""
    connection = await nats.connect(nats_url)
    try:
        state = (await connection.jetstream().stream_info(stream)).state
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await connection.close()
    return StreamState(state.messages, state.bytes)


async def stream_messages(nats_url: str, stream: str) -> int:
    """How many messages ``stream`` holds (0: no such stream): the check that every
    acknowledged event was stored."""
    state = await stream_state(nats_url, stream)
    return 0 if state is None else state.messages
