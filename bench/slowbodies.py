"""Slow bodies: 256 sockets trickle request bodies while a steady publisher probes the proxy.

Run from the repository root: ``.venv/bin/python -m bench.slowbodies [--sockets 256]
[--seconds 30] [--rate 50]``; it needs ``redis-server`` and takes about 40 s.

Why: under granian's WSGI interface a body being read held a request thread, so as many sockets
as the proxy has threads, each trickling a byte every few seconds, locked every publisher out
(all 503) for as long as they liked. The proxy now reads bodies before a thread sees them, within
``PROXY_BODY_TIMEOUT`` and at ``PROXY_BODY_MIN_RATE`` at least, and answers 408 otherwise
(:mod:`proxy.bodies`); this measures what a well-behaved publisher sees meanwhile.

Method:

- A nats-server and a redis-server of our own, and the system as deployed (``System`` of
  ``testing/system.py``: the proxy with 2 granian workers, manager, one worker).
- ``--sockets`` tricklers, each on a connection of its own: the headers of a binary-mode publish
  announcing a 1,000-byte body, then one byte every ``--trickle-every`` seconds until the proxy
  answers or closes; then at once a new connection, so that ``--sockets`` trickle all the time.
- Meanwhile the probe: ``--rate`` single-event publishes a second for ``--seconds``, each due
  at a fixed time whatever the answers (open loop), each on a new connection, each allowed
  ``PROBE_TIMEOUT`` seconds. Success is a 204 within that time.

Prints the probe's success rate and latency and what the tricklers got; exit status 1 if the
probe's success rate is below 95 % or a trickler's event was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.tables import render
from testing import fuzzing
from testing.servers import NatsServer, RedisServer, nats_server_binary, redis_server_binary
from testing.system import System

PROBE_TIMEOUT = 5.0  #: seconds a probe publish may take to count as a success
MIN_SUCCESS = 0.95
BODY_SIZE = 1000  #: bytes a trickler announces and never finishes sending
STREAM = "sap"  #: the default JS_STREAM_NAME


@dataclass
class Tally:
    """What the tricklers and the probe got."""

    trickler_answers: Counter[str] = field(default_factory=Counter)  #: status or "closed"
    trickler_seconds: list[float] = field(default_factory=list)  #: headers sent → answer
    probe: Counter[str] = field(default_factory=Counter)  #: status, "timeout" or error
    probe_latencies: list[float] = field(default_factory=list)  #: of the 204s, seconds


def _publish(event_id: str, body: bytes, length: int) -> bytes:
    return (
        b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nce-specversion: 1.0\r\nce-source: bench\r\n"
        b"ce-type: order.created.v1\r\nce-id: " + event_id.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length + body
    )


async def _status(reader: asyncio.StreamReader) -> str:
    line = await reader.readline()
    parts = line.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and parts[1].isdigit() else "closed"


async def trickler(port: int, number: int, every: float, until: float, tally: Tally) -> None:
    """Keeps one trickling connection open until ``until``, reconnecting after each answer."""
    attempt = 0
    while time.monotonic() < until:
        attempt += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_publish(f"trickle-{number}-{attempt}", b"", BODY_SIZE))
        started = time.monotonic()
        answer = asyncio.ensure_future(_status(reader))
        try:
            while not answer.done() and time.monotonic() < until:
                writer.write(b"x")
                await asyncio.wait([answer], timeout=every)
            if answer.done():
                tally.trickler_answers[answer.result()] += 1
                tally.trickler_seconds.append(time.monotonic() - started)
        except (ConnectionError, OSError):
            tally.trickler_answers["closed"] += 1
        finally:
            answer.cancel()
            writer.close()


async def probe(port: int, number: int, tally: Tally) -> None:
    started = time.monotonic()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_publish(f"probe-{number}", b'{"n": 1}', 8))
            status = await _status(reader)
            writer.close()
    except TimeoutError:
        status = "timeout"
    except OSError as exc:
        status = type(exc).__name__
    tally.probe[status] += 1
    if status == "204":
        tally.probe_latencies.append(time.monotonic() - started)


async def offer(port: int, args: argparse.Namespace) -> Tally:
    tally = Tally()
    until = time.monotonic() + args.seconds + 2
    tricklers = [
        asyncio.create_task(trickler(port, n, args.trickle_every, until, tally))
        for n in range(args.sockets)
    ]
    await asyncio.sleep(2)  # every trickler has sent its headers
    probes = []
    start = time.monotonic()
    for number in range(int(args.rate * args.seconds)):
        await asyncio.sleep(max(0.0, start + number / args.rate - time.monotonic()))
        probes.append(asyncio.create_task(probe(port, number, tally)))
    await asyncio.gather(*probes)
    await asyncio.gather(*tricklers)
    return tally


def measure(args: argparse.Namespace, workdir: Path) -> tuple[Tally, list[str]]:
    nats_binary, redis_binary = nats_server_binary(), redis_server_binary()
    assert nats_binary is not None and redis_binary is not None
    for name in ("nats", "redis"):
        (workdir / name).mkdir()
    nats_server = NatsServer(nats_binary, workdir / "nats")
    redis = RedisServer(redis_binary, workdir / "redis")
    system: System | None = None
    try:
        nats_server.start()
        redis.start()
        # limits retention: the stream keeps what no subscription wants, to be counted after
        system = System(
            nats_server, redis, workdir, PROXY_WORKERS="2", JS_STREAM_RETENTION_POLICY="limits"
        ).start()
        tally = asyncio.run(offer(system.proxy_port, args))
        return tally, fuzzing.stored_ids(nats_server.url, STREAM)
    finally:
        if system is not None:
            system.stop()
        redis.kill()
        nats_server.kill()


def report(tally: Tally, stored: list[str], args: argparse.Namespace) -> bool:
    sent = sum(tally.probe.values())
    success = tally.probe["204"] / sent if sent else 0.0
    latencies = sorted(tally.probe_latencies)
    p99 = latencies[max(0, round(0.99 * len(latencies)) - 1)] if latencies else float("nan")
    from_tricklers = sum(1 for event_id in stored if event_id.startswith("trickle-"))
    from_probe = sum(1 for event_id in stored if event_id.startswith("probe-"))
    answered = sum(tally.trickler_answers.values())
    rows = [
        ("trickling sockets", f"{args.sockets}", ""),
        ("probe publishes sent", f"{sent:,}", f"{args.rate:g}/s for {args.seconds:g} s"),
        ("probe success (204 within 5 s)", f"{100 * success:.1f} %", f"at least {MIN_SUCCESS:.0%}"),
        ("probe answers", ", ".join(f"{k}: {v}" for k, v in sorted(tally.probe.items())), ""),
        (
            "probe latency p50 / p99",
            f"{1000 * statistics.median(latencies):.0f} / {1000 * p99:.0f} ms"
            if latencies
            else "-",
            "",
        ),
        (
            "trickler answers",
            ", ".join(f"{k}: {v}" for k, v in sorted(tally.trickler_answers.items())),
            f"{answered:,} trickled requests",
        ),
        (
            "trickler time to answer, median",
            f"{statistics.median(tally.trickler_seconds):.1f} s" if tally.trickler_seconds else "-",
            "",
        ),
        ("events stored from tricklers", f"{from_tricklers}", "must be 0"),
        ("events stored from the probe", f"{from_probe:,}", "every 204, at least"),
    ]
    print(render(("", "measured", "note"), rows))
    return success >= MIN_SUCCESS and from_tricklers == 0 and from_probe >= tally.probe["204"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.slowbodies", description=__doc__)
    parser.add_argument("--sockets", type=int, default=256, help="trickling sockets (256)")
    parser.add_argument("--seconds", type=float, default=30, help="probe duration (30)")
    parser.add_argument("--rate", type=float, default=50, help="probe publishes a second (50)")
    parser.add_argument(
        "--trickle-every", type=float, default=2, help="seconds between two trickled bytes (2)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-slowbodies-") as folder:
        tally, stored = measure(args, Path(folder))
    return 0 if report(tally, stored, args) else 1


if __name__ == "__main__":
    sys.exit(main())
