"""dramatiq's own log lines name a delivery job's message by its id, never with its content.

dramatiq formats a message with all its arguments wherever it logs one (``Failed to process
message deliver(job={...}) with unhandled exception``, a skipped message, an ack that Redis did
not take, the actor's DEBUG line of its arguments), and a job holds the whole event and the
sink's URL with any credentials in it. A filter on each of the loggers that do so shows every
message as ``deliver[<message id>]`` and any argument list as ``(not shown)``. The loggers are
the ones dramatiq names for our queue and actor (``dramatiq.logging.get_logger``); the test
of this module makes an actor fail and reads what dramatiq logged.
"""

from __future__ import annotations

import logging
from typing import Any

from dramatiq import Message, MessageProxy
from dramatiq.common import dq_name

from eventing.delivery.jobs import ACTOR, QUEUE

_NOT_SHOWN = "(not shown)"


class _MessagesById(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_shown(argument) for argument in record.args)
        return True


def _shown(argument: Any) -> Any:
    if isinstance(argument, Message | MessageProxy):
        return f"{argument.actor_name}[{argument.message_id}]"
    if isinstance(argument, tuple | list | dict):
        return _NOT_SHOWN
    return argument


def install(actor_module: str) -> None:
    """Filter the loggers dramatiq logs our messages with (idempotent); ``actor_module`` is
    the module of the delivery actor's function (dramatiq names its logger after it)."""
    names = (
        "dramatiq.worker.WorkerThread",
        f"dramatiq.worker.ConsumerThread({QUEUE})",
        f"dramatiq.worker.ConsumerThread({dq_name(QUEUE)})",
        f"{actor_module}.{ACTOR}",
    )
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _MessagesById) for existing in logger.filters):
            logger.addFilter(_MessagesById())
