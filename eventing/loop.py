"""LoopThread: the one bridge from synchronous code (Flask, dramatiq) to asyncio (nats-py).

A nats-py connection belongs to the event loop it was made on, so each process keeps one private
loop on a daemon thread and submits coroutines to it. Threads do not survive ``fork``: owners
start a LoopThread lazily in the process that uses it, never at import time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A private asyncio loop running on a daemon thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; :meth:`start` first."""
        if self._loop is None:
            raise RuntimeError(f"{self._name}: start() the loop thread first")
        return self._loop

    def start(self) -> None:
        """Start the loop thread (idempotent, thread-safe) and return once the loop runs."""
        with self._lock:
            if self._thread is not None:
                return
            loop = asyncio.new_event_loop()
            running = threading.Event()
            loop.call_soon(running.set)
            thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
            thread.start()
            running.wait()
            self._loop, self._thread = loop, thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the caller decides how long to wait."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for its result.

        Raises:
            TimeoutError: no result within ``timeout`` seconds; the coroutine is cancelled.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self._name}: no result within {timeout:g}s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
