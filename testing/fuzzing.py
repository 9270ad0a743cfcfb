"""Send :mod:`testing.hostile` cases to a live proxy over raw sockets, and judge the result.

Used by ``bench/fuzz.py`` (50,000 requests, in a load process of its own) and by
``tests/integration/test_proxy_fuzz.py`` (a short run in CI), so both check the same things:

- no 5xx, no hang (no answer within ``TIMEOUT``), no connection error on a well-framed request;
- every answer agrees with what the case expects (a valid event accepted, an invalid one refused);
- JetStream holds exactly the events of the requests answered 2xx: none of a refused request,
  none unaccounted for, none missing. Each event id carries its case's marker, so
  :func:`stored_ids` of the stream can be traced back to requests.

The client speaks just enough HTTP/1.1 to read answers (Content-Length, chunked, until close) and
nothing that would tidy up what a case sends.
"""

from __future__ import annotations

import asyncio
import itertools
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventing.settings import SUBJECT_PREFIX
from testing import hostile

TIMEOUT: Final = 10.0  #: seconds a correct proxy may take to answer; longer is a hang
_MAX_HEAD: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one case got back (``status`` None: no answer)."""

    index: int
    kind: str
    expect: str
    events: int
    send: str
    status: int | None
    error: str | None  #: why there is no answer: "timeout", "reset", "closed", …
    seconds: float  #: from the last byte sent to the end of the answer
    retry_after: bool  #: the answer carries Retry-After
    traceback: bool  #: the answer's body shows a Python traceback


class _NoAnswer(Exception):
    """The connection ended or timed out before a complete answer."""


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.reusable = True

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise _NoAnswer("timeout") from None
        except OSError as exc:
            raise _NoAnswer(type(exc).__name__) from None
        if not chunk:
            raise _NoAnswer("closed")
        self._buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > _MAX_HEAD:
                raise _NoAnswer("no line end")
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read_answer(self, *, head: bool) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the next final answer."""
        while True:
            status_line = self._line()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise _NoAnswer(f"bad status line {status_line[:40]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            while line := self._line():
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if not 100 <= status < 200:
                break
        if parts[0] != b"HTTP/1.1" or "close" in headers.get("connection", "").lower():
            self.reusable = False
        if head or status in (204, 304):
            return status, headers, b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._exactly(size)
                self._line()
            while self._line():  # trailers
                pass
            return status, headers, body
        if "content-length" in headers:
            return status, headers, self._exactly(int(headers["content-length"]))
        self.reusable = False
        body = self._buffer
        try:
            while True:
                self._fill()
        except _NoAnswer:
            body, self._buffer = self._buffer, b""
        return status, headers, body


class Client:
    """Sends cases from one thread, reusing a keep-alive connection where the case allows."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._kept: _Connection | None = None

    def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def send(self, case: hostile.Case) -> Outcome:
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        headers: dict[str, str] = {}
        body = b""
        try:
            status, headers, body, started = self._exchange(case)
        except _NoAnswer as exc:
            error = str(exc)
        except OSError as exc:
            error = f"connect: {type(exc).__name__}"
        return Outcome(
            index=case.index,
            kind=case.kind,
            expect=case.expect,
            events=case.events,
            send=case.send,
            status=status,
            error=error,
            seconds=time.monotonic() - started,
            retry_after="retry-after" in headers,
            traceback=b"Traceback (most recent call last)" in body,
        )

    def answer(self, case: hostile.Case) -> tuple[int, dict[str, str], bytes] | str:
        """The case's answer (status, headers by lower-case name, body), or why there is none."""
        try:
            status, headers, body, _ = self._exchange(case)
        except _NoAnswer as exc:
            return str(exc)
        except OSError as exc:
            return f"connect: {type(exc).__name__}"
        return status, headers, body

    def _exchange(self, case: hostile.Case) -> tuple[int, dict[str, str], bytes, float]:
        if case.send == hostile.KEEPALIVE:
            return self._on_kept_connection(case)
        connection = _Connection(self._host, self._port)
        try:
            if case.send == hostile.SLOW_BODY:
                return _slow_body(connection, case)
            if case.send == hostile.TRICKLE:
                piece, pause = case.trickle
                for start in range(0, len(case.request), piece):
                    connection.sock.sendall(case.request[start : start + piece])
                    time.sleep(pause)
            else:
                connection.sock.sendall(case.request)
            if case.send == hostile.TRUNCATED:
                connection.sock.shutdown(socket.SHUT_WR)
            sent = time.monotonic()
            return (*connection.read_answer(head=case.head), sent)
        except OSError as exc:  # the server may close while a big request is still going out
            raise _NoAnswer(type(exc).__name__) from None
        finally:
            connection.close()

    def _on_kept_connection(self, case: hostile.Case) -> tuple[int, dict[str, str], bytes, float]:
        """One retry on a fresh connection if a kept one turns out closed before any answer:
        the server may close idle connections, and JetStream stores a repeated event once."""
        for attempt in (1, 2):
            fresh = self._kept is None
            if self._kept is None:
                self._kept = _Connection(self._host, self._port)
            connection = self._kept
            try:
                connection.sock.sendall(case.request)
                sent = time.monotonic()
                answer = connection.read_answer(head=case.head)
            except (_NoAnswer, OSError) as exc:
                self.close()
                timed_out = isinstance(exc, _NoAnswer) and str(exc) == "timeout"
                if fresh or timed_out or attempt == 2:
                    raise _NoAnswer(str(exc) or type(exc).__name__) from None
                continue
            if not connection.reusable:
                self.close()
            return (*answer, sent)
        raise AssertionError("unreachable")


def _slow_body(
    connection: _Connection, case: hostile.Case
) -> tuple[int, dict[str, str], bytes, float]:
    """The head at once, then the body ``piece`` bytes every ``pause`` seconds until an answer
    is there to read (the proxy must not wait for the rest)."""
    piece, pause = case.trickle
    body_start = case.request.index(b"\r\n\r\n") + 4
    connection.sock.sendall(case.request[:body_start])
    for start in range(body_start, len(case.request), piece):
        answered, _, _ = select.select([connection.sock], [], [], pause)
        if answered:
            break
        connection.sock.sendall(case.request[start : start + piece])
    sent = time.monotonic()
    return (*connection.read_answer(head=False), sent)


def run(url: str, seed: int, count: int, *, limit: int, threads: int = 16) -> list[Outcome]:
    """Send cases ``0 .. count-1`` of run ``seed`` from ``threads`` threads; outcomes by index.

    Parameters:
        url: the proxy, ``http://host:port``.
        limit: the proxy's ``MAX_REQUEST_SIZE``, which the oversized cases exceed.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    tickets = itertools.count()  # next() is atomic under the GIL
    outcomes: list[Outcome | None] = [None] * count

    def work() -> None:
        client = Client(host, int(port))
        try:
            while (index := next(tickets)) < count:
                outcomes[index] = client.send(hostile.case(seed, index, limit))
        finally:
            client.close()

    workers = [threading.Thread(target=work, name=f"fuzz-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def stored_ids(nats_url: str, stream: str) -> list[str]:
    """The ``ce-id`` of every message ``stream`` holds (it must keep them: limits retention)."""
    return asyncio.run(_stored_ids(nats_url, stream))


async def _stored_ids(nats_url: str, stream: str) -> list[str]:
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        total = (await js.stream_info(stream)).state.messages
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
        subscription = await js.pull_subscribe(f"{SUBJECT_PREFIX}.>", stream=stream, config=config)
        ids: list[str] = []
        while len(ids) < total:
            for message in await subscription.fetch(min(1000, total - len(ids)), timeout=10):
                ids.append(unquote((message.headers or {}).get("ce-id", "")))
        await subscription.unsubscribe()
        return ids
    finally:
        await connection.close()


@dataclass
class Verdict:
    """Everything :func:`judge` counted; :meth:`problems` says what is wrong."""

    sent: int = 0
    by_class: Counter[str] = field(default_factory=Counter)  #: "2xx", "4xx", "no answer", …
    by_status: Counter[int | None] = field(default_factory=Counter)
    server_errors: Counter[int] = field(default_factory=Counter)  #: 5xx by status
    unanswered_well_framed: int = 0  #: no answer where the request was well framed
    hangs: int = 0
    max_seconds: float = 0.0
    tracebacks: int = 0
    without_retry_after: int = 0  #: 503 answers lacking Retry-After
    contrary: list[Outcome] = field(default_factory=list)  #: answers against the case's expect
    accepted_events: int = 0
    stored_events: int = 0
    stored_from_refused: int = 0
    stored_beyond_accepted: int = 0  #: a 2xx request with more events stored than it carried
    accepted_not_stored: int = 0
    unaccounted: int = 0  #: stored events carrying no marker of this run
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """One line per way the proxy misbehaved; empty when it held."""
        examples = ", ".join(
            f"#{o.index} {o.kind} expected {o.expect} got {o.status or o.error}"
            for o in self.contrary[:5]
        )
        checks = [
            (self.server_errors, f"5xx answers: {dict(self.server_errors)}"),
            (self.hangs, f"{self.hangs} requests got no answer within {TIMEOUT:g}s"),
            (
                self.unanswered_well_framed,
                f"{self.unanswered_well_framed} well-framed requests got no answer",
            ),
            (self.tracebacks, f"{self.tracebacks} answers show a traceback"),
            (self.without_retry_after, f"{self.without_retry_after} 503 answers lack Retry-After"),
            (self.contrary, f"{len(self.contrary)} answers contrary to the case ({examples})"),
            (
                self.stored_from_refused,
                f"{self.stored_from_refused} events stored from refused requests",
            ),
            (
                self.stored_beyond_accepted,
                f"{self.stored_beyond_accepted} events stored beyond those accepted",
            ),
            (self.accepted_not_stored, f"{self.accepted_not_stored} accepted events not stored"),
            (self.unaccounted, f"{self.unaccounted} stored events belong to no request"),
        ]
        return [message for found, message in checks if found]


def _class_of(outcome: Outcome) -> str:
    if outcome.status is None:
        return "no answer"
    return f"{outcome.status // 100}xx"


def judge(outcomes: list[Outcome], stored: list[str], seed: int) -> Verdict:
    """Compare the answers with the cases' expectations, and the stream with the 2xx answers."""
    verdict = Verdict(sent=len(outcomes))
    per_case: Counter[int] = Counter()
    for event_id in stored:
        found = hostile.parse_marker(event_id, seed)
        if found is None:
            verdict.unaccounted += 1
        else:
            per_case[found[0]] += 1
    verdict.stored_events = len(stored)
    for outcome in outcomes:
        kind = _class_of(outcome)
        verdict.by_class[kind] += 1
        verdict.by_status[outcome.status] += 1
        verdict.by_kind.setdefault(outcome.kind, Counter())[kind] += 1
        verdict.max_seconds = max(verdict.max_seconds, outcome.seconds)
        verdict.tracebacks += outcome.traceback
        status = outcome.status
        if status is None:
            if outcome.error == "timeout":
                verdict.hangs += 1
            elif outcome.send == hostile.KEEPALIVE or outcome.expect == hostile.ACCEPT:
                verdict.unanswered_well_framed += 1
        elif status >= 500:
            verdict.server_errors[status] += 1
            if status == 503 and not outcome.retry_after:
                verdict.without_retry_after += 1
        accepted = status is not None and 200 <= status < 300
        if (outcome.expect == hostile.ACCEPT and not accepted) or (
            outcome.expect == hostile.REJECT and accepted
        ):
            verdict.contrary.append(outcome)
            verdict.by_kind[outcome.kind]["contrary"] += 1
        held = per_case.get(outcome.index, 0)
        if accepted:
            verdict.accepted_events += outcome.events
            verdict.accepted_not_stored += max(0, outcome.events - held)
            verdict.stored_beyond_accepted += max(0, held - outcome.events)
        else:
            verdict.stored_from_refused += held
    return verdict
