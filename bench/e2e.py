"""End to end: publish → sink rates and latencies, fan-out and worker scaling, vs raw JetStream.

Part of ``python -m bench`` (the entry point; ``--suite e2e,fanout,scaling``); it needs
``redis-server``. The system is :mod:`bench.system`'s, the load :mod:`bench.e2eload`'s. Method
(everything on loopback, every process real, as ``honcho start`` runs them):

- A nats-server and a redis-server of our own, in temporary folders; the proxy (2 granian
  workers), the manager, one ``eventing-worker`` (2 processes x 16 threads unless the scenario
  says otherwise), all as subprocesses with the README's defaults. The sink is a fast asyncio
  HTTP/1.1 server (keep-alive, answers 204) in a process of its own; subscriptions use
  ``maxInFlightMessages: "200"``.
- Baseline, same run, in a process of its own: raw nats-py publishes ``--events`` 1 KiB
  messages pipelined (256 in flight, each awaited for its PubAck) into a stream with one durable
  pull consumer, then a second connection fetches batches of 200 and acks every message with a
  confirmed ack. "publish" and "pull+ack" are what JetStream alone does here for each half.
- Saturated rows: the publisher (its own process, 8 threads) sends the events in batch mode (50
  per request, so the proxy is not what limits) as fast as the system takes them; delivered/s =
  deliveries ÷ time from the first publish to the last delivery. Publish latency is per batch
  request.
- Paced rows: single binary-mode events at a fixed rate from 16 threads; each latency counts
  from when its request was due (a publisher that falls behind shows in p99), and publish→sink
  from just before the request to the sink's arrival, both on this machine's clock.
- Fan-out: 1, 10 and 100 subscriptions of the one type (every event delivered once per
  subscription), with as many events as make the same number of deliveries.
- Scaling: one subscription, saturated, with 1, 2 and 4 worker processes of 16 threads.
- CPU per component, percent of one core, and peak resident memory of each process tree, both
  sampled from /proc every 0.5 s while the scenario runs (publish start to last delivery, plus
  up to half a second).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import multiprocessing
import queue as queue_module
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

from bench.e2eload import (
    BATCH_SIZE,
    Published,
    Raw,
    baseline,
    publish_at_rate,
    publish_saturated,
)
from bench.system import COMPONENTS, BenchSystem
from bench.tables import render
from testing.procstats import RssSampler
from testing.sink import FastSink


def percentiles(values: list[float]) -> tuple[float, float] | None:
    """(p50, p99) in milliseconds of latencies in seconds."""
    if not values:
        return None
    ordered = sorted(values)
    nearest_rank = math.ceil(len(ordered) * 0.99) - 1
    return statistics.median(ordered) * 1000, ordered[nearest_rank] * 1000


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Measured:
    """One row of a table."""

    scenario: str
    deliveries: int
    seconds: float  #: first publish to last delivery (saturated) or the paced duration
    publish: tuple[float, float] | None  #: p50, p99 ms per publish request
    transit: tuple[float, float] | None  #: p50, p99 ms publish → sink (paced rows)
    lost: int  #: expected deliveries that did not arrive, plus events not accepted
    cpu: dict[str, float]  #: percent of one core per component
    rss: dict[str, int]  #: peak resident bytes per component

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0


def run_scenario(
    system: BenchSystem,
    name: str,
    publisher: Callable[..., None],
    arguments: tuple[Any, ...],
    expected: int,
    paced_seconds: float | None = None,
) -> Measured:
    """Run ``publisher`` in its own process against a fresh sink; wait for ``expected``
    deliveries (or 15 s without one) while sampling every component's CPU and memory."""
    print(f"running: {name}", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with FastSink(system.sink_port) as sink:
        results = ctx.Queue()
        publishing = ctx.Process(target=publisher, args=(*arguments, results))
        with RssSampler(system.roots()) as sampler:
            sampled_from = time.perf_counter()
            publishing.start()
            while True:
                try:
                    published: Published = results.get(timeout=1)
                    break
                except queue_module.Empty:
                    if not publishing.is_alive():
                        raise SystemExit("the publisher died (its traceback is above)") from None
            publishing.join()
            seen, quiet_since = -1, time.monotonic()
            while sink.deliveries < expected and time.monotonic() - quiet_since < 15:
                if sink.deliveries != seen:
                    seen, quiet_since = sink.deliveries, time.monotonic()
                time.sleep(0.1)
            sampler.sample()
            sampled = time.perf_counter() - sampled_from
        arrivals = sink.stop()
    if paced_seconds is None:
        last = max((arrival.at for arrival in arrivals), default=published.started)
        seconds = last - published.started
    else:
        seconds = paced_seconds
    transit = percentiles([a.at - a.sent for a in arrivals if a.sent])
    return Measured(
        scenario=name,
        deliveries=len(arrivals),
        seconds=seconds,
        publish=percentiles(published.latencies),
        transit=transit if paced_seconds is not None else None,
        lost=published.failures + max(0, expected - len(arrivals)),
        cpu={n: p.cpu_used() / sampled * 100 for n, p in sampler.peaks.items()},
        rss={n: p.total for n, p in sampler.peaks.items()},
    )


#: Numbers scenarios, so each has event ids of its own: JetStream stores a repeated (source, id)
#: once, within its duplicate window.
_SCENARIOS = itertools.count()


def saturated(system: BenchSystem, subscriptions: int, deliveries: int, label: str) -> Measured:
    events = max(BATCH_SIZE, deliveries // subscriptions)
    tag = f"saturated-{next(_SCENARIOS)}"
    return run_scenario(
        system,
        f"{subscriptions} sub{'s' if subscriptions > 1 else ''}, {label}",
        publish_saturated,
        (system.proxy, tag, events),
        events * subscriptions,
    )


def paced(
    system: BenchSystem, subscriptions: int, deliveries: int, seconds: float, label: str = ""
) -> Measured:
    """``deliveries`` per second in all: ``deliveries ÷ subscriptions`` events per second."""
    rate = max(1, deliveries // subscriptions)
    plural = "s" if subscriptions > 1 else ""
    return run_scenario(
        system,
        f"{subscriptions} sub{plural}, paced {rate:,} events/s = {rate * subscriptions:,}"
        f" deliveries/s{', ' + label if label else ''}",
        publish_at_rate,
        (system.proxy, f"paced-{next(_SCENARIOS)}", rate, seconds),
        int(rate * seconds) * subscriptions,
        paced_seconds=seconds,
    )


def _cpu_ms(row: Measured) -> float:
    """Milliseconds of the workers' CPU per delivery in a saturated row."""
    return row.cpu.get("workers", 0) / 100 / row.rate * 1000 if row.rate else 0.0


def table(rows: list[Measured], raw: Raw) -> str:
    head = (
        "scenario",
        "delivered/s",
        "publish p50 / p99 ms",
        "publish→sink p50 / p99 ms",
        "lost",
        "÷ raw pull+ack",
        "CPU % " + " / ".join(COMPONENTS),
        "peak RSS MiB " + " / ".join(COMPONENTS),
    )

    def pair(values: tuple[float, float] | None) -> str:
        return f"{values[0]:.1f} / {values[1]:.1f}" if values else "-"

    lines = [
        (
            row.scenario,
            f"{row.rate:,.0f}",
            pair(row.publish),
            pair(row.transit),
            f"{row.lost:,}",
            f"{row.rate / raw.pull_ack:.2f}x",
            " / ".join(f"{row.cpu.get(c, 0):.0f}" for c in COMPONENTS),
            " / ".join(f"{row.rss.get(c, 0) / 2**20:.0f}" for c in COMPONENTS),
        )
        for row in rows
    ]
    return render(head, lines)


# ---------------------------------------------------------------- the run


SUITES = ("e2e", "fanout", "scaling")


def run(suites: list[str], events: int, rate: int, seconds: float, *, signed: bool = False) -> int:
    """Run the end-to-end ``suites`` (see :data:`SUITES`) and print their tables; ``signed``
    repeats the e2e rows with the subscription's deliveries signed, in the same run."""
    workdir = Path(tempfile.mkdtemp(prefix="eventing-bench-e2e-"))
    system = BenchSystem(workdir)
    tables: list[tuple[str, list[Measured]]] = []
    try:
        system.start()
        ctx = multiprocessing.get_context("spawn")
        raw_out = ctx.Queue()
        process = ctx.Process(target=baseline, args=(system.nats.url, events, raw_out))
        process.start()
        raw: Raw = raw_out.get(timeout=600)
        process.join()
        if "e2e" in suites:
            system.subscribe(1)
            rows = [saturated(system, 1, events, "saturated"), paced(system, 1, rate, seconds)]
            if signed:
                system.subscribe(1, signed=True)
                rows.append(saturated(system, 1, events, "saturated, signed"))
                rows.append(paced(system, 1, rate, seconds, "signed"))
            tables.append(("End to end, 1 subscription", rows))
        if "fanout" in suites:
            rows = []
            for count in (1, 10, 100):
                system.subscribe(count)
                rows.append(saturated(system, count, events, "fan-out saturated"))
                rows.append(paced(system, count, rate, seconds))
            tables.append(("Fan-out: one type, 1 / 10 / 100 subscriptions", rows))
        if "scaling" in suites:
            system.subscribe(1)
            rows = []
            for processes in (1, 2, 4):
                system.start_workers(processes)
                rows.append(saturated(system, 1, events, f"{processes} worker processes"))
            tables.append(("Scaling: worker processes (16 threads each), 1 subscription", rows))
        delivered = sum(row.deliveries for _, rows in tables for row in rows)
        ledger = _stream_state(system.nats.url, "sap-ledger")
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nbaseline, raw nats-py JetStream on this machine now: publish with PubAcks (256 in"
        f" flight) {raw.publish:,.0f}/s; pull + confirmed ack {raw.pull_ack:,.0f}/s"
    )
    for title, rows in tables:
        print(f"\n{title}\n")
        print(table(rows, raw))
    if signed and "e2e" in suites:
        plain, signed_row = tables[0][1][0], tables[0][1][2]
        print(
            f"\nsigning's cost, saturated: signed {signed_row.rate:,.0f}/s ÷ unsigned"
            f" {plain.rate:,.0f}/s = {signed_row.rate / plain.rate:.2f}; workers' CPU per delivery"
            f" {_cpu_ms(signed_row):.2f} ms ÷ {_cpu_ms(plain):.2f} ms ="
            f" {_cpu_ms(signed_row) / _cpu_ms(plain):.2f}"
        )
    if ledger is not None and ledger[0]:
        records, stored = ledger
        print(
            f"\ndelivery ledger: {records:,} records for {delivered:,} deliveries, {stored:,} bytes"
            f" = {stored / records:.0f} B a record, {records / delivered:.2f} records a delivery"
            f" = {stored / delivered * 1e6 / 2**20:,.0f} MiB per million deliveries"
        )
    print(
        "\nCPU %: percent of one core over the scenario (2 cores = 200 %); peak RSS: the largest"
        " sum over each component's processes.\nlost: deliveries that never arrived plus events"
        " the proxy did not accept; it must be 0."
    )
    return 0 if all(row.lost == 0 for _, rows in tables for row in rows) else 1


def _stream_state(url: str, stream: str) -> tuple[int, int] | None:
    """(messages, bytes) ``stream`` holds; None when there is no such stream (the ledger off)."""

    async def read() -> tuple[int, int] | None:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            return None
        finally:
            await nc.close()
        return info.state.messages, info.state.bytes

    return asyncio.run(read())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="deliveries per saturated row")
    parser.add_argument("--rate", type=int, default=500, help="deliveries/s of the paced rows")
    parser.add_argument("--seconds", type=float, default=10, help="length of the paced rows")
    parser.add_argument(
        "--signed", action="store_true", help="repeat the e2e rows with signed deliveries"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the run like Ctrl-C, so the processes below are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    return run(list(SUITES), args.events, args.rate, args.seconds, signed=args.signed)


if __name__ == "__main__":
    sys.exit(main())
