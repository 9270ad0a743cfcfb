"""LoopThread: the one bridge from synchronous code (Flask, dramatiq) to asyncio (nats-py).

A nats-py connection belongs to the event loop it was made on, so each process keeps one private
loop on a daemon thread and submits coroutines to it. Threads do not survive ``fork``: owners
start a LoopThread lazily in the process that uses it, never at import time.

:class:`Rounds` carries the hot traffic (the proxy's publishes, the workers' acks): handing each
call over on its own (a coroutine, a task, two chained futures, a wake-up of the loop) cost more
CPU than the nats-py work it carried, so calls made while the loop is busy share one handover.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - item, beside R for result
R = TypeVar("R")

logger = logging.getLogger(__name__)


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


class RunningLoop(LoopThread):
    """A loop its owner runs (a server's), used as a LoopThread is: so that a process whose
    requests already pass through a loop needs no second one, nor the thread switches and
    wake-ups between the two."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name)
        self._loop = loop

    def start(self) -> None:
        """Nothing to start: the owner runs the loop (and :meth:`close`, having no thread to
        join, leaves it running)."""


class _Round(Generic[I, R]):
    __slots__ = ("done", "error", "items", "results")

    def __init__(self) -> None:
        self.items: list[I] = []
        self.results: list[R] | None = None
        self.error: Exception | None = None
        self.done = threading.Event()


class Rounds(Generic[I, R]):
    """Gathers items from many threads and hands them to the loop in rounds.

    The first item of a round schedules one callback on the loop; every item added before the
    callback runs joins that round, and ``handle`` gets them all in one call and returns one
    result per item. While the loop works on a round, the next one gathers, so under load a
    handover carries many calls, and at low load a call waits for nothing but its own.
    """

    def __init__(
        self, loop: LoopThread, handle: Callable[[list[I]], Coroutine[Any, Any, list[R]]]
    ) -> None:
        self._loop = loop
        self._handle = handle
        self._lock = threading.Lock()
        self._gathering: _Round[I, R] | None = None
        self._running: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    def call(self, items: list[I], timeout: float) -> list[R]:
        """The results of ``items``, in order, once their round is done.

        Raises:
            TimeoutError: the round did not finish within ``timeout`` seconds.
            Exception: whatever ``handle`` raised for the round.
        """
        with self._lock:
            round_ = self._join()
            start = len(round_.items)
            round_.items += items
        if not round_.done.wait(timeout):
            raise TimeoutError(f"no result within {timeout:g}s")
        if round_.error is not None:
            raise round_.error
        if round_.results is None:
            raise TimeoutError("the loop stopped before the round was done")
        return round_.results[start : start + len(items)]

    def post(self, items: list[I]) -> None:
        """Add ``items`` to the next round without waiting; their results are dropped."""
        with self._lock:
            self._join().items += items

    def _join(self) -> _Round[I, R]:
        """The round being gathered (call with the lock held)."""
        if self._gathering is None:
            self._gathering = _Round()
            self._loop.loop.call_soon_threadsafe(self._close)
        return self._gathering

    def _close(self) -> None:
        with self._lock:
            round_, self._gathering = self._gathering, None
        if round_ is not None:
            task = self._loop.loop.create_task(self._run(round_))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, round_: _Round[I, R]) -> None:
        try:
            round_.results = await self._handle(round_.items)
        except Exception as exc:  # every caller in the round hears of it
            logger.warning("a round of %d item(s) failed: %r", len(round_.items), exc)
            round_.error = exc
        finally:
            round_.done.set()
