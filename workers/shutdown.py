"""A worker process stops within honcho's 5 s, handing back what its sinks have not taken.

honcho (and Kubernetes) signal the whole process group, and dramatiq's main process forwards
the signal to its worker processes as well, so each worker process gets SIGTERM twice within
milliseconds. dramatiq treats a second signal as "kill now", which abandons the jobs in flight
instead of letting them hand their events back. This middleware ignores a repeat that follows
the first within a second; a later one still kills at once.

On shutdown it sets :attr:`GracefulStop.stopping`, which jobs look at between their steps (see
:class:`workers.attempts.Interrupted`), stops the broker's consumers fetching at once (see
below), cuts off the sink requests still under way after
``_ATTEMPT_GRACE``, and ends the process after ``_EXIT_BY`` whatever still waits: with NATS or
Redis gone, dramatiq retries a Redis ack forever and its consumers sleep between reconnects.
What is unsettled then comes back after its ack wait, as after a SIGKILL.

Fetching stops at the first SIGTERM, not when dramatiq's worker gets to its own shutdown (its
main loop looks once a second): an event a job hands back returns through JetStream, the
manager and Redis within milliseconds, and a worker still fetching took it again and handed it
back again, each round a JetStream delivery, until the delivery limit dead-lettered an event
with no attempt made (``tests/faults/test_crashes.py``, 1 run in 3).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from dramatiq import Middleware

from eventing.wakeup import WakingRedisBroker
from workers import deadline

logger = logging.getLogger(__name__)

_REPEAT_WINDOW = 1.0
_ATTEMPT_GRACE = 1.5  # seconds a sink has to answer a request under way when the worker stops
_EXIT_BY = 3.0  # seconds after SIGTERM the process exits, waiting or not (honcho kills at 5)


class GracefulStop(Middleware):
    def __init__(self) -> None:
        self.stopping = threading.Event()  #: set when the worker process starts stopping
        self.since: float | None = None  #: time.monotonic() of that moment
        self._broker: WakingRedisBroker | None = None
        self._lock = threading.Lock()

    def begin(self) -> None:
        """Start stopping (idempotent): at the first SIGTERM, not when dramatiq gets to it (its
        worker processes look at their stop flag once a second)."""
        with self._lock:
            if self.since is not None:
                return
            self.since = time.monotonic()
        self.stopping.set()
        if self._broker is not None:
            self._broker.stop_fetching()
        deadline.hurry(_ATTEMPT_GRACE)
        threading.Thread(target=_exit_late, name="eventing-exit-by", daemon=True).start()

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        if isinstance(broker, WakingRedisBroker):
            self._broker = broker
        dramatiqs = signal.getsignal(signal.SIGTERM)
        first: float | None = None

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            nonlocal first
            now = time.monotonic()
            if first is not None and now - first < _REPEAT_WINDOW:
                return
            if first is None:
                first = now
                self.begin()
            if callable(dramatiqs):
                dramatiqs(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.begin()


def _exit_late() -> None:
    time.sleep(_EXIT_BY)
    logger.warning(
        "still stopping after %.0fs (NATS or Redis gone?): exiting; unsettled events come back"
        " after their ack wait",
        _EXIT_BY,
    )
    logging.shutdown()
    os._exit(1)
