"""Ctrl-C on ``honcho start`` with events in flight: how long each process takes to stop.

Alone: ``.venv/bin/python -m bench.shutdown [--runs 5] [--rate 40]`` (about 20 s per run).

Method: the real ``honcho start`` of the repository's Procfile, with its own env file and free
loopback ports (testing/honcho.py), one subscription to a loopback sink that takes 0.3 s
per event, and a steady stream of ``--rate`` events/s published to the proxy, so about a dozen
deliveries are in flight when SIGINT reaches honcho (as a terminal's Ctrl-C does; honcho then
sends SIGTERM to every process at once). Each process's stop time is the arrival of honcho's
"<name> stopped (rc=…)" line after the SIGINT; SIGKILL says honcho had to kill it (5 s after the
first process stopped). Then honcho starts again on the same data and runs until the stream is
empty (every event acknowledged; one whose ack was lost comes back after the ack wait, 9 s);
events the sink answered 2xx before the SIGINT that it receives again are counted ("again",
must be 0), and so are repeats of those it answered during the shutdown.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.tables import render
from testing.honcho import HonchoRun

_NAMES = ("nats", "redis", "proxy", "manager", "worker", "display")
_SETTLE_WITHIN = 40.0  # seconds after the restart; redelivery after the ack wait takes 9


def one_run(workdir: Path, rate: float) -> tuple[str, ...]:
    """One interrupted run and its restart; the table row."""
    run = HonchoRun(workdir)
    try:
        run.start()
        run.publish_steadily(rate)
        time.sleep(3)
        stops = {stop.name: stop for stop in run.interrupt()}
        in_flight = run.in_flight_at_interrupt
        before = run.sink.answered_before(run.interrupted_at)
        during = run.sink.answered_before(time.monotonic()) - before
        counts = {event_id: run.sink.count(event_id) for event_id in before | during}
        run.start()
        run.wait_settled(_SETTLE_WITHIN)
        run.interrupt()
        again = {i for i in before if run.sink.count(i) > counts[i]}
        again_during = {i for i in during if run.sink.count(i) > counts[i]}
    finally:
        run.close()
    cells = []
    for name in _NAMES:
        stop = stops.get(name)
        cells.append("-" if stop is None else f"{stop.after:.2f}{' KILLED' if stop.killed else ''}")
    return (
        str(in_flight),
        *cells,
        str(len(before)),
        str(len(again)),
        f"{len(again_during)}/{len(during)}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=40.0, help="events per second")
    args = parser.parse_args()
    rows: list[tuple[str, ...]] = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="eventing-shutdown-") as workdir:
            rows.append((str(number + 1), *one_run(Path(workdir), args.rate)))
            print(" ".join(rows[-1]), flush=True)
    header = (
        "run",
        "in flight",
        *(f"{name} s" for name in _NAMES),
        "2xx before",
        "again",
        "again/2xx in stop",
    )
    print(render(header, rows))


if __name__ == "__main__":
    main()
