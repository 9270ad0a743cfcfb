"""One SIGTERM stops a worker process gracefully, even when it arrives twice.

honcho (and Kubernetes) signal the whole process group, and dramatiq's main process forwards
the signal to its worker processes as well, so each worker process gets SIGTERM twice within
milliseconds. dramatiq treats a second signal as "kill now", which abandons the jobs in flight
instead of letting them hand their events back. This middleware ignores a repeat that follows
the first within a second; a later one still kills at once.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

from dramatiq import Middleware

_REPEAT_WINDOW = 1.0


class GracefulStop(Middleware):
    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        dramatiqs = signal.getsignal(signal.SIGTERM)
        first: float | None = None

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            nonlocal first
            now = time.monotonic()
            if first is not None and now - first < _REPEAT_WINDOW:
                return
            if first is None:
                first = now
            if callable(dramatiqs):
                dramatiqs(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
