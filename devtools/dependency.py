"""``eventing-dependency``: runs a server the other Procfile processes need, and stops it last.

On Ctrl-C honcho sends SIGTERM to every process at once, so a local nats-server and Redis used
to stop together with their clients: a worker whose sink had just answered 2xx could not ack
any more (the event came again after a restart), and clients waiting for the vanished servers
outlived honcho's 5 s and were SIGKILLed. This wrapper starts the server in a process group of
its own, out of honcho's reach, and on SIGTERM keeps it serving until its clients have
disconnected (or ``--grace`` seconds passed, within honcho's 5 s), then stops it. The server
exits with the wrapper if the wrapper dies (Linux: ``PR_SET_PDEATHSIG``), and the wrapper exits
with the server if the server stops on its own, so honcho still sees it.

    eventing-dependency --nats-monitor 127.0.0.1:8222 -- nats-server -js -m 8222 …
    eventing-dependency --redis 127.0.0.1:6379 -- redis-server --port 6379 …

Not for production: Kubernetes stops pods without this ordering, and the services are built to
survive that (an unacknowledged event is redelivered).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from types import FrameType

_POLL = 0.05  # seconds between looks at the client count
_EXIT_WAIT = 0.7  # seconds the server gets to exit after SIGTERM before it is killed
_PR_SET_PDEATHSIG = 1


def nats_clients(address: str) -> Callable[[], int]:
    """Connected clients of a nats-server, from its monitoring endpoint ``host:port``."""

    def count() -> int:
        with urllib.request.urlopen(f"http://{address}/connz?limit=1", timeout=0.5) as answer:
            return int(json.load(answer)["num_connections"])

    return count


def redis_clients(address: str) -> Callable[[], int]:
    """Connected clients of a Redis server at ``host:port`` (not counting this one)."""
    host, _, port = address.rpartition(":")

    def count() -> int:
        with socket.create_connection((host, int(port)), timeout=0.5) as connection:
            connection.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
            answer = b""
            while b"connected_clients:" not in answer or not answer.endswith(b"\r\n"):
                chunk = connection.recv(4096)
                if not chunk:
                    raise OSError("Redis closed the connection")
                answer += chunk
        line = answer.split(b"connected_clients:", 1)[1].split(b"\r\n", 1)[0]
        return int(line) - 1

    return count


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when the wrapper dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run(command: list[str], clients: Callable[[], int], grace: float) -> int:
    """Run ``command`` until it exits, or until SIGTERM/SIGINT and its clients are gone.

    Returns:
        The server's exit status (128 + signal number if a signal ended it).
    """
    stopping: list[float] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(time.monotonic())

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)
    while server.poll() is None and not stopping:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(_POLL)
    if server.returncode is None:
        deadline = stopping[0] + grace
        left = _wait_for_clients(clients, deadline, lambda: len(stopping) > 1)
        print(
            f"eventing-dependency: stopping {os.path.basename(command[0])}"
            + (f" ({left} clients still connected)" if left else " (no client left)"),
            file=sys.stderr,
            flush=True,
        )
        server.terminate()
        try:
            server.wait(_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    code = server.returncode
    return 128 - code if code < 0 else code


def _wait_for_clients(
    clients: Callable[[], int], deadline: float, hurry: Callable[[], bool]
) -> int:
    """Poll the client count until none is left, ``deadline`` passes or ``hurry`` says so;
    the last count (0 once the server stopped answering: nobody can be connected then)."""
    left = 0
    while time.monotonic() < deadline and not hurry():
        try:
            left = clients()
        except (OSError, ValueError, KeyError):
            left = 0
        if left <= 0:
            return 0
        time.sleep(_POLL)
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eventing-dependency", description=__doc__)
    counted = parser.add_mutually_exclusive_group(required=True)
    counted.add_argument("--nats-monitor", metavar="HOST:PORT", help="nats-server monitoring")
    counted.add_argument("--redis", metavar="HOST:PORT", help="Redis server")
    parser.add_argument(
        "--grace",
        type=float,
        default=3.5,
        help="longest wait for the clients after SIGTERM, seconds (honcho kills after 5)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the server's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the server's command is missing (after --)")
    clients = nats_clients(args.nats_monitor) if args.nats_monitor else redis_clients(args.redis)
    return run(command, clients, args.grace)


if __name__ == "__main__":
    sys.exit(main())
