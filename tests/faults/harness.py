"""Counting harness for fault tests: publish continuously, count what arrives, report losses.

A :class:`Load` publishes events at a steady rate from its own threads, retrying a failed
publish with the same id as a real client would (the proxy's dedup keeps retries from being
stored twice), and remembers every id the proxy accepted. The sink remembers every id it
received. :func:`report` compares them: sent, accepted, delivered, duplicates, lost.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from tests.support.sink import RecordingSink


@dataclass
class Load:
    """Publishes ``rate`` events/s to the proxy until stopped."""

    proxy_url: str
    prefix: str
    rate: float = 200.0
    threads: int = 4
    accepted: set[str] = field(default_factory=set)
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
            "ce-type": "order.created.v1",
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
                return
            with self._lock:
                self.failures[reason] += 1
            if self._stop.is_set() and time.monotonic() > self._drain_until:
                return  # gave up: never accepted, so never promised
            time.sleep(0.2)


@dataclass(frozen=True)
class Report:
    sent: int
    accepted: int
    delivered: int
    duplicates: int
    lost: int
    failures: dict[str, int]

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, accepted {self.accepted}, delivered {self.delivered}, "
            f"duplicates {self.duplicates}, lost {self.lost}; retried publishes: {self.failures}"
        )


def report(load: Load, sink: RecordingSink) -> Report:
    received = Counter(sink.ids())
    accepted = load.accepted
    return Report(
        sent=load.sent,
        accepted=len(accepted),
        delivered=len(accepted & set(received)),
        duplicates=sum(count - 1 for count in received.values() if count > 1),
        lost=len(accepted - set(received)),
        failures=dict(load.failures),
    )
