"""Limits the proxy puts on valid CloudEvents, so that one event cannot harm what comes after it.

The CloudEvents rules (:mod:`eventing.events.cloudevent`) admit events that no later stage can
carry:

- **A subject longer than NATS's protocol line.** nats-server answers a publish line over its
  ``max_control_line`` (4 KiB by default) with an error and closes the connection, and nats-py
  then closes it for good: one event with a 5,000-character type cut the proxy process off NATS.
- **Data nested deeper than the interpreter can recurse.** The JSON parser and encoder recurse
  once per level against the same limit (1,000 frames), from different stack depths: data that
  parsed could fail to encode (a 500 here), or to decode in a worker after it was stored.
- **Non-finite numbers.** Python's parser reads ``1e999999`` as infinity and accepts ``NaN``,
  and its encoder writes them back as ``Infinity`` and ``NaN``, which are not JSON: subscribers
  would receive a body no JSON parser reads.

Both checks run before anything is stored; they raise :class:`InvalidEvent` (400).
"""

from __future__ import annotations

import math
from typing import Final

from eventing.errors import InvalidEvent

#: Longest subject (UTF-8 bytes) the proxy publishes: far inside NATS's 4 KiB protocol line,
#: which also holds the reply subject and sizes.
MAX_SUBJECT_BYTES: Final = 1024
#: Deepest nesting of JSON data: far below the recursion limit, whatever the caller's stack.
MAX_DATA_DEPTH: Final = 256


def check(subject: str, data: object) -> None:
    """Refuse an event whose subject or data a later stage could not carry.

    Parameters:
        subject: the NATS subject the event would be stored under.
        data: the event's data: a JSON value, bytes, or None.

    Raises:
        InvalidEvent: the subject is longer than :data:`MAX_SUBJECT_BYTES`, or the data is
            nested deeper than :data:`MAX_DATA_DEPTH` or holds a NaN or infinite number.
    """
    size = len(subject.encode())
    if size > MAX_SUBJECT_BYTES:
        raise InvalidEvent(
            f"source and type make a subject of {size} bytes, expected at most"
            f" {MAX_SUBJECT_BYTES}: shorten the type (or the source)",
            attribute="type",
        )
    _check_data(data)


def _check_data(data: object) -> None:
    """Walk the data without recursion, so that its own depth cannot exhaust the stack."""
    pending: list[tuple[object, int]] = [(data, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEvent(
                f"data: numbers must be finite, got {value} (JSON has no NaN or Infinity, and"
                " a literal beyond ±1.8e308 overflows to Infinity)",
                attribute="data",
            )
        if isinstance(value, dict | list):
            if depth == MAX_DATA_DEPTH:
                raise InvalidEvent(
                    f"data: nested deeper than {MAX_DATA_DEPTH} levels", attribute="data"
                )
            children = value.values() if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children)
