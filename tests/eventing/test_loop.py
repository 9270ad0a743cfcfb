"""Rounds: calls from many threads share handovers to the loop, and each gets its own results."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from eventing.nats.loop import LoopThread, Rounds


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("test-rounds")
    thread.start()
    yield thread
    thread.close()


def test_each_caller_gets_the_results_of_its_own_items_while_rounds_are_shared(
    loop: LoopThread,
) -> None:
    sizes: list[int] = []
    release = threading.Event()

    async def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.to_thread(release.wait)  # the loop stays busy: the next round gathers
        return [item * 2 for item in items]

    rounds: Rounds[int, int] = Rounds(loop, double)
    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(rounds.call, [0], 5.0)
        for _ in range(500):  # until the first round is under way, alone
            if sizes:
                break
            threading.Event().wait(0.01)
        later = [pool.submit(rounds.call, [n, n + 1000], 5.0) for n in range(1, 20)]
        threading.Event().wait(0.2)
        release.set()
        assert first.result() == [0]
        assert [f.result() for f in later] == [[2 * n, 2 * (n + 1000)] for n in range(1, 20)]
    assert sizes[0] == 1
    assert sum(sizes) == 1 + 2 * 19
    assert len(sizes) < 20  # the nineteen later calls did not each get a round of their own


def test_a_failing_round_fails_its_callers_and_posted_items_are_not_waited_for(
    loop: LoopThread,
) -> None:
    seen: list[list[str]] = []

    async def refuse(items: list[str]) -> list[str]:
        seen.append(items)
        raise ValueError("the backend refused")

    rounds: Rounds[str, str] = Rounds(loop, refuse)
    rounds.post(["fire", "forget"])  # returns at once, whatever the round does
    with pytest.raises(ValueError, match="refused"):
        rounds.call(["wanted"], 5.0)
    assert ["fire", "forget"] in seen or ["fire", "forget", "wanted"] in seen


def test_a_round_that_takes_too_long_times_its_callers_out(loop: LoopThread) -> None:
    async def stall(items: list[int]) -> list[int]:
        await asyncio.sleep(5)
        return items

    rounds: Rounds[int, int] = Rounds(loop, stall)
    with pytest.raises(TimeoutError):
        rounds.call([1], 0.1)
