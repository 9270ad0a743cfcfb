"""``python -m bench``: every performance table of docs/performance.md in one run.

Suites (all by default, or pick with ``--suite``):

- ``publish``: the proxy alone, driven by wrk and a paced client, next to raw nats-py publishing
  (:mod:`bench.publish`; needs ``wrk``).
- ``e2e``: publish → sink with one subscription, saturated and paced.
- ``fanout``: 1, 10 and 100 subscriptions of one type.
- ``scaling``: 1, 2 and 4 worker processes.
- ``slowbodies``: 256 sockets trickling bodies while a steady publisher probes
  (:mod:`bench.slowbodies`).
- ``idle``: CPU of every process and Redis commands/s with nothing published, then
  publish→sink latency at 5 events/s (:mod:`bench.idle`).
- ``peers``: Kyma's publisher proxy and eventing-manager beside ours, same load, alternating
  rounds (:mod:`bench.peers`); only with ``--kyma-epp`` (built binaries), and as root.

The last three share one running system (:mod:`bench.e2e`). Each starts the services as
``honcho start`` does, on loopback, with load from separate processes, and prints a table with
events/s, publish and publish→sink latency, CPU and peak memory per component, and the ratio to
raw nats-py JetStream measured in the same run. With the defaults the whole run takes about
five minutes on two cores; ``--quick`` shortens every scenario for a smoke run.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys

from bench import e2e, idle, peers, publish, slowbodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--suite",
        action="append",
        choices=("publish", *e2e.SUITES, "slowbodies", "idle", "peers"),
        help="run only this suite (repeatable; default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short scenarios: a smoke run, not figures to quote"
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="the e2e suite repeats its rows with signed deliveries (Standard Webhooks)",
    )
    peers.add_arguments(parser)
    args = parser.parse_args(argv)
    suites = args.suite or ["publish", *e2e.SUITES, "slowbodies", "idle", "peers"]
    if "peers" in suites and args.kyma_epp is None:
        if args.suite:
            parser.error("the peer suite needs --kyma-epp PATH (and --kyma-manager PATH for e2e)")
        print("peer suite not run: it needs --kyma-epp PATH [--kyma-manager PATH]", flush=True)
        suites.remove("peers")
    # SIGTERM ends the run like Ctrl-C, so the services are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    status = 0
    if "publish" in suites:
        if shutil.which("wrk") is None:
            print("the publish suite needs wrk: apt-get install wrk", file=sys.stderr)
            return 2
        quick = ["--duration", "3", "--connections", "64", "--rates", "500"]
        status |= publish.run(publish.parse_args(quick if args.quick else []))
    chosen = [suite for suite in e2e.SUITES if suite in suites]
    if chosen:
        events, seconds = (2_000, 3.0) if args.quick else (10_000, 10.0)
        status |= e2e.run(chosen, events=events, rate=500, seconds=seconds, signed=args.signed)
    if "slowbodies" in suites:
        status |= slowbodies.main(["--seconds", "5"] if args.quick else [])
    if "idle" in suites:
        status |= idle.run(seconds=10.0 if args.quick else 30.0)
    if "peers" in suites:
        status |= peers.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
