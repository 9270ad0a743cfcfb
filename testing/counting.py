"""Counting harness for fault tests: publish continuously, count what arrives, report losses.

A :class:`Load` publishes events of one type at a steady rate from its own threads, retrying a
failed publish with the same id as a real client would (the proxy's dedup keeps retries from
being stored twice), and remembers every id the proxy accepted and when. The sink remembers every
id it received; :func:`dead_lettered` reads the ids the dead-letter stream holds. :func:`report`
compares them: an accepted event that is neither delivered nor dead-lettered is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import nats
import requests
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from eventing.nats import messages
from testing.sink import RecordingSink

DEAD_LETTER_STREAM = "sap-dlq"  #: JS_DLQ_STREAM_NAME's default


@dataclass
class Load:
    """Publishes ``rate`` events/s of ``event_type`` (source ``faults``) until stopped."""

    proxy_url: str
    prefix: str
    rate: float = 200.0
    threads: int = 4
    event_type: str = "order.created.v1"
    accepted: set[str] = field(default_factory=set)
    accepted_at: list[float] = field(default_factory=list)  #: time.monotonic() of each accept
    sent: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)
    _drain_until: float = 0.0

    def start(self) -> Load:
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self, drain: float = 60.0) -> None:
        """Stop sending new events; retries of unaccepted ones go on for up to ``drain`` s."""
        self._drain_until = time.monotonic() + drain
        self._stop.set()
        for thread in self._workers:
            thread.join(drain + 15)

    def snapshot(self) -> tuple[int, set[str], dict[str, int]]:
        """Sent count, accepted ids and retried publishes, consistent while threads publish."""
        with self._lock:
            return self.sent, set(self.accepted), dict(self.failures)

    def longest_gap(self) -> float:
        """The longest time (s) between two consecutive accepted publishes: an outage's length
        as publishers saw it."""
        with self._lock:
            times = sorted(self.accepted_at)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def _run(self, index: int) -> None:
        session = requests.Session()
        interval = self.threads / self.rate
        number = index
        next_due = time.monotonic()
        while not self._stop.is_set():
            event_id = f"{self.prefix}-{number}"
            number += self.threads
            with self._lock:
                self.sent += 1
            self._publish_until_accepted(session, event_id)
            next_due += interval
            time.sleep(max(0.0, next_due - time.monotonic()))

    def _publish_until_accepted(self, session: requests.Session, event_id: str) -> None:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "faults",
            "ce-type": self.event_type,
            "content-type": "application/json",
        }
        while True:
            try:
                status = session.post(
                    f"{self.proxy_url}/publish", headers=headers, data=b"{}", timeout=10
                ).status_code
            except requests.RequestException as exc:
                status, reason = None, type(exc).__name__
            else:
                reason = str(status)
            if status == 204:
                with self._lock:
                    self.accepted.add(event_id)
                    self.accepted_at.append(time.monotonic())
                return
            with self._lock:
                self.failures[reason] += 1
            if self._stop.is_set() and time.monotonic() > self._drain_until:
                return  # gave up: never accepted, so never promised
            time.sleep(0.2)


#: Every scenario's line, in order, for the terminal summary (tests/faults/conftest.py).
LINES: list[str] = []


@dataclass(frozen=True)
class Report:
    """The count table of one scenario; ``str()`` is its one-line form."""

    sent: int
    accepted: int
    delivered: int  #: accepted events the sink answered 2xx at least once
    duplicates: int  #: 2xx deliveries beyond the first of an event
    dead_lettered: int  #: accepted events found in the dead-letter stream
    lost: int  #: accepted events neither delivered nor dead-lettered
    failures: dict[str, int]  #: publishes the load retried, by answer

    def __str__(self) -> str:
        return (
            f"sent {self.sent} | accepted {self.accepted} | delivered {self.delivered} | "
            f"duplicates {self.duplicates} | dead-lettered {self.dead_lettered} | "
            f"lost {self.lost} | retried publishes {self.failures or 0}"
        )

    def line(self, scenario: str, **notes: str) -> str:
        """The line a scenario prints: its name, the counts, and what else it measured. Also
        kept for the end of the run, where pytest shows every scenario's line."""
        extra = "".join(f" | {key.replace('_', ' ')} {value}" for key, value in notes.items())
        LINES.append(f"[faults] {scenario}: {self}{extra}")
        return f"\n{LINES[-1]}"


def report(load: Load, sink: RecordingSink, dead_letters: Collection[str] = ()) -> Report:
    """Count ``load``'s accepted events at ``sink`` and among ``dead_letters`` (event ids)."""
    received = Counter(sink.ids())
    sent, accepted, failures = load.snapshot()
    return Report(
        sent=sent,
        accepted=len(accepted),
        delivered=len(accepted & received.keys()),
        duplicates=sum(count - 1 for count in received.values() if count > 1),
        dead_lettered=len(accepted & set(dead_letters)),
        lost=len(accepted - received.keys() - set(dead_letters)),
        failures=failures,
    )


def settle(load: Load, sink: RecordingSink, nats_url: str, timeout: float = 120.0) -> Report:
    """Wait until no accepted event is missing (or ``timeout`` s pass); the final count.

    Returns the report either way, so a failing scenario still prints its table.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = report(load, sink, dead_lettered(nats_url))
        if result.lost == 0 or time.monotonic() > deadline:
            return result
        time.sleep(1)


def dead_lettered(nats_url: str, stream: str = DEAD_LETTER_STREAM) -> set[str]:
    """The ids of the events in the dead-letter stream.

    A dead letter's payload is the event as stored (structured CloudEvents JSON); why it is
    there travels in its ``Eventing-Dead-Letter-*`` headers, which the count does not need.
    ``nats_url`` may list several servers, comma-separated.
    """

    async def read() -> set[str]:
        client = await nats.connect(servers=nats_url.split(","), connect_timeout=2)
        try:
            js = client.jetstream()
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return set()
            ids: set[str] = set()
            if info.state.messages == 0:
                return ids
            subscription = await js.subscribe(
                f"{messages.DEAD_LETTER_PREFIX}.>",
                stream=stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            while True:
                message = await subscription.next_msg(timeout=10)
                ids.add(str(json.loads(message.data)["id"]))
                if message.metadata.num_pending == 0:
                    break
            await subscription.unsubscribe()
            return ids
        finally:
            await client.close()

    return asyncio.run(read())
