"""Ending asyncio tasks at shutdown, on Python 3.11 too.

Why: Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives in the same turn of
the loop as the result it waits for (CPython gh-86296, fixed in 3.12): the task goes on as if it
had never been cancelled. nats-py awaits every request's reply with ``wait_for``, so a
manager's pull task cancelled at Ctrl-C while a consumer-info reply arrived kept pulling, its
next requests waiting out their timeouts on a NATS that was stopping too, and honcho SIGKILLed
the manager after 5 s (1 stop in 13 with NATS stopping at the same moment). A task cancelled
again, while it has not ended, takes the cancellation at its next await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: Seconds a cancelled task may take to end before it is cancelled again: its cleanup (a
#: ``finally`` that unsubscribes, a reply already on its way) normally takes far less.
CANCEL_AGAIN_AFTER = 0.5


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], again_after: float = CANCEL_AGAIN_AFTER
) -> None:
    """Cancel ``tasks`` and return once every one has ended, cancelling again each
    ``again_after`` seconds those that have not (a swallowed cancellation). Their exceptions
    are taken, as ``gather(..., return_exceptions=True)`` takes them: none is raised or
    logged as never retrieved."""
    every = list(tasks)
    left = {task for task in every if not task.done()}
    while left:
        for task in left:
            task.cancel()
        _, left = await asyncio.wait(left, timeout=again_after)
    for task in every:
        if not task.cancelled():
            task.exception()
