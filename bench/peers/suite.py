"""The peer suite's scenarios, run inside its namespaces (:mod:`bench.peers.namespace`).

Method:

- Each side has its own nats-server, the same binary (so the same version): ours on a free port
  with the stream our services create, Kyma's on 4222 (its manager's fixed port) with the stream
  its manager creates. Apart so that neither's streams, consumers and housekeeping (our archive
  and ledger, say) load the other's server, and each side's nats CPU is its own.
- Both systems run the whole time as deployed: ours as ``honcho start`` does
  (:class:`bench.system.BenchSystem`: 2 proxy workers, 2 worker processes x 16 threads) at the
  default log level; Kyma's proxy and manager at their Deployments' settings. Only the side
  under load is loaded; the other idles.
- Rounds alternate: round n of ours, then round n of Kyma, for each load; each side's stream is
  purged before each of its rounds. Every event has an id unique to its round.
- publish: wrk (``bench/publish.lua``, 1 KiB JSON data) against each proxy. A durable consumer
  that never pulls gives each stream interest, so every accepted event is really stored (with
  interest retention and no consumer JetStream acknowledges and keeps nothing); the stream's
  message count is compared with the 2xx count. CPU is the proxy's process tree's, nats apart.
- e2e: one subscription each (``maxInFlightMessages: "100"``, Kyma's example), the same Go sink,
  which counts unique ids; wrk at 8 connections for the round's seconds. CPU of every component
  from load start until the sink has every accepted event.
- latency: :func:`bench.e2eload.publish_at_rate` sends single events at a fixed rate; each
  event's latency runs from when its request was due to its first arrival at the sink, both on
  this machine's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import resource
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from bench.e2e import percentiles
from bench.e2eload import Published, publish_at_rate
from bench.peers import SCENARIOS, kyma, namespace, report
from bench.peers.sink import GoSink
from bench.publish import machine_info
from bench.publishers import STREAM, run_wrk, stream_messages
from bench.system import BenchSystem
from testing.procstats import cpu_seconds, machine_busy_seconds, rss, tree
from testing.system import Process

SOURCE, EVENT_TYPE = "bench", "order.created.v1"  # what bench/publish.lua sends
E2E_CONNECTIONS = 8
WARMUP_SECONDS = 2
RATES = (300, 500)


@dataclass(frozen=True)
class Load:
    name: str
    mode: str  #: a mode of bench/publish.lua
    connections: int


LOADS = (
    Load("binary, 1 conn", "binary", 1),
    Load("binary, 16 conns", "binary", 16),
    Load("binary, 64 conns", "binary", 64),
    Load("legacy, 64 conns", "legacy", 64),
    Load("batch of 50, 16 conns", "batch", 16),
)
BATCH, SINGLE = LOADS[4].name, LOADS[1].name  # our batch is set against Kyma's single events


@dataclass(frozen=True)
class Side:
    """One system as the scenarios see it."""

    name: str
    proxy_url: str
    nats_url: str
    roots: Callable[[], dict[str, int]]  #: component → pid at the top of its process tree
    proxy: str  #: which component is the proxy


# --- /proc ---------------------------------------------------------------------------------


def cpu_of(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds each component's process tree has used so far."""
    return {name: sum(cpu_seconds(pid) for pid in tree(root)) for name, root in roots.items()}


def pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("Pss:")), 0)


def memory_of(roots: dict[str, int]) -> dict[str, report.Memory]:
    found = {}
    for name, root in roots.items():
        pids = tree(root)
        found[name] = report.Memory(sum(map(rss, pids)), sum(map(pss, pids)), len(pids))
    return found


# --- streams -------------------------------------------------------------------------------


#: A durable consumer that never pulls: it gives a stream interest, so the stream keeps every
#: event it accepts and its message count tells what was stored.
COUNTING = ConsumerConfig(
    durable_name="peer-bench-count", filter_subject="kyma.>", ack_policy=AckPolicy.EXPLICIT
)


async def _jetstream(url: str, call: Callable[[JetStreamContext], Awaitable[object]]) -> None:
    connection = await nats.connect(url)
    try:
        await call(connection.jetstream())
    finally:
        await connection.close()


def purge(url: str, *, counting: bool = False) -> None:
    """Empty the stream; ``counting``: (re)add :data:`COUNTING` too. Again before every round,
    because Kyma's manager deletes every consumer no Subscription wants when its subscription
    manager starts (``DeleteInvalidConsumers``), which may be after the first."""

    async def call(js: JetStreamContext) -> None:
        await js.purge_stream(STREAM)
        if counting:
            await js.add_consumer(STREAM, COUNTING)

    asyncio.run(_jetstream(url, call))


def stop_counting(url: str) -> None:
    async def call(js: JetStreamContext) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(STREAM, COUNTING.durable_name or "")

    asyncio.run(_jetstream(url, call))


# --- scenarios -----------------------------------------------------------------------------


def publish_round(side: Side, load: Load, number: int, seconds: int) -> report.PublishRound:
    purge(side.nats_url, counting=True)
    roots = side.roots()
    meters = {"proxy": roots[side.proxy], "nats": roots["nats"]}
    before = asyncio.run(stream_messages(side.nats_url, STREAM))
    used = cpu_of(meters)
    tag = f"pub-{side.name}-{load.mode}{load.connections}-r{number}-{time.time_ns()}"
    result = run_wrk(side.proxy_url, tag, load.mode, load.connections, seconds)
    used = {name: after - used[name] for name, after in cpu_of(meters).items()}
    time.sleep(1)  # publishes in flight when wrk stopped land
    stored = asyncio.run(stream_messages(side.nats_url, STREAM)) - before
    row = report.PublishRound(
        side=side.name,
        load=load.name,
        round=number,
        accepted=result.stored,
        seconds=result.seconds,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        stored=stored,
        proxy_cpu=used["proxy"],
        nats_cpu=used["nats"],
    )
    print(
        f"  {load.name} round {number} {side.name}: {row.rate:,.0f} events/s,"
        f" {row.proxy_ms:.3f} ms CPU/event, stored {stored:,} of {row.accepted:,} accepted",
        flush=True,
    )
    return row


def publish(
    sides: list[Side], loads: tuple[Load, ...], rounds: int, seconds: int
) -> list[report.PublishRound]:
    print("publish: each proxy under wrk", flush=True)
    try:
        for side in sides:
            run_wrk(
                side.proxy_url, f"warm-{side.name}-{time.time_ns()}", "binary", 16, WARMUP_SECONDS
            )
        return [
            publish_round(side, load, number, seconds)
            for number in range(1, rounds + 1)
            for load in loads
            for side in sides
            if load.mode != "batch" or side.name == "ours"
        ]
    finally:
        for side in sides:
            stop_counting(side.nats_url)


def settle(sink: GoSink, count: int, reached: Callable[[], None] = lambda: None) -> None:
    """Wait until the sink has ``count`` unique ids and 2 s passed without a new one (or 20 s
    without any progress: events lost); ``reached`` is called once, as soon as either holds."""
    seen, changed, called = -1, time.monotonic(), False
    while True:
        unique, now = sink.stats().unique, time.monotonic()
        if unique != seen:
            seen, changed = unique, now
        if not called and (unique >= count or now - changed > 20):
            reached()
            called = True
        if called and now - changed > 2:
            return
        time.sleep(0.05)


def delivery_round(side: Side, sink: GoSink, number: int, seconds: int) -> report.DeliveryRound:
    purge(side.nats_url)
    sink.reset()
    roots = side.roots()
    used = cpu_of(roots)
    started = time.time()
    tag = f"e2e-{side.name}-r{number}-{time.time_ns()}"
    result = run_wrk(side.proxy_url, tag, "binary", E2E_CONNECTIONS, seconds)
    load_ended = time.time()
    spent: dict[str, float] = {}
    settle(sink, result.stored, lambda: spent.update(cpu_of(roots)))
    stats = sink.stats()
    row = report.DeliveryRound(
        side=side.name,
        round=number,
        accepted=result.stored,
        errors=result.errors,
        delivered=stats.unique,
        received=stats.received,
        started=started,
        load_ended=load_ended,
        last_arrival=stats.last,
        cpu={name: spent[name] - used[name] for name in roots},
    )
    print(
        f"  round {number} {side.name}: {row.rate:,.0f} delivered/s,"
        f" {row.cpu_ms()['sum']:.2f} ms CPU/event, lost {row.lost}, duplicates {row.duplicates}",
        flush=True,
    )
    return row


def end_to_end(
    sides: list[Side], sink: GoSink, rounds: int, seconds: int
) -> list[report.DeliveryRound]:
    print(f"e2e: wrk at {E2E_CONNECTIONS} connections, one subscription, one sink", flush=True)
    for side in sides:  # warm-up, not recorded
        sink.reset()
        result = run_wrk(
            side.proxy_url,
            f"warm-{side.name}-{time.time_ns()}",
            "binary",
            E2E_CONNECTIONS,
            WARMUP_SECONDS,
        )
        settle(sink, result.stored)
    return [delivery_round(side, sink, n, seconds) for n in range(1, rounds + 1) for side in sides]


def latency_round(
    side: Side, sink: GoSink, rate: int, number: int, seconds: int
) -> report.LatencyRound:
    purge(side.nats_url)
    sink.reset()
    tag = f"paced-{side.name}-{rate}-r{number}-{time.time_ns()}"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    proxy = side.proxy_url.removeprefix("http://")
    publisher = context.Process(target=publish_at_rate, args=(proxy, tag, rate, seconds, results))
    publisher.start()
    published: Published = results.get(timeout=seconds * 3 + 60)
    publisher.join()
    sent = int(rate * seconds)
    settle(sink, sent - published.failures)
    arrivals = sink.arrivals()
    transit = [
        arrivals[f"{tag}-r{n}"] - (published.started + n / rate)
        for n in range(sent)
        if f"{tag}-r{n}" in arrivals
    ]
    p50, p99 = percentiles(transit) or (float("nan"), float("nan"))
    print(f"  {rate}/s round {number} {side.name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
    return report.LatencyRound(
        side.name, rate, number, sent, published.failures, len(transit), p50, p99
    )


def latency(
    sides: list[Side], sink: GoSink, rates: tuple[int, ...], rounds: int, seconds: int
) -> list[report.LatencyRound]:
    print("latency: paced single events, publish → sink", flush=True)
    return [
        latency_round(side, sink, rate, n, seconds)
        for rate in rates
        for n in range(1, rounds + 1)
        for side in sides
    ]


# --- the run -------------------------------------------------------------------------------


class Record:
    """The tables of the run, and after each scenario each side's memory and how busy the rest
    of the machine was (other helpers' work on a shared machine shows there, not as noise)."""

    def __init__(self, sides: list[Side], helpers: list[Process]) -> None:
        self.sides = sides
        self.helpers = helpers  #: the sink: measured, not "the rest"
        self.tables: list[tuple[str, str]] = []
        self.memory: dict[str, dict[str, dict[str, report.Memory]]] = {}
        self.elsewhere: dict[str, float] = {}  #: scenario → percent of one core

    @contextlib.contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        started = self._busy()
        yield
        ended = self._busy()
        self.elsewhere[name] = report.elsewhere_percent(started, ended)
        self.memory[name] = {side.name: memory_of(side.roots()) for side in self.sides}

    def show(self, title: str, table: str) -> None:
        self.tables.append((title, table))
        print(f"\n{table}\n", flush=True)

    def print_all(self) -> None:
        self.tables.append(
            (
                "Memory (RSS, PSS): process trees after each scenario",
                report.memory_table(self.memory),
            )
        )
        for title, text in self.tables:
            print(f"\n{title}\n\n{text}")
        print()
        for name, percent in self.elsewhere.items():
            print(f"during {name}, the rest of the machine kept {percent:.0f}% of a core busy")
        print(NOTES)

    def _busy(self) -> report.Busy:
        roots = {f"{s.name} {n}": pid for s in self.sides for n, pid in s.roots().items()}
        roots |= {p.name: p.popen.pid for p in self.helpers if p.popen is not None}
        # wrk and the publishers are reaped children; the driver polls the sink
        usage = [
            resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)
        ]
        measured = sum(cpu_of(roots).values()) + sum(u.ru_utime + u.ru_stime for u in usage)
        return report.Busy(time.monotonic(), machine_busy_seconds(), measured)


def run(args: argparse.Namespace) -> int:
    rounds, seconds = (1, 3) if args.quick else (args.rounds, args.seconds)
    loads = (LOADS[1], LOADS[4]) if args.quick else LOADS
    rates = RATES[:1] if args.quick else RATES
    chosen = args.peer_scenario or list(SCENARIOS)
    if args.kyma_manager is None and {"e2e", "latency"} & set(chosen):
        print("e2e and latency need --kyma-manager: skipped")
        chosen = [s for s in chosen if s == "publish"]
    workdir = Path(tempfile.mkdtemp(prefix="eventing-peers-"))
    status = 0
    try:
        namespace.prepare(workdir)
        crds = kyma.crd_files(args.kyma_crds)
        print(machine_info())
        print(
            f"{rounds} round(s) of {seconds} s per side and load;"
            f" CRDs: {', '.join(path.name for path in crds)}\n",
            flush=True,
        )
        with contextlib.ExitStack() as stack:
            sink = GoSink(workdir)
            stack.callback(sink.stop)
            sink.start()
            (workdir / "ours").mkdir()
            ours = BenchSystem(workdir / "ours", LOG_LEVEL="info")
            stack.callback(ours.stop)
            ours.start()
            theirs = kyma.Kyma(args.kyma_epp, args.kyma_manager, crds, workdir / "kyma", sink.port)
            stack.callback(theirs.stop)
            theirs.start()
            sides = [
                Side("ours", ours.system.proxy_url, ours.nats.url, ours.roots, "proxy"),
                Side("kyma", theirs.proxy_url, theirs.nats.url, theirs.roots, "epp"),
            ]
            record = Record(sides, [sink.process])
            if "publish" in chosen:
                with record.scenario("publish"):
                    rows = publish(sides, loads, rounds, seconds)
                names = [load.name for load in loads]
                table = report.publish_table(rows, report.publish_rows(names, BATCH, SINGLE))
                record.show("Publish", table)
            if {"e2e", "latency"} & set(chosen):
                sink_url = f"http://{namespace.CLUSTER_NAMES[2]}:{sink.port}/"
                spec = {
                    "sink": sink_url,
                    "source": SOURCE,
                    "types": [EVENT_TYPE],
                    "config": {"maxInFlightMessages": "100"},
                }
                ours.system.subscribe("perf", spec)
                theirs.subscribe(sink_url, SOURCE, EVENT_TYPE)
            if "e2e" in chosen:
                with record.scenario("e2e"):
                    delivered = end_to_end(sides, sink, rounds, seconds)
                record.show("End to end, 1 subscription", report.delivery_table(delivered))
                status |= int(any(row.lost for row in delivered))
            if "latency" in chosen:
                with record.scenario("latency"):
                    paced = latency(sides, sink, rates, rounds, seconds)
                record.show("Publish → sink latency, paced", report.latency_table(paced))
            record.print_all()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


NOTES = """
ratios are ours ÷ Kyma's, of the medians [range of per-round ratios]; figures median [min-max]
CPU ms/event: CPU of the process tree per event answered 2xx (publish) or delivered (e2e)
stored - 2xx: per round, messages the stream gained minus 2xx answers (Kyma stores each legacy
  event twice; a few more than 2xx: requests in flight when wrk stopped)
lost: accepted events the sink never received; it must be 0
the rest of the machine: CPU outside both systems, the sink, the load generator and this driver
  (kube-apiserver and etcd included, a few %); above about 20%, other work disturbed the run"""
