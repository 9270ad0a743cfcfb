"""Legacy Kyma events (``POST /<application>/v1/events``) to CloudEvents (pure).

Request validation, error kinds and messages follow Kyma's publisher proxy exactly
(kyma-eventing.md §2.3), so existing clients see the same answers. Unlike Kyma, one copy is stored:
its subject (see :mod:`eventing.events.eventtypes`) reaches both the exact subscriptions to
``<prefix>.<app>.<event>.<version>`` and the standard subscriptions of source ``<app>``, and the
``event-id`` we answer with is the id every subscriber receives.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from eventing.errors import InvalidEvent, InvalidLegacyEvent
from eventing.events import cloudevent, eventtypes

BAD_PAYLOAD = "bad_payload_syntax"
VALIDATION = "validation_violation"

_HAS_ALNUM = re.compile(r"[A-Za-z0-9]")  # Kyma's pattern is not anchored: one such char suffices
_EVENT_ID = re.compile(
    r"^[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-[a-fA-F0-9]{4}-[a-fA-F0-9]{4}-[a-fA-F0-9]{12}$"
)


@dataclass(frozen=True, slots=True)
class LegacyEvent:
    """A converted legacy event and the subject it is stored under."""

    event: cloudevent.Event
    subject: str


def parse(application: str, body: bytes, prefix: str) -> LegacyEvent:
    """Validate a legacy request body and convert it.

    Parameters:
        application: the first path segment of the request URL.
        body: the raw request body (Kyma ignores the Content-Type, and so do we).
        prefix: ``EVENT_TYPE_PREFIX``.

    Raises:
        InvalidLegacyEvent: with Kyma's error kind, message and field.
    """
    document = _load(body)
    event_type = _string(document, "event-type")
    version = _string(document, "event-type-version")
    time = _string(document, "event-time")
    event_id = _string(document, "event-id")
    data = document.get("data")

    if not event_type:
        raise _missing("event-type")
    if not version:
        raise _missing("event-type-version")
    if not _HAS_ALNUM.search(version):
        raise _invalid("event-type-version")
    if not time:
        raise _missing("event-time")
    try:
        cloudevent.check_time(time)
    except InvalidEvent:
        raise _invalid("event-time") from None
    if event_id and not _EVENT_ID.match(event_id):
        raise _invalid("event-id")
    if data is None or data == "":
        raise _missing("data")

    full_type = f"{event_type}.{version}"
    try:
        subject = eventtypes.legacy_subject(application, event_type, version, prefix)
        event = cloudevent.build(
            {
                "specversion": "1.0",
                "id": event_id or str(uuid.uuid4()),
                "source": application,
                "type": full_type,
                "time": time,
                "datacontenttype": cloudevent.JSON,
                "eventtypeversion": version,
                "originaltype": full_type,
            },
            data,
        )
    except InvalidEvent as exc:
        raise InvalidLegacyEvent(BAD_PAYLOAD, "Bad payload syntax", more_info=str(exc)) from None
    return LegacyEvent(event=event, subject=subject)


def _load(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidLegacyEvent(BAD_PAYLOAD, "Bad payload syntax", more_info="Bad payload syntax")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidLegacyEvent(
            BAD_PAYLOAD, "Bad payload syntax", more_info=_describe(exc)
        ) from None
    try:
        cloudevent.refuse_lone_surrogates(body, document)
    except InvalidEvent as exc:
        raise InvalidLegacyEvent(BAD_PAYLOAD, "Bad payload syntax", more_info=str(exc)) from None
    if not isinstance(document, dict):
        raise InvalidLegacyEvent(
            BAD_PAYLOAD,
            "Bad payload syntax",
            more_info="expected a JSON object with event-type, event-type-version, event-time"
            " and data",
        )
    return document


def _string(document: dict[str, Any], field: str) -> str:
    value = document.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidLegacyEvent(
            BAD_PAYLOAD, "Bad payload syntax", more_info=f"field {field} must be a JSON string"
        )
    return value


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not UTF-8"
    if isinstance(exc, RecursionError):
        return "the body is JSON nested too deeply"
    return f"invalid JSON: {exc}"


def _missing(field: str) -> InvalidLegacyEvent:
    return InvalidLegacyEvent(VALIDATION, "Missing field", field=field, field_kind="missing_field")


def _invalid(field: str) -> InvalidLegacyEvent:
    return InvalidLegacyEvent(VALIDATION, "Invalid field", field=field, field_kind="invalid_field")
