"""Tasks that end when cancelled, even when a cancellation is swallowed (eventing.tasks)."""

from __future__ import annotations

import asyncio

from eventing.tasks import cancel_and_wait

#: Longer than any test waits: a task still waiting there was never stopped.
_FOREVER = 3600


async def _swallowing_once() -> tuple[asyncio.Task[None], list[str]]:
    """A task whose first cancellation arrives in the same turn as the reply it waits for,
    which Python 3.11's ``wait_for`` swallows, and which then waits again, as a pull task
    goes on to its next request; what it did."""
    loop = asyncio.get_running_loop()
    steps: list[str] = []
    reply: asyncio.Future[None] = loop.create_future()

    async def pulling() -> None:
        try:
            await asyncio.wait_for(reply, _FOREVER)
            steps.append("replied")
            await asyncio.wait_for(loop.create_future(), _FOREVER)  # the next request
            steps.append("next request answered")
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    task = loop.create_task(pulling())
    await asyncio.sleep(0)  # it waits for the reply now
    reply.set_result(None)
    task.cancel()  # in the same turn: 3.11 returns the reply and forgets the cancellation
    return task, steps


def test_a_task_that_swallowed_its_cancellation_is_cancelled_again_and_ends() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        task, steps = await _swallowing_once()
        await asyncio.wait_for(cancel_and_wait([task], again_after=0.05), 30)
        return task.cancelled(), steps

    cancelled, steps = asyncio.run(scenario())
    assert cancelled
    # "replied" first where the cancellation was swallowed (3.11), not where it was not
    assert steps[-1] == "cancelled" and "next request answered" not in steps


def test_the_tasks_errors_are_taken_not_raised() -> None:
    async def scenario() -> list[asyncio.Task[None]]:
        async def failing() -> None:
            raise ValueError("broken")

        async def waiting() -> None:
            await asyncio.sleep(_FOREVER)

        tasks = [asyncio.create_task(failing()), asyncio.create_task(waiting())]
        await asyncio.sleep(0)
        await cancel_and_wait(tasks)
        return tasks

    failed, waited = asyncio.run(scenario())
    assert isinstance(failed.exception(), ValueError)
    assert waited.cancelled()
