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
  request. The e2e suite repeats it with single binary-mode events on the 8 connections, the
  load of issue 16's comparison with Kyma (which has no batch mode): the proxy's cost per event
  then counts in full.
- Paced rows: single binary-mode events at a fixed rate from 16 threads, at 300 events/s and at
  ``--rate`` (500), the rates of issue 16's publish→sink p99 targets (printed beside them); each
  latency counts from when its request was due (a publisher that falls behind shows in p99), and
  publish→sink from just before the request to the sink's arrival, both on this machine's clock.
- Fan-out: 1, 10 and 100 subscriptions of the one type (every event delivered once per
  subscription), with as many events as make the same number of deliveries.
- Scaling: one subscription, saturated, with 1, 2 and 4 worker processes of 16 threads.
- CPU per component in milliseconds per delivery, and their sum ("ours", issue 16's target: at
  most 1.0 ms), and peak resident memory of each process tree, sampled from /proc every 0.5 s
  while the scenario runs (publish start to last delivery, plus up to half a second).
- The load generator (the publisher process, from getrusage once reaped) and the sink (sampled
  like the components) share the two cores with the system: their CPU per delivery and percent
  of one core are shown apart, beside the whole machine's busy time, and a line under each table
  says how much of the machine they took, so a row limited by the machine reads as such.
- Lost and duplicates from the ids the sink saw: every event must arrive once per subscription;
  a copy beyond that is a duplicate (allowed: at least once) and does not stand in for a lost one.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import multiprocessing
import os
import queue as queue_module
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.e2eload import (
    BATCH_SIZE,
    Published,
    Raw,
    baseline,
    publish_at_rate,
    publish_saturated,
)
from bench.publishers import stream_state
from bench.system import COMPONENTS, BenchSystem
from bench.tables import ms, ms_per, render
from testing.procstats import RssSampler, machine_busy_seconds
from testing.sink import FastSink


def percentiles(values: list[float]) -> tuple[float, float] | None:
    """(p50, p99) in milliseconds of latencies in seconds."""
    if not values:
        return None
    ordered = sorted(values)
    nearest_rank = math.ceil(len(ordered) * 0.99) - 1
    return statistics.median(ordered) * 1000, ordered[nearest_rank] * 1000


# ---------------------------------------------------------------- scenarios


#: The paced rows' publish→sink p99 targets of issue 16, ms by events/s.
P99_TARGETS = {300: 50.0, 500: 100.0}


def paced_rates(rate: int) -> list[int]:
    """The e2e suite's paced rates: each target rate below ``rate``, then ``rate`` itself."""
    return [target for target in P99_TARGETS if target < rate] + [rate]


def lost_and_duplicates(ids: Iterable[str], events: int, copies: int) -> tuple[int, int]:
    """(lost, duplicates) when ``events`` distinct events should each arrive ``copies`` times
    (once per subscription) and the sink saw ``ids``: a copy beyond ``copies`` is a duplicate
    and does not make up for a missing one."""
    arrived = Counter(ids)
    duplicates = sum(max(0, count - copies) for count in arrived.values())
    delivered = sum(min(count, copies) for count in arrived.values())
    return max(0, events * copies - delivered), duplicates


@dataclass(frozen=True)
class Measured:
    """One row of a table."""

    scenario: str
    deliveries: int
    seconds: float  #: first publish to last delivery (saturated) or the paced duration
    publish: tuple[float, float] | None  #: p50, p99 ms per publish request
    transit: tuple[float, float] | None  #: p50, p99 ms publish → sink (paced rows)
    lost: int  #: expected deliveries that did not arrive, plus events not accepted
    duplicates: int  #: deliveries beyond one per event and subscription
    sampled: float  #: seconds over which CPU was counted
    cpu: dict[str, float]  #: CPU seconds per component while sampled
    load: float  #: CPU seconds of the publisher process
    sink: float  #: CPU seconds of the sink process while sampled
    machine: float  #: CPU seconds every core was busy while sampled
    rss: dict[str, int]  #: peak resident bytes per component
    target_p99: float | None = None  #: the issue's publish→sink p99 target at this rate, ms

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0

    def ms_per_delivery(self, cpu_seconds: float) -> float:
        return ms_per(cpu_seconds, self.deliveries)

    @property
    def ours(self) -> float:
        """CPU seconds of all the system's own processes: every component."""
        return sum(self.cpu.values())

    @property
    def other(self) -> float:
        """CPU seconds of the rest of the machine (this driver, anything else running)."""
        return max(0.0, self.machine - self.ours - self.load - self.sink)

    def percent(self, cpu_seconds: float) -> float:
        """``cpu_seconds`` in percent of one core over the sampled time."""
        return cpu_seconds / self.sampled * 100 if self.sampled else 0.0


def run_scenario(
    system: BenchSystem,
    name: str,
    publisher: Callable[..., None],
    arguments: tuple[Any, ...],
    events: int,
    copies: int,
    paced_seconds: float | None = None,
) -> Measured:
    """Run ``publisher`` in its own process against a fresh sink; wait for ``events`` x
    ``copies`` deliveries (or 15 s without one) while sampling every component's CPU and memory,
    the sink's CPU and the machine's. The publisher's CPU comes from getrusage once it is
    reaped: it exits before the last sample."""
    print(f"running: {name}", flush=True)
    expected = events * copies
    ctx = multiprocessing.get_context("spawn")
    with FastSink(system.sink_port) as sink:
        results = ctx.Queue()
        publishing = ctx.Process(target=publisher, args=(*arguments, results))
        assert sink.pid is not None
        with RssSampler({**system.roots(), "sink": sink.pid}) as sampler:
            sampled_from, machine_from = time.perf_counter(), machine_busy_seconds()
            children_from = reaped_cpu_seconds()
            publishing.start()
            while True:
                try:
                    published: Published = results.get(timeout=1)
                    break
                except queue_module.Empty:
                    if not publishing.is_alive():
                        raise SystemExit("the publisher died (its traceback is above)") from None
            publishing.join()
            load = reaped_cpu_seconds() - children_from
            seen, quiet_since = -1, time.monotonic()
            while (sink.deliveries < expected or sink.distinct < events) and (
                time.monotonic() - quiet_since < 15
            ):
                if sink.deliveries != seen:
                    seen, quiet_since = sink.deliveries, time.monotonic()
                time.sleep(0.1)
            sampler.sample()
            sampled = time.perf_counter() - sampled_from
            machine = machine_busy_seconds() - machine_from
        arrivals = sink.stop()
    if paced_seconds is None:
        last = max((arrival.at for arrival in arrivals), default=published.started)
        seconds = last - published.started
    else:
        seconds = paced_seconds
    transit = percentiles([a.at - a.sent for a in arrivals if a.sent])
    missing, duplicates = lost_and_duplicates((a.event_id for a in arrivals), events, copies)
    return Measured(
        scenario=name,
        deliveries=len(arrivals),
        seconds=seconds,
        publish=percentiles(published.latencies),
        transit=transit if paced_seconds is not None else None,
        lost=published.failures + missing,
        duplicates=duplicates,
        sampled=sampled,
        cpu={c: sampler.peaks[c].cpu_used() for c in COMPONENTS},
        load=load,
        sink=sampler.peaks["sink"].cpu_used(),
        machine=machine,
        rss={c: sampler.peaks[c].total for c in COMPONENTS},
    )


def reaped_cpu_seconds() -> float:
    """User plus system CPU time of this process's children that have been waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


#: Numbers scenarios, so each has event ids of its own: JetStream stores a repeated (source, id)
#: once, within its duplicate window.
_SCENARIOS = itertools.count()


def saturated(
    system: BenchSystem,
    subscriptions: int,
    deliveries: int,
    label: str,
    batch_size: int = BATCH_SIZE,
) -> Measured:
    """``deliveries`` in all as fast as the system takes them, published in batches of
    ``batch_size`` (1: single binary-mode events)."""
    events = max(batch_size, deliveries // subscriptions)
    tag = f"saturated-{next(_SCENARIOS)}"
    return run_scenario(
        system,
        f"{subscriptions} sub{'s' if subscriptions > 1 else ''}, {label}",
        publish_saturated,
        (system.proxy, tag, events, batch_size),
        events,
        subscriptions,
    )


def paced(
    system: BenchSystem, subscriptions: int, deliveries: int, seconds: float, label: str = ""
) -> Measured:
    """``deliveries`` per second in all: ``deliveries ÷ subscriptions`` events per second."""
    rate = max(1, deliveries // subscriptions)
    plural = "s" if subscriptions > 1 else ""
    row = run_scenario(
        system,
        f"{subscriptions} sub{plural}, paced {rate:,} events/s = {rate * subscriptions:,}"
        f" deliveries/s{', ' + label if label else ''}",
        publish_at_rate,
        (system.proxy, f"paced-{next(_SCENARIOS)}", rate, seconds),
        int(rate * seconds),
        subscriptions,
        paced_seconds=seconds,
    )
    return replace(row, target_p99=P99_TARGETS.get(rate) if subscriptions == 1 else None)


def _cpu_ms(row: Measured) -> float:
    """Milliseconds of the workers' CPU per delivery."""
    return row.ms_per_delivery(row.cpu["workers"])


def table(rows: list[Measured], raw: Raw) -> str:
    head = (
        "scenario",
        "delivered/s",
        "÷ raw pull+ack",
        "publish p50 / p99 ms",
        "publish→sink p50 / p99 ms",
        "p99 target ms",
        "lost",
        "dups",
        "CPU ms/delivery " + " / ".join(COMPONENTS),
        "CPU ms/delivery, ours (target ≤ 1.0)",
        "CPU ms/delivery load gen / sink",
        "CPU % load gen / sink / other / machine",
        "peak RSS MiB " + " / ".join(COMPONENTS),
    )

    def pair(values: tuple[float, float] | None) -> str:
        return f"{values[0]:.1f} / {values[1]:.1f}" if values else "-"

    lines = [
        (
            row.scenario,
            f"{row.rate:,.0f}",
            f"{row.rate / raw.pull_ack:.2f}x",
            pair(row.publish),
            pair(row.transit),
            "-" if row.target_p99 is None else f"< {row.target_p99:.0f}",
            f"{row.lost:,}",
            f"{row.duplicates:,}",
            " / ".join(ms(row.ms_per_delivery(row.cpu[c])) for c in COMPONENTS),
            ms(row.ms_per_delivery(row.ours)),
            f"{ms(row.ms_per_delivery(row.load))} / {ms(row.ms_per_delivery(row.sink))}",
            f"{row.percent(row.load):.0f} / {row.percent(row.sink):.0f}"
            f" / {row.percent(row.other):.0f} / {row.percent(row.machine):.0f}",
            " / ".join(f"{row.rss.get(c, 0) / 2**20:.0f}" for c in COMPONENTS),
        )
        for row in rows
    ]
    return render(head, lines)


def machine_share(rows: list[Measured]) -> str:
    """One line: how much of the machine the publisher and the sink took in the row where they
    took most, beside how busy the machine was then."""
    cores = len(os.sched_getaffinity(0))
    row = max(rows, key=lambda row: row.percent(row.load + row.sink))
    return (
        f"load generator and sink: at most {row.percent(row.load):.0f} % + "
        f"{row.percent(row.sink):.0f} % of the machine's {cores * 100} % ({row.scenario}), while"
        f" the machine was {row.percent(row.machine):.0f} % busy; a row near {cores * 100} % busy"
        " is limited by the machine, not by the system"
    )


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
            rows = [
                saturated(system, 1, events, "saturated"),
                saturated(system, 1, events, "saturated, single events", batch_size=1),
            ]
            rows += [paced(system, 1, paced_rate, seconds) for paced_rate in paced_rates(rate)]
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
        ledger = asyncio.run(stream_state(system.nats.url, "sap-ledger"))
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
        print(machine_share(rows))
    if signed and "e2e" in suites:
        plain, signed_row = tables[0][1][0], tables[0][1][2 + len(paced_rates(rate))]
        print(
            f"\nsigning's cost, saturated: signed {signed_row.rate:,.0f}/s ÷ unsigned"
            f" {plain.rate:,.0f}/s = {signed_row.rate / plain.rate:.2f}; workers' CPU per delivery"
            f" {_cpu_ms(signed_row):.2f} ms ÷ {_cpu_ms(plain):.2f} ms ="
            f" {_cpu_ms(signed_row) / _cpu_ms(plain):.2f}"
        )
    if ledger is not None and ledger.messages:
        records, stored = ledger
        print(
            f"\ndelivery ledger: {records:,} records for {delivered:,} deliveries, {stored:,} bytes"
            f" = {stored / records:.0f} B a record, {records / delivered:.2f} records a delivery"
            f" = {stored / delivered * 1e6 / 2**20:,.0f} MiB per million deliveries"
        )
    print(
        "\nCPU ms/delivery: CPU time of each component's process tree per delivery, from the"
        " first publish to the last delivery; ours: their sum (issue 16's target: at most 1.0)."
        "\nload gen: the publisher process; sink: the bench's sink; both share the cores with"
        " the system. CPU %: percent of one core over the scenario (2 cores = 200 %); machine:"
        " every core's busy time; other: the machine less all of these (this driver, anything"
        " else running: a high value means a disturbed run).\npeak RSS: the largest sum over"
        " each component's processes.\nlost: deliveries that never arrived plus events the"
        " proxy did not accept, it must be 0; dups: deliveries beyond one per event and"
        " subscription, 0 unless something was redelivered (at least once allows it)."
    )
    return 0 if all(row.lost == 0 for _, rows in tables for row in rows) else 1


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
