"""Idle cost: CPU of every process, and Redis commands, while nothing is published.

Part of ``python -m bench`` (``--suite idle``). It starts the services as :mod:`bench.e2e`
does (one subscription, 2 worker processes x 16 threads), lets them settle, then samples each
process's CPU from /proc and Redis's command counters (``INFO commandstats``) over
``--idle-seconds`` (30 s) with nothing published. An idle system should cost next to nothing:
polling loops show up here as CPU and as Redis commands per second. Last, one paced row at 5
events/s checks that waking up costs no latency (publish→sink p50).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import redis

from bench import e2e
from bench.system import BenchSystem
from bench.tables import render
from testing.procstats import RssSampler

SETTLE_SECONDS = 5.0  # boot work (connecting, binding consumers) is not idle cost
PACED_RATE = 5


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        program, *arguments = (word.decode(errors="replace") for word in words if word)
        return " ".join([Path(program).name, *arguments])[:60]
    return "?"


def _redis_commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def run(seconds: float, subscriptions: int = 1) -> int:
    """Measure the idle system for ``seconds``, then one paced row; print both tables."""
    workdir = Path(tempfile.mkdtemp(prefix="eventing-bench-idle-"))
    system = BenchSystem(workdir)
    try:
        system.start()
        system.subscribe(subscriptions)
        time.sleep(SETTLE_SECONDS)
        client = redis.Redis(port=system.redis.port)
        with RssSampler(system.roots(), interval=1.0) as sampler:
            started, before = time.perf_counter(), _redis_commands(client)
            time.sleep(seconds)
            sampler.sample()
            elapsed, after = time.perf_counter() - started, _redis_commands(client)
            names = {pid: _command(pid) for peaks in sampler.peaks.values() for pid in peaks.cpu}
        paced = e2e.paced(system, subscriptions, PACED_RATE * subscriptions, 10.0)
    finally:
        system.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    total = 0.0
    for name, peaks in sampler.peaks.items():
        for pid, (first, last) in sorted(peaks.cpu.items()):
            percent = (last - first) / elapsed * 100
            total += percent
            rows.append((name, str(pid), names[pid], f"{percent:.2f}"))
    rows.append(("all", "", "", f"{total:.2f}"))
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    commands = [(name, f"{count / elapsed:.1f}") for name, count in sorted(calls.items()) if count]
    commands.append(("all", f"{sum(calls.values()) / elapsed:.1f}"))
    print(f"\nIdle for {elapsed:.0f} s, {subscriptions} subscription(s), nothing published\n")
    print(render(("component", "pid", "process", "CPU % of a core"), rows))
    print("\nRedis commands per second while idle (INFO commandstats)\n")
    print(render(("command", "per second"), commands))
    transit = paced.transit
    print(
        f"\npaced {PACED_RATE} events/s for 10 s: publish→sink p50 / p99"
        f" {transit[0]:.1f} / {transit[1]:.1f} ms, lost {paced.lost}"
        if transit
        else f"\npaced {PACED_RATE} events/s: nothing arrived, lost {paced.lost}"
    )
    return 0 if paced.lost == 0 else 1
