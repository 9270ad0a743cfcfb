"""The dead letters' API: list, show, redrive and purge what ``sap-dlq`` holds.

- ``GET /deadletters?subscription=NS/NAME&reason=TEXT&since=T&limit=N&after=SEQ``: oldest
  first (JetStream's order, so ``after`` pages forward and a page never shifts while new dead
  letters arrive); read from headers alone, filtered by the server on ``dlq.<consumer>`` for a
  subscription's consumers, never the whole stream in memory;
- ``GET /deadletters/{sequence}``: one, with the stored event and the ledger's attempts;
- ``POST /deadletters/redrive``: :mod:`manager.redrives`;
- ``POST /deadletters/purge``: by subscription, sequences, or before a time; ``{"purged": n}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from aiohttp import web

from eventing import units
from eventing.delivery import ledger
from eventing.delivery.deadletters import Letter
from eventing.errors import ConsumerError, NotFound
from eventing.nats.messages import DEAD_LETTER_PREFIX
from manager import redrives
from manager.api import ApiContext, leading
from manager.status import json_response, problem

logger = logging.getLogger(__name__)

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_SEQUENCES = 10_000  #: dead letters one request may name


def routes(context: ApiContext) -> list[web.RouteDef]:
    """The dead letters' routes on ``context``."""
    stream = context.settings.stream.dead_letter_name
    running = redrives.Redrives(context)

    async def listing(request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = _integer(query.get("limit", str(DEFAULT_LIMIT)), "limit", 1, MAX_LIMIT)
            after = _integer(query.get("after", "0"), "after", 0, None)
            since = _moment(query["since"], "since") if "since" in query else None
        except _BadInput as bad:
            return problem(400, str(bad))
        subjects = await _subjects(context, query.get("subscription"))
        if isinstance(subjects, web.Response):
            return subjects
        reason = query.get("reason", "")
        items: list[Letter] = []
        more = False
        try:
            scan = context.client.stored.scan(
                stream, subjects, after=after, since=since, headers_only=True
            )
            async with contextlib.aclosing(scan):
                async for stored in scan:
                    letter = Letter.of(stored.sequence, stored.subject, stored.headers, stored.time)
                    if not letter.matches(reason, since):
                        continue
                    if len(items) == limit:
                        more = True
                        break
                    items.append(letter)
        except NotFound:
            pass  # no dead-letter stream yet: no dead letters
        except ConsumerError as exc:
            return problem(503, f"the dead-letter stream did not answer: {exc}")
        return json_response(
            {
                "items": [letter.shown() for letter in items],
                "next": items[-1].sequence if more else None,
            }
        )

    async def one(request: web.Request) -> web.Response:
        try:
            sequence = _integer(request.match_info["sequence"], "sequence", 1, None)
        except _BadInput as bad:
            return problem(400, str(bad))
        try:
            stored = await context.client.stored.get(stream, sequence)
        except NotFound:
            return problem(
                404, f"no dead letter {sequence} in {stream} (redriven, purged or expired)"
            )
        except ConsumerError as exc:
            return problem(503, f"the dead-letter stream did not answer: {exc}")
        letter = Letter.of(sequence, stored.subject, stored.headers, stored.time)
        shown = letter.shown()
        try:
            shown["event"] = json.loads(stored.data)
        except ValueError:
            shown["event"] = None
            shown["eventText"] = stored.data.decode("utf-8", errors="replace")
        shown["answer"] = letter.answer.decode("utf-8", errors="replace")
        shown["attempts"] = await _attempts(context, letter)
        return json_response(shown)

    async def redrive(request: web.Request) -> web.Response:
        found = leading(context)
        if isinstance(found, web.Response):
            return found
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        return await running.start(body)

    async def purge(request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        chosen = [name for name in ("subscription", "sequences", "before") if name in body]
        if len(chosen) != 1 or set(body) - {"subscription", "sequences", "before"}:
            return problem(
                400,
                "the body names exactly one of subscription (NS/NAME), sequences (a list of"
                f" dead-letter sequences) or before (a time), got {sorted(body)}",
            )
        try:
            if "sequences" in body:
                purged = await _purge_sequences(context, stream, body["sequences"])
            elif "before" in body:
                before = _moment(body["before"], "before")
                purged = await _purge_scan(context, stream, [f"{DEAD_LETTER_PREFIX}.>"], before)
            else:
                subjects = await _subjects(context, body["subscription"])
                if isinstance(subjects, web.Response):
                    return subjects
                purged = await _purge_scan(context, stream, subjects, None)
        except _BadInput as bad:
            return problem(400, str(bad))
        except _Missing as missing:
            return problem(404, str(missing))
        except ConsumerError as exc:
            return problem(503, f"the dead-letter stream did not answer: {exc}")
        logger.info("purged %d dead letter(s)", purged)
        return json_response({"purged": purged})

    return [
        web.get("/deadletters", listing),
        web.post("/deadletters/redrive", redrive),
        web.post("/deadletters/purge", purge),
        web.get("/deadletters/{sequence}", one),
    ]


class _BadInput(ValueError):
    """A parameter that is not what was expected (its message says both)."""


class _Missing(LookupError):
    """Something asked for that does not exist (its message names it)."""


def _integer(text: Any, name: str, least: int, most: int | None) -> int:
    within = f"from {least} to {most}" if most is not None else f"of at least {least}"
    if isinstance(text, bool) or not (
        isinstance(text, int) or (isinstance(text, str) and text.isdigit())
    ):
        raise _BadInput(f"{name}: expected an integer {within}, got {str(text)[:40]!r}")
    value = int(text)
    if value < least or (most is not None and value > most):
        raise _BadInput(f"{name}: expected an integer {within}, got {value}")
    return value


def _moment(text: Any, name: str) -> float:
    if not isinstance(text, str):
        raise _BadInput(f"{name}: expected an RFC 3339 time or a duration ago (15m, 2h)")
    try:
        return units.moment(text, time.time())
    except ValueError as exc:
        raise _BadInput(f"{name}: {exc}") from None


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return problem(400, "the body is no JSON; expected a JSON object")
    if not isinstance(body, dict):
        return problem(400, f"expected a JSON object, got {type(body).__name__}")
    return body


async def _subjects(context: ApiContext, subscription: Any) -> list[str] | web.Response:
    """The dead-letter subjects of ``subscription`` (all of them when None)."""
    if subscription is None:
        return [f"{DEAD_LETTER_PREFIX}.>"]
    consumers = redrives.consumers_of(context, subscription)
    if isinstance(consumers, web.Response):
        return consumers
    return [f"{DEAD_LETTER_PREFIX}.{name}" for name in consumers]


async def _attempts(context: ApiContext, letter: Letter) -> list[dict[str, Any]]:
    """The ledger's attempts at the dead letter's event and subscription, oldest first."""
    subject = ledger.subject(letter.source, letter.id, letter.subscription)
    shown: list[dict[str, Any]] = []
    try:
        async for stored in context.client.stored.scan(
            context.settings.stream.ledger_name, [subject]
        ):
            try:
                record = ledger.Record.from_bytes(stored.data)
            except ValueError:
                continue
            # A dead-letter sink's own attempts are not the subscription's sink's.
            if record.attempt is not None and record.origin != "dead-letter-sink":
                shown.append(record.shown()["attempt"])
    except ConsumerError as exc:  # no ledger (LEDGER_MAX_AGE=0), or it does not answer
        logger.debug("no ledger attempts for dead letter %d: %s", letter.sequence, exc)
    return shown


async def _purge_sequences(context: ApiContext, stream: str, sequences: Any) -> int:
    if not isinstance(sequences, list) or not sequences or len(sequences) > MAX_SEQUENCES:
        raise _BadInput(f"sequences: expected a list of 1 to {MAX_SEQUENCES} dead-letter sequences")
    wanted = [_integer(n, "sequences", 1, None) for n in sequences]
    store = context.client.stored
    missing = []
    for sequence in wanted:
        try:
            await store.get(stream, sequence)
        except NotFound:
            missing.append(sequence)
    if missing:
        raise _Missing(f"no dead letter(s) {missing[:20]} in {stream}; nothing was purged")
    return sum([await store.delete(stream, sequence) for sequence in wanted])


async def _purge_scan(
    context: ApiContext, stream: str, subjects: list[str], before: float | None
) -> int:
    """Delete the dead letters on ``subjects`` (stored before ``before``, if given)."""
    store = context.client.stored
    doomed: list[int] = []
    try:
        scan = store.scan(stream, subjects, headers_only=True)
        async with contextlib.aclosing(scan):
            async for stored in scan:
                if before is not None and stored.time >= before:
                    break  # oldest first: every later one is newer
                doomed.append(stored.sequence)
    except NotFound:
        return 0
    return sum([await store.delete(stream, sequence) for sequence in doomed])
