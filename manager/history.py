"""The delivery history endpoints: one event's story at every subscription, and a live tail.

- ``GET /events?source=S&id=I``: the event's ledger records (subject filter
  ``ledger.<event key>.*``, at most :data:`RECORDS_LIMIT`), per subscription the outcome of its
  last record and every attempt in order (:func:`history`), plus ``pending`` for a subscription
  the event still waits for (:func:`pending`); 404 when nothing is known of it.
- ``GET /subscriptions/{namespace}/{name}/tail[?since=T]``: ``application/x-ndjson``, one
  :meth:`~eventing.delivery.ledger.Record.shown` per line as the ledger stores records of the
  subscription (``ledger.*.<subscription key>``), from now or from ``since``. It ends when the
  client goes away or the manager stops (:attr:`manager.api.ApiContext.stopping`).

**Pending**, the rule: a subscription is ``pending`` for an event when it has no record of it,
the event is still stored in the event stream (at sequence S, found by the sequence a live
record names, or else by its standard subject ``kyma.<source>.>`` and its ``ce-id`` and
``ce-source`` headers among the first :data:`SEARCH_LIMIT` messages there), one of the
subscription's current consumers (``dispatcher.targets``) listens on the event's subject and
receives it (:func:`eventing.subscriptions.matching.receives`), that consumer existed when the
event was stored (a consumer starts at "new"), and its ack floor is below S. An event published
on a legacy subject is not searched for: without a record it is unknown here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from eventing import units
from eventing.delivery import ledger
from eventing.delivery.ledger import Record
from eventing.errors import ConsumerError, NotFound
from eventing.events.eventtypes import clean_source
from eventing.nats.messages import PulledMessage
from eventing.nats.stored import StoredMessage
from eventing.subscriptions import matching
from manager.api import ApiContext
from manager.consumers import Target
from manager.status import json_response, problem

logger = logging.getLogger(__name__)

_MOMENT = "an RFC 3339 time (2026-12-01T14:00:00Z) or a duration ago (15m, 2h)"
RECORDS_LIMIT = 1000  #: records of one event read at most
SEARCH_LIMIT = 10_000  #: messages of an event's source searched for it at most (headers only)


@dataclass(frozen=True, slots=True)
class Pending:
    """A subscription the event waits for, with no record yet."""

    sequence: int  #: the event's sequence in the event stream
    reason: str = ""  #: why it waits, when known (a sink the egress policy refuses, say)


def history(
    source: str,
    event_id: str,
    event_type: str,
    records: Iterable[Record],
    waiting: Mapping[str, Pending],
) -> dict[str, Any]:
    """The ``GET /events`` answer: per subscription (``namespace/name``), the outcome, sequence
    and reason of its last record, and every attempt its records carry, in the order stored.

    The records of a dead-letter sink's deliveries (origin ``dead-letter-sink``) are not the
    subscription's: they are shown apart, as its ``deadLetterSink`` (outcome and attempts), and
    leave the subscription's outcome (``dead-lettered``) as it was.
    """
    subscriptions: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = subscriptions.setdefault(record.subscription, {"attempts": []})
        shown = record.shown().get("attempt")
        if record.origin == "dead-letter-sink":
            entry = entry.setdefault("deadLetterSink", {"attempts": []})
        else:
            entry.update(sequence=record.sequence, reason=record.reason)
        entry["outcome"] = record.outcome
        if shown is not None:
            entry["attempts"].append(shown)
        event_type = event_type or record.type
    for subscription, waits in waiting.items():
        subscriptions.setdefault(
            subscription,
            {"outcome": "pending", "sequence": waits.sequence, "reason": waits.reason},
        ).setdefault("attempts", [])
    return {
        "source": source,
        "id": event_id,
        "type": event_type,
        "subscriptions": {
            name: {
                key: entry[key]
                for key in ("outcome", "sequence", "reason", "attempts", "deadLetterSink")
                if key in entry
            }
            for name, entry in sorted(subscriptions.items())
        },
    }


def routes(context: ApiContext) -> list[web.RouteDef]:
    """The history endpoints of the manager's API."""

    async def events(request: web.Request) -> web.Response:
        source, event_id = request.query.get("source", ""), request.query.get("id", "")
        for name, value in (("source", source), ("id", event_id)):
            if not value:
                return problem(
                    400,
                    f"{name}: missing; expected the event's CloudEvents {name}, as in"
                    " /events?source=myapp&id=A234-1234-1234",
                    field=name,
                    expected=f"the event's CloudEvents {name}",
                )
        if not _ledger_on(context):
            return problem(409, "the delivery ledger is off (LEDGER_MAX_AGE=0): no history kept")
        try:
            records = await _records(context, source, event_id)
            event, waiting = await pending(context, source, event_id, records)
        except ConsumerError as exc:
            return problem(503, f"JetStream cannot be read right now: {exc}; ask again")
        if not records and event is None:
            return problem(
                404,
                f"nothing is known of event {event_id!r} from {source!r}: the ledger has no"
                " record of it (never published, not delivered yet, or older than"
                " LEDGER_MAX_AGE) and the event stream does not hold it",
            )
        identity = matching.published(_text(event.data)) if event is not None else None
        published = identity[1] if identity is not None else ""
        return json_response(history(source, event_id, published, records, waiting))

    async def tail(request: web.Request) -> web.StreamResponse:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if key not in context.board.view.by_key:
            return problem(404, f"no subscription {key}")
        since_text = request.query.get("since")
        since = None
        if since_text is not None:
            try:
                since = units.moment(since_text, time.time())
            except ValueError as exc:
                return problem(400, f"since: {exc}", field="since", expected=_MOMENT)
        if not _ledger_on(context):
            return problem(409, "the delivery ledger is off (LEDGER_MAX_AGE=0): nothing to tail")
        return await _follow(context, request, key, since)

    return [
        web.get("/events", events),
        web.get("/subscriptions/{namespace}/{name}/tail", tail),
    ]


async def _follow(
    context: ApiContext, request: web.Request, subscription: str, since: float | None
) -> web.StreamResponse:
    """Write the subscription's records to the answer until the client or the manager goes;
    the answer starts once the ledger is followed, so "from now" misses nothing."""
    subject = f"{ledger.PREFIX}.*.{ledger.subscription_key(subscription)}"
    stream = context.settings.stream.ledger_name
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    try:
        async with context.client.stored.follow(stream, subject, since) as batches:
            await response.prepare(request)
            async for batch in batches:
                if context.stopping.is_set() or _gone(request):
                    break
                lines = b"".join(_line(message) for message in batch)
                if lines:
                    await response.write(lines)
    except ConnectionResetError:
        pass  # the client went away mid-write: nothing to tell
    except ConsumerError as exc:
        if not response.prepared:
            return problem(503, f"the delivery ledger cannot be read right now: {exc}")
        logger.warning("the tail of %s ended: the ledger cannot be read: %s", subscription, exc)
    return response


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _line(message: StoredMessage) -> bytes:
    try:
        record = Record.from_bytes(message.data)
    except ValueError:
        return b""  # not a record: nothing another writer put there is shown
    return json.dumps(record.shown(), separators=(",", ":")).encode() + b"\n"


def _ledger_on(context: ApiContext) -> bool:
    return context.settings.stream.ledger_max_age > 0


async def _records(context: ApiContext, source: str, event_id: str) -> list[Record]:
    """The event's records, oldest first; none when the ledger is off or not created yet."""
    if not _ledger_on(context):
        return []
    subject = f"{ledger.PREFIX}.{ledger.event_key(source, event_id)}.*"
    try:
        stored = [
            message
            async for message in context.client.stored.scan(
                context.settings.stream.ledger_name, [subject], limit=RECORDS_LIMIT
            )
        ]
    except NotFound:
        return []
    records = []
    for message in stored:
        try:
            records.append(Record.from_bytes(message.data))
        except ValueError:
            continue
    return [r for r in records if (r.source, r.id) == (source, event_id)]


async def pending(
    context: ApiContext, source: str, event_id: str, records: list[Record]
) -> tuple[StoredMessage | None, dict[str, Pending]]:
    """The event as the event stream still holds it (None: not there, or not found), and the
    subscriptions waiting for it (the rule: the module's docstring)."""
    event = await _stored_event(context, source, event_id, records)
    dispatcher = context.dispatcher
    if event is None or dispatcher is None:
        return event, {}
    recorded = {record.subscription for record in records}
    pulled = PulledMessage(event.data, "", event.sequence, 1, event.time)
    waiting: dict[str, Pending] = {}
    for name, target in list(dispatcher.targets.items()):
        key = target.subscription.key
        if key in recorded or key in waiting or not _receives(target, event, pulled):
            continue
        try:
            position = await context.client.jetstream.progress(context.settings.stream.name, name)
        except NotFound:
            continue  # not created yet: it starts at "new", after this event
        if position.ack_floor < event.sequence and position.created <= event.time:
            waiting[key] = Pending(event.sequence, target.held or "")
    return event, waiting


def _receives(target: Target, event: StoredMessage, pulled: PulledMessage) -> bool:
    listens = any(_subject_matches(pattern, event.subject) for pattern in target.spec.subjects)
    return listens and target.receives(pulled)


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` the rest."""
    tokens, wanted = subject.split("."), pattern.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(tokens) == len(wanted)


async def _stored_event(
    context: ApiContext, source: str, event_id: str, records: list[Record]
) -> StoredMessage | None:
    """The event in the event stream: at the sequence a live record names, or searched for on
    its source's standard subjects."""
    stored, stream = context.client.stored, context.settings.stream.name
    live = [r.sequence for r in records if r.origin == "live"]
    try:
        if live:
            found = await stored.get(stream, live[-1])
            return found if _is_event(found, source, event_id) else None
        cleaned = clean_source(source)
        if not cleaned:
            return None
        subject = f"{context.settings.stream.subject_prefix}.{cleaned}.>"
        candidates = stored.scan(stream, [subject], limit=SEARCH_LIMIT, headers_only=True)
        async with contextlib.aclosing(candidates):
            async for candidate in candidates:
                if _is_event(candidate, source, event_id):
                    found = await stored.get(stream, candidate.sequence)
                    return found if _is_event(found, source, event_id) else None
    except NotFound:
        return None
    return None


def _is_event(message: StoredMessage, source: str, event_id: str) -> bool:
    headers = message.headers
    return (
        unquote(headers.get("ce-id", "")) == event_id
        and unquote(headers.get("ce-source", "")) == source
    )


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")
